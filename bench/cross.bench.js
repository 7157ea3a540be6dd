// Cross section: the linux-arm64 bundle of the native app (a C++ addon node-gyp compiles, plus
// express) built on this x64 machine with the cross toolchain and proven under qemu-user,
// against the linux-x64 bundle of the same app, both for Node 22, through the same scaffold.
// One untimed build of each first (runtimes fetched, npm cache warm), then ROUNDS rounds
// A-B-B-A; medians count. Goal: cross ÷ host ≤ 1.5. The emulated verification (every addon
// loaded under the arm64 Node through the emulator) is reported as its own share.
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { benchEnv, lib, repo, writeNativeApp } from './support.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const GOAL = 1.5;
const work = path.join(repo, 'bench', '.work', 'cross');

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};
const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;

export async function run({ log }) {
  const { createScaffold } = await lib('workflow/scaffold.js');
  const { pack } = await lib('workflow/steps/pack.js');
  const { hostTarget, parseTarget } = await lib('target.js');
  const { resolveToolchains, toolchainFor } = await lib('workflow/toolchains.js');
  const host = hostTarget();
  const arm64 = parseTarget('linux-arm64@22');
  if (host.cpu !== 'x64' || !toolchainFor(arm64, resolveToolchains({ host, env: process.env }))) {
    log('skipped: needs an x64 Linux machine with the linux-arm64 cross toolchain and qemu-user (see docs/runtimes.md)');
    return;
  }
  await rm(work, { recursive: true, force: true });
  const app = await writeNativeApp(path.join(work, 'native-app'));
  const cacheDir = path.join(repo, 'bench', '.work', 'cache');
  await mkdir(cacheDir, { recursive: true });
  const scaffold = createScaffold({}, [], { env: benchEnv(), workRoot: path.join(work, 'builds'), npmCacheDir: path.join(cacheDir, 'npm'), runtimeCacheDir: path.join(cacheDir, 'runtimes') });
  const targets = { host: { ...host, node: '22' }, cross: arm64 };

  const build = async (which) => {
    const started = process.hrtime.bigint();
    const result = await scaffold.run(pack(app), { target: targets[which] });
    result.output.resume();
    await result.settled;
    return { ms: Number(process.hrtime.bigint() - started) / 1e6, summary: result.summary };
  };

  await build('host');
  const warm = await build('cross');
  if (warm.summary.verification !== 'emulated') throw new Error(`the arm64 build was verified by ${warm.summary.verification}, not emulated`);
  const runs = { host: [], cross: [] };
  for (let round = 0; round < ROUNDS; round++) {
    for (const which of round % 2 === 0 ? ['host', 'cross', 'cross', 'host'] : ['cross', 'host', 'host', 'cross']) runs[which].push(await build(which));
  }
  const wall = (which) => median(runs[which].map((r) => r.ms));
  const step = (which, name) => median(runs[which].map((r) => r.summary.durations[name] ?? 0));
  const ratio = wall('cross') / wall('host');
  log(`native app (express + a C++ addon), Node 22, ${ROUNDS} rounds A-B-B-A, ${runs.host.length} builds each; medians:`);
  log(`  linux-x64 (native)              ${seconds(wall('host'))}  install ${seconds(step('host', 'install'))}  verify ${seconds(step('host', 'verify'))}`);
  log(`  linux-arm64 (cross-compiled)    ${seconds(wall('cross'))}  install ${seconds(step('cross', 'install'))}  verify ${seconds(step('cross', 'verify'))} (emulated)`);
  log(`  cross ÷ host: ${ratio.toFixed(2)} (goal ≤ ${GOAL}) ${ratio <= GOAL ? '✔' : '✖'}`);
  log(`  emulated verification: ${seconds(step('cross', 'verify') - step('host', 'verify'))} more than the native one, ${((step('cross', 'verify') / wall('cross')) * 100).toFixed(0)} % of the arm64 build`);
  await rm(work, { recursive: true, force: true });
}
