/**
 * spawnNpm returns only once npm's whole process group is gone: what a script left running in
 * it (here a background node holding npm's output open) is killed, not waited for. Its memory
 * samples count every process npm started, in its group or not (a sandbox's are not).
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { spawnNpm } from '../../lib/workflow/npm.js';
import { liveProcessesWith } from '../helpers/processes.js';


describe('spawnNpm and its process group', () => {
  it('a child left running in the group (holding the output open) is gone when it returns; the output before it is kept', async () => {
    const mark = `bd-left-${randomBytes(6).toString('hex')}`;
    const script = `${JSON.stringify(process.execPath)} -e 'setInterval(() => {}, 1000)' ${mark} & echo started; exit 0`;
    const lines: string[] = [];
    const run = await spawnNpm({ command: '/bin/sh', argv: ['-c', script], cwd: process.cwd(), env: { PATH: process.env.PATH ?? '' }, secrets: [], onLine: (line) => lines.push(line) });
    expect(run.code).toBe(0);
    expect(lines).toContain('started');
    expect(liveProcessesWith(mark)).toEqual([]);
  });

  it('a group that is already empty: returns with the exit code and every line', async () => {
    const run = await spawnNpm({ command: process.execPath, argv: ['-e', 'for (let i = 0; i < 3; i++) console.log(`line ${i}`); process.exitCode = 3'], cwd: process.cwd(), env: { PATH: process.env.PATH ?? '' }, secrets: [], onLine: () => undefined });
    expect(run.code).toBe(3);
    expect(run.tail).toEqual(['line 0', 'line 1', 'line 2']);
  });

  it('memory: a descendant in a session and group of its own (as bubblewrap makes them) is counted with the rest', async () => {
    const MiB = 1024 * 1024;
    // The child calls setsid() (detached), holds 96 MiB resident, and its parent waits for it.
    const child = `const b = Buffer.alloc(${96 * MiB}, 1); setTimeout(() => console.log(b[0]), 1500)`;
    const parent = `const c = require('child_process').spawn(process.execPath, ['-e', ${JSON.stringify(child)}], { detached: true, stdio: 'inherit' }); c.on('exit', (code) => process.exit(code))`;
    const samples: number[] = [];
    const run = await spawnNpm({ command: process.execPath, argv: ['-e', parent], cwd: process.cwd(), env: { PATH: process.env.PATH ?? '' }, secrets: [], onLine: () => undefined, onMemory: (rss) => samples.push(rss), memoryIntervalMs: 100 });
    expect(run.code).toBe(0);
    expect(run.tail).toEqual(['1']);
    expect(samples.length).toBeGreaterThan(3);
    // The parent alone is ~40 MiB; with the child it is over 96.
    expect(run.peakMemory).toBeGreaterThan(96 * MiB);
  });
});
