// Cancel section: `bundle-dispatch cancel <run>` from another process, to the dispatching
// process's exit, on the embedded default, for a build whose install step sleeps (a hook makes
// npm wait). The real bin both sides, as an operator runs them. Goal: ≤ 1.5 s each time.
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { benchEnv, repo } from './support.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const GOAL_MS = 1500;
const work = path.join(repo, 'bench', '.work', 'cancel');
const bin = path.join(repo, 'bin', 'bundle-dispatch.js');

const SLOW_HOOK = `export default { 'npm.configure': (_scaffold, _config, spawn) => { spawn.argv = ['-e', 'setTimeout(() => {}, 120000)']; } };\n`;

/** Runs the bin; resolves with its exit code and the time it exited. */
function runBin(args, options) {
  const child = spawn(process.execPath, [bin, ...args], { cwd: work, env: { ...benchEnv(), CI: 'true' }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr += chunk.toString();
    options?.onStderr?.(stderr);
  });
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, at: performance.now(), stderr })));
}

export async function run({ log }) {
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  await writeFile(path.join(work, 'slow-hook.mjs'), SLOW_HOOK);
  const cache = path.join(work, 'cache');
  await writeFile(path.join(work, '.bundlerc'), JSON.stringify({ cacheDir: cache, hooks: [path.join(work, 'slow-hook.mjs')] }));
  const input = path.join(repo, 'examples', 'hello-app-1.0.0.tgz');
  const times = [];
  for (let round = 0; round < ROUNDS; round++) {
    let installing;
    const started = new Promise((resolve) => { installing = resolve; });
    const dispatch = runBin([input, '--force'], { onStderr: (text) => { if (text.includes('▸ Install production dependencies')) installing(); } });
    await started;
    await sleep(300);
    const asked = performance.now();
    const cancel = await runBin(['cancel', 'latest']);
    const ended = await dispatch;
    if (ended.code !== 130 || cancel.code !== 0) throw new Error(`round ${round}: dispatch exited ${ended.code}, cancel ${cancel.code}: ${ended.stderr.slice(-400)}`);
    times.push(ended.at - asked);
  }
  const sorted = [...times].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  const worst = sorted.at(-1);
  log(`cancel <run> → the dispatching process's exit (embedded default, ${ROUNDS} rounds): median ${median.toFixed(0)} ms, worst ${worst.toFixed(0)} ms (goal ≤ ${GOAL_MS} ms) ${worst <= GOAL_MS ? '✔' : '✖'}`);
  await rm(work, { recursive: true, force: true });
}
