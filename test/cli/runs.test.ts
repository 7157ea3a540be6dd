/**
 * The operator's commands over the local run history, spawning the real bin (run `npm run
 * build` first) against real dispatch runs on the embedded default: `runs`, and `status` with
 * `--cache-dir`.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunSummary } from '../../lib/cli/runs.js';
import type { RunDocument } from '../../lib/dispatch/history.js';
import { runCli } from '../helpers/cli.js';
import { NODE, SLOW_HOOK, writeFixture } from '../helpers/dispatch.js';
import { tempDir } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
/** A directory with a .bundlerc naming the cache dir and the slow hook (the embedded default). */
let project: string;
/** Anywhere else: no .bundlerc, so only --cache-dir finds the history. */
let elsewhere: string;
let cacheDir: string;
let env: NodeJS.ProcessEnv;
const host = `linux-${process.arch}@${NODE}`;
beforeAll(async () => {
  root = await tempDir('bd-cli-runs-');
  cacheDir = path.join(root.dir, 'cache');
  project = path.join(root.dir, 'project');
  elsewhere = path.join(root.dir, 'elsewhere');
  await Promise.all([mkdir(project, { recursive: true }), mkdir(elsewhere, { recursive: true })]);
  const hooks = path.join(root.dir, 'slow-hook.mjs');
  await writeFile(hooks, SLOW_HOOK);
  await writeFile(path.join(project, '.bundlerc'), JSON.stringify({ cacheDir, hooks: [hooks] }));
  env = { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') };

});
afterAll(async () => {
  await root?.remove();
});

function parse<T>(run: { stdout: string; stderr: string }): T {
  try {
    return JSON.parse(run.stdout) as T;
  } catch {
    throw new Error(`not JSON: ${run.stdout}\n${run.stderr}`);
  }
}

describe('bundle-dispatch runs', () => {
  it('lists runs newest first with package, targets, duration and label; --state and --limit; status and runs take --cache-dir', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'runs-1.0.0.tgz'), { name: 'runs-fixture', version: '1.0.0' });
    const delivered = await runCli([fixture, '--targets', host, '--label', 'cron nightly', '--json'], { cwd: project, env });
    expect(delivered.code, delivered.stderr).toBe(0);
    const first = parse<{ runId: string }>(delivered).runId;
    // No Node satisfies >=99: the target fails (exit 2), the run is still recorded.
    const failed = await runCli([fixture, '--targets', `linux-${process.arch}@>=99`, '--json'], { cwd: project, env });
    expect(failed.code, failed.stderr).toBe(2);
    const second = parse<{ runId: string }>(failed).runId;

    const all = await runCli(['runs', '--json', '--cache-dir', cacheDir], { cwd: elsewhere, env });
    expect(all.code, all.stderr).toBe(0);
    const { runs } = parse<{ runs: RunSummary[] }>(all);
    expect(runs.map((run) => run.runId)).toEqual([second, first]);
    expect(runs[0]).toMatchObject({ state: 'failed', package: 'runs-fixture@1.0.0', targets: { ok: 0, failed: 1, cancelled: 0, pending: 0 } });
    expect(runs[1]).toMatchObject({ state: 'succeeded', package: 'runs-fixture@1.0.0', label: 'cron nightly', targets: { ok: 1, failed: 0 }, finishedAt: expect.any(String) });
    expect(runs[1]?.durationMs).toBeGreaterThan(0);

    const succeeded = parse<{ runs: RunSummary[] }>(await runCli(['runs', '--state', 'succeeded', '--json', '--cache-dir', cacheDir], { cwd: elsewhere, env }));
    expect(succeeded.runs.map((run) => run.runId)).toEqual([first]);
    const newest = parse<{ runs: RunSummary[] }>(await runCli(['runs', '--limit', '1', '--json'], { cwd: project, env }));
    expect(newest.runs.map((run) => run.runId)).toEqual([second]);

    const text = await runCli(['runs', '--cache-dir', cacheDir], { cwd: elsewhere, env });
    expect(text.code).toBe(0);
    const [header, ...rows] = text.stdout.trimEnd().split('\n');
    expect(header).toMatch(/^RUN\s+PACKAGE\s+STARTED\s+TARGETS\s+DURATION\s+STATE\s+LABEL$/);
    expect(rows[0]).toMatch(new RegExp(`^${second}\\s+runs-fixture@1\\.0\\.0\\s+just now\\s+1 failed\\s+\\S+ m?s\\s+failed$`));
    expect(rows[1]).toMatch(new RegExp(`^${first}\\s+runs-fixture@1\\.0\\.0\\s+just now\\s+1 ok\\s+\\S+ m?s\\s+succeeded\\s+cron nightly$`));

    // Unknown state: a usage error. Unknown cache dir: no runs, exit 0.
    expect((await runCli(['runs', '--state', 'done'], { cwd: elsewhere, env })).code).toBe(2);
    const empty = await runCli(['runs', '--cache-dir', path.join(root.dir, 'no-cache')], { cwd: elsewhere, env });
    expect(empty.code).toBe(0);
    expect(empty.stderr).toContain('No runs in');

    // status reads the same history with --cache-dir (it refused the flag before).
    const status = await runCli(['status', first, '--json', '--cache-dir', cacheDir], { cwd: elsewhere, env });
    expect(status.code, status.stderr).toBe(0);
    expect(parse<RunDocument>(status)).toMatchObject({ runId: first, state: 'finished', package: { name: 'runs-fixture', version: '1.0.0' }, label: 'cron nightly' });
  });
});
