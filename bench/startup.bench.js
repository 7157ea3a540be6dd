// Startup section: the fixed costs a user pays on every run, each against a baseline measured
// in this run (issue #19):
//   1. `bundle-dispatch --version` and `--help` ÷ `node -e 0` (goal ≤ 1.5);
//   2. a cached re-run of the main command (nothing to build), wall time with process start,
//      of a pinned input (the sample app with its npm-shrinkwrap.json) on the embedded default
//      (directory stores) and on S3 (s3rver in a child process) (goal ≤ 0.25 s); and, for
//      context, of the unpinned sample, whose tree npm resolves again on every run;
//   3. `bundle` ÷ npm's install step alone (`npm install --omit=dev` on the same tree with the
//      same npm cache) on the express app and the large app of the bundle section (goal ≤ 1.15),
//      with where our time goes: the workflow's steps and what is outside them (start-up,
//      config, workdir cleanup); the same `bundle` at --gzip-level 1 (a setting, for what it
//      buys where deflate is the cost); and, for comparison only, what a user would otherwise
//      run to get a bundle: npm install, then npm pack with every dependency bundled.
// Every measurement is a child process run as a user runs it; rounds are interleaved and the
// median counts. BENCH_ROUNDS (default 3) sets the rounds of 3, BENCH_STARTUP_ROUNDS (15) those
// of 1, BENCH_STARTUP_PACKAGES (express-app,big-app) the packages of 3.
import { spawn } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..');
const bin = path.join(repo, 'bin', 'bundle-dispatch.js');
const work = path.join(here, '.work', 'startup');
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const STARTUP_ROUNDS = Number(process.env.BENCH_STARTUP_ROUNDS ?? 15);
const CACHED_ROUNDS = 7;
const PACKAGES = [
  { name: 'express-app', dependencies: { express: '5.3.0' } },
  { name: 'big-app', dependencies: { next: '15.5.4', react: '19.1.1', 'react-dom': '19.1.1', typescript: '5.9.3' } },
].filter((spec) => (process.env.BENCH_STARTUP_PACKAGES ?? 'express-app,big-app').split(',').includes(spec.name));
const GOALS = { startup: 1.5, cachedMs: 250, install: 1.15 };

/** Runs a command; resolves with its wall time and output, never rejects. */
function timed(command, args, options = {}) {
  return new Promise((resolve) => {
    const started = process.hrtime.bigint();
    const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let output = '';
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      output += chunk;
    });
    child.stderr.on('data', (chunk) => (output += chunk));
    child.on('close', (code) => resolve({ ms: Number(process.hrtime.bigint() - started) / 1e6, code, stdout, output }));
  });
}

