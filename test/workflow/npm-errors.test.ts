/**
 * npm's error lines in ERR_NPM_FAILED: kept apart from the output tail, redacted, bounded, and
 * without the usage text npm appends to a usage error (issue 15.2).
 */
import { describe, expect, it } from 'vitest';
import { npmErrorSummary, npmFailure, spawnNpm } from '../../lib/workflow/npm.js';

/** What `npm ci` prints when the lockfile is out of sync: the cause, then ~90 lines of usage. */
const CI_OUT_OF_SYNC = [
  'npm error code EUSAGE',
  'npm error',
  'npm error `npm ci` can only install packages when your package.json and package-lock.json or npm-shrinkwrap.json are in sync.',
  'npm error',
  'npm error Missing: ms@2.1.3 from lock file',
  'npm error',
  'npm error Clean install a project',
  'npm error',
  'npm error Usage:',
  'npm error npm ci',
  ...Array.from({ length: 90 }, (_, index) => `npm error [--option-${index}]`),
  'npm error A complete log of this run can be found in: /root/.npm/_logs/x-debug-0.log',
];

describe('npm failures', () => {
  it('the cause survives a usage text longer than the tail, secrets redacted, in the message', async () => {
    const script = `for (const line of ${JSON.stringify(CI_OUT_OF_SYNC)}) console.error(line.replace('ms@', 'ms-s3cr3t-token@'))`;
    const run = await spawnNpm({ command: process.execPath, argv: ['-e', `${script}; process.exit(1)`], cwd: process.cwd(), env: { PATH: process.env.PATH ?? '' }, secrets: ['s3cr3t-token'], onLine: () => undefined });
    expect(run.tail.some((line) => line.includes('Missing'))).toBe(false);
    const error = npmFailure('npm ci', run);
    expect(error.code).toBe('ERR_NPM_FAILED');
    expect(error.message).toContain('npm ci exited with code 1 (EUSAGE):');
    expect(error.message).toContain('Missing: ms-');
    expect(error.message).not.toContain('s3cr3t-token');
    expect(error.message).not.toMatch(/Usage:|--option-|Clean install a project|complete log/);
  });

  it('many error lines: the first ones and the last ones, with a count of what is left out', () => {
    const lines = ['npm error code 1', 'npm error path /w/node_modules/x', ...Array.from({ length: 40 }, (_, index) => `npm error script line ${index}`)];
    const summary = npmErrorSummary(lines);
    expect(summary.code).toBe('1');
    expect(summary.lines).toHaveLength(12);
    expect(summary.lines[0]).toBe('path /w/node_modules/x');
    expect(summary.lines[7]).toMatch(/^… \(30 more lines/);
    expect(summary.lines.at(-1)).toBe('script line 39');
  });
});