async function sh(command, args, options) {
  const run = await timed(command, args, options);
  if (run.code !== 0) throw new Error(`${command} ${args.join(' ')} failed (${run.code}):\n${run.output.slice(-2000)}`);
  return run;
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const s = (ms) => `${(ms / 1000).toFixed(2)} s`;
const mb = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;
const mark = (ok) => (ok ? '✔' : '✖');
const cliEnv = (extra = {}) => ({ ...process.env, CI: 'true', ...extra });
const npmEnv = (cache) => ({ ...process.env, npm_config_cache: cache, npm_config_audit: 'false', npm_config_fund: 'false', npm_config_update_notifier: 'false' });

/** 1. --version and --help against node -e 0, interleaved. */
async function startup(rows) {
  const runs = { node: [], version: [], help: [] };
  const commands = { node: ['-e', '0'], version: [bin, '--version'], help: [bin, '--help'] };
  for (let round = 0; round < STARTUP_ROUNDS; round += 1) {
    for (const [name, args] of Object.entries(commands)) {
      const run = await timed(process.execPath, args, { cwd: work, env: cliEnv() });
      if (run.code !== 0) throw new Error(`${name} failed: ${run.output}`);
      runs[name].push(run.ms);
    }
  }
  const base = median(runs.node);
  for (const name of ['version', 'help']) {
    const ratio = median(runs[name]) / base;
    rows.push([`\`bundle-dispatch --${name}\` ÷ \`node -e 0\``, `${ratio.toFixed(2)} (${Math.round(median(runs[name]))} ms ÷ ${Math.round(base)} ms)`, `≤ ${GOALS.startup}`, mark(ratio <= GOALS.startup)]);
  }
}

/** s3rver in a child process (bench/s3rver-child.js), as the dispatch section runs it. */
async function startS3rver(directory, buckets) {
  const child = spawn(process.execPath, [path.join(here, 's3rver-child.js'), directory, ...buckets], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  const port = await new Promise((resolve, reject) => {
    let text = '';
    child.stdout.on('data', (chunk) => {
      text += chunk;
      const line = text.split('\n').find((candidate) => candidate.startsWith('{'));
      if (line) resolve(JSON.parse(line).port);
    });
    child.on('exit', (code) => reject(new Error(`s3rver exited (${code})`)));
  });
  return { port, stop: () => new Promise((resolve) => { child.once('exit', resolve); child.kill('SIGTERM'); }) };
}

/**
 * The sample app pinned: examples/hello-app with its npm-shrinkwrap.json, packed. A re-run of
 * a pinned input has nothing to ask npm (the in-sync check is remembered); an unpinned one
 * resolves its tree again on every run by design (docs/dispatch.md, Cron).
 */
async function pinnedSample(npmCache) {
  const dir = path.join(work, 'pinned', 'hello-app');
  await mkdir(path.dirname(dir), { recursive: true });
  await sh('cp', ['-r', path.join(repo, 'examples', 'hello-app'), dir]);
  await sh('npm', ['install', '--package-lock-only', '--ignore-scripts'], { cwd: dir, env: npmEnv(npmCache) });
  await sh('mv', [path.join(dir, 'package-lock.json'), path.join(dir, 'npm-shrinkwrap.json')]);
  await sh('npm', ['pack', '--pack-destination', path.dirname(dir)], { cwd: dir, env: npmEnv(npmCache) });
  return path.join(path.dirname(dir), 'hello-app-1.0.0.tgz');
}

/** 2. The main command, once cold (untimed), then re-run: every target must be cached. */
async function cachedReruns(label, input, dir, env) {
  await mkdir(dir, { recursive: true });
  await sh(process.execPath, [bin, input, '--json'], { cwd: dir, env });
  const times = [];
  for (let round = 0; round < CACHED_ROUNDS; round += 1) {
    const run = await sh(process.execPath, [bin, input, '--json'], { cwd: dir, env });
    const result = JSON.parse(run.stdout);
    if (!result.ok || !result.targets.every((target) => target.ok && target.cached)) throw new Error(`${label}: expected every target cached:\n${run.stdout.slice(0, 1000)}`);
    times.push(run.ms);
  }
  return { median: median(times), times };
}

async function cached(rows, notes) {
  const pinned = await pinnedSample(path.join(work, 'cache', 'npm'));
  const unpinned = path.join(repo, 'examples', 'hello-app-1.0.0.tgz');
  const embeddedEnv = (name) => cliEnv({ BUNDLE_DISPATCH_CACHE_DIR: path.join(work, name, 'cache') });
  const embedded = await cachedReruns('embedded', pinned, path.join(work, 'cached-embedded'), embeddedEnv('cached-embedded'));
  rows.push(['cached re-run of `bundle-dispatch <input>`, pinned input, embedded default (wall, start-up included)', s(embedded.median), `≤ ${s(GOALS.cachedMs)}`, mark(embedded.median <= GOALS.cachedMs)]);
  const server = await startS3rver(path.join(work, 's3rver'), ['sources', 'releases']);
  let s3;
  try {
    const dir = path.join(work, 'cached-s3');
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, '.bundlerc'), JSON.stringify({
      dispatch: { source: 's3://sources/src', destination: 's3://releases/dist', s3: { endpoint: `http://127.0.0.1:${server.port}`, region: 'us-east-1', forcePathStyle: true } },
    }));
    s3 = await cachedReruns('s3', pinned, dir, cliEnv({ BUNDLE_DISPATCH_CACHE_DIR: path.join(dir, 'cache'), AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' }));
    rows.push(['cached re-run, pinned input, source and destination on S3 (s3rver)', s(s3.median), `≤ ${s(GOALS.cachedMs)}`, mark(s3.median <= GOALS.cachedMs)]);
  } finally {
    await server.stop();
  }
  const resolving = await cachedReruns('unpinned', unpinned, path.join(work, 'cached-unpinned'), embeddedEnv('cached-unpinned'));
  rows.push(['cached re-run, unpinned input (npm resolves the tree each run, by design), embedded', s(resolving.median), '(no goal)', '']);
  notes.push(`cached re-runs (${CACHED_ROUNDS} each, examples/hello-app): pinned embedded ${embedded.times.map(s).join(' ')} · pinned s3 ${s3.times.map(s).join(' ')} · unpinned embedded ${resolving.times.map(s).join(' ')}`);
}

/** 3. Our bundle against npm install --omit=dev on the same tree and npm cache. */
async function againstInstall(rows, notes) {
  const cacheDir = path.join(work, 'cache');
  const npmCache = path.join(cacheDir, 'npm');
  for (const spec of PACKAGES) {
    const src = path.join(work, 'src', spec.name);
    await mkdir(src, { recursive: true });
    await writeFile(path.join(src, 'package.json'), JSON.stringify({ name: spec.name, version: '1.0.0', main: 'index.js', dependencies: spec.dependencies }, null, 2));
    await writeFile(path.join(src, 'index.js'), `${Object.keys(spec.dependencies).map((dep) => `require.resolve(${JSON.stringify(dep)});`).join('\n')}\nmodule.exports = 1;\n`);
    await sh('npm', ['pack', '--pack-destination', path.join(work, 'src')], { cwd: src, env: npmEnv(npmCache) });
    const tgz = path.join(work, 'src', `${spec.name}-1.0.0.tgz`);
    const bundle = async (scratch, flags) => {
      const run = await sh(process.execPath, [bin, 'bundle', tgz, '-o', `${scratch}/`, '--node', process.versions.node, '--cache-dir', cacheDir, '--json', ...flags], { cwd: work, env: cliEnv() });
      const result = JSON.parse(run.stdout);
      return { ms: run.ms, durations: result.durations, tarSha256: result.tarSha256, sha256: result.sha256, size: result.size };
    };
    const tools = {
      ours: (scratch) => bundle(scratch, []),
      // The same at gzipLevel 1: what the setting buys where deflate is the cost.
      oursFastest: (scratch) => bundle(scratch, ['--gzip-level', '1']),
      async install(scratch) {
        await mkdir(scratch, { recursive: true });
        await sh('tar', ['xzf', tgz, '-C', scratch]);
        return { ms: (await sh('npm', ['install', '--omit=dev'], { cwd: path.join(scratch, 'package'), env: npmEnv(npmCache) })).ms };
      },
      // What a user would otherwise run for a bundle: install, list every dependency in
      // bundleDependencies, npm pack (its gzip is level 9, one core). Not the issue's baseline.
      async byHand(scratch) {
        await mkdir(scratch, { recursive: true });
        await sh('tar', ['xzf', tgz, '-C', scratch]);
        const dir = path.join(scratch, 'package');
        const installed = await sh('npm', ['install', '--omit=dev'], { cwd: dir, env: npmEnv(npmCache) });
        const manifest = JSON.parse(await readFile(path.join(dir, 'package.json'), 'utf8'));
        await writeFile(path.join(dir, 'package.json'), JSON.stringify({ ...manifest, bundleDependencies: Object.keys(manifest.dependencies ?? {}) }, null, 2));
        const packed = await sh('npm', ['pack', '--pack-destination', scratch], { cwd: dir, env: npmEnv(npmCache) });
        return { ms: installed.ms + packed.ms };
      },
    };
    // Warm-up, untimed: fills the npm cache they all use.
    for (const [name, tool] of Object.entries(tools)) await tool(path.join(work, 'runs', spec.name, name, 'warm'));
    const results = { ours: [], oursFastest: [], install: [], byHand: [] };
    // The order turns each round (A-B-C-D, B-C-D-A, …): whichever runs after another meets its writeback and freed files.
    for (let round = 0; round < ROUNDS; round += 1) {
      const entries = Object.entries(tools);
      const order = [...entries.slice(round % entries.length), ...entries.slice(0, round % entries.length)];
      for (const [name, tool] of order) {
        const scratch = path.join(work, 'runs', spec.name, name, String(round));
        results[name].push(await tool(scratch));
        await rm(scratch, { recursive: true, force: true });
      }
    }
    await rm(path.join(work, 'runs'), { recursive: true, force: true });
    const ours = median(results.ours.map((run) => run.ms));
    const install = median(results.install.map((run) => run.ms));
    const ratio = ours / install;
    rows.push([`\`bundle\` ÷ \`npm install --omit=dev\`, ${spec.name}`, `${ratio.toFixed(2)} (${s(ours)} ÷ ${s(install)})`, `≤ ${GOALS.install}`, mark(ratio <= GOALS.install)]);
    const byHand = median(results.byHand.map((run) => run.ms));
    rows.push([`\`bundle\` ÷ (\`npm install --omit=dev\` + \`npm pack\` with every dependency in bundleDependencies), ${spec.name}: what a user would otherwise run`, `${(ours / byHand).toFixed(2)} (${s(ours)} ÷ ${s(byHand)})`, '(not the goal)', '']);
    const fastest = median(results.oursFastest.map((run) => run.ms));
    rows.push([`\`bundle --gzip-level 1\` ÷ \`npm install --omit=dev\`, ${spec.name} (a setting, not the default)`, `${(fastest / install).toFixed(2)} (${s(fastest)} ÷ ${s(install)}; .tgz ${mb(results.oursFastest[0].size)} vs ${mb(results.ours[0].size)} at level 6)`, `≤ ${GOALS.install}`, mark(fastest / install <= GOALS.install)]);
    const steps = Object.keys(results.ours[0].durations);
    const stepMedians = Object.fromEntries(steps.map((step) => [step, median(results.ours.map((run) => run.durations[step] ?? 0))]));
    const outsideOf = (runs) => median(runs.map((run) => run.ms - Object.values(run.durations).reduce((sum, ms) => sum + (ms ?? 0), 0)));
    const outside = outsideOf(results.ours);
    notes.push(`${spec.name}, our time by step (medians, ms): ${steps.map((step) => `${step} ${stepMedians[step]}`).join(', ')}, outside the steps (start-up, config, cleanup) ${Math.round(outside)}; bundle ${s(ours)} vs npm install ${s(install)} (runs ${results.ours.map((run) => s(run.ms)).join(' ')} / ${results.install.map((run) => s(run.ms)).join(' ')}); tarSha256 ${results.ours[0].tarSha256.slice(0, 16)}…, sha256 ${results.ours[0].sha256.slice(0, 16)}…${new Set([...results.ours, ...results.oursFastest].map((run) => run.tarSha256)).size === 1 ? ' (the same tar at level 1)' : ' (tarSha256 DIFFERS between rounds or levels)'}; at level 1 ${s(fastest)} (runs ${results.oursFastest.map((run) => s(run.ms)).join(' ')}), outside the steps ${Math.round(outsideOf(results.oursFastest))}`);
  }
}

export async function run({ log }) {
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  log(`node ${process.versions.node}; ${STARTUP_ROUNDS} rounds of start-up, ${CACHED_ROUNDS} cached re-runs, ${ROUNDS} rounds of bundle vs npm install (${PACKAGES.map((spec) => spec.name).join(', ')}), interleaved, medians.`);
  const rows = [];
  const notes = [];
  await startup(rows);
  await cached(rows, notes);
  await againstInstall(rows, notes);
  log('');
  log('| measure | this run | goal | |');
  log('|---|---|---|---|');
  for (const row of rows) log(`| ${row.join(' | ')} |`);
  log('');
  for (const note of notes) log(note);
  await rm(work, { recursive: true, force: true });
}
