// Bundle section: our `bundle` command against the manual baseline (npm install --omit=dev, add
// bundleDependencies, npm pack) and the published peers npm-bundle and npm-pack-all, on the
// same packages, with one npm cache warmed for all before anything is timed. Each tool runs
// ROUNDS times, interleaved, and the median counts. Also: peak RSS of our own process while
// bundling the package whose node_modules is over 200 MB.
import { execFile, spawn } from 'node:child_process';
import { mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..');
const work = path.join(here, '.work', 'bundle');
const cache = path.join(work, 'npm-cache');
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);

const PACKAGES = [
  { name: 'express-app', dependencies: { express: '5.3.0' } },
  { name: 'big-app', dependencies: { next: '15.5.4', react: '19.1.1', 'react-dom': '19.1.1', typescript: '5.9.3' } },
];

/** Runs a command; resolves with wall time, never rejects (a failing peer is a result). */
function timed(command, args, options) {
  return new Promise((resolve) => {
    const started = process.hrtime.bigint();
    const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    let stdout = '';
    child.stdout.on('data', (chunk) => {
      output += chunk;
      stdout += chunk;
    });
    child.stderr.on('data', (chunk) => (output += chunk));
    child.on('close', (code) => resolve({ ms: Number(process.hrtime.bigint() - started) / 1e6, code, output, stdout }));
  });
}

async function sh(command, args, options = {}) {
  const run = await timed(command, args, options);
  if (run.code !== 0) throw new Error(`${command} ${args.join(' ')} failed (${run.code}):\n${run.output.slice(-2000)}`);
  return run;
}

const npmEnv = () => ({ ...process.env, npm_config_cache: cache, npm_config_audit: 'false', npm_config_fund: 'false', npm_config_update_notifier: 'false' });

async function extract(tgz, into) {
  await rm(into, { recursive: true, force: true });
  await mkdir(into, { recursive: true });
  await sh('tar', ['xzf', tgz, '-C', into]);
  return path.join(into, 'package');
}

async function newestTgz(dir) {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.tgz'));
  if (files.length === 0) throw new Error(`no .tgz written in ${dir}`);
  const stats = await Promise.all(files.map(async (f) => ({ f, t: (await stat(path.join(dir, f))).mtimeMs })));
  return path.join(dir, stats.sort((a, b) => b.t - a.t)[0].f);
}

/** Each tool: (tgz, scratch dir) → { ms, bundle?, error?, rssKb? } */
const TOOLS = {
  async ours(tgz, scratch) {
    const out = path.join(scratch, 'out');
    await mkdir(out, { recursive: true });
    const rssFile = path.join(scratch, 'rss');
    const run = await timed(process.execPath, ['--import', path.join(here, 'rss-probe.js'), path.join(repo, 'bin', 'bundle-dispatch.js'), 'bundle', tgz, '-o', `${out}/`, '--node', process.versions.node, '--cache-dir', path.join(work, 'ours-cache'), '--json'], {
      env: { ...process.env, CI: 'true', BENCH_RSS_FILE: rssFile },
    });
    if (run.code !== 0) return { ms: run.ms, error: run.output.slice(-400) };
    return { ms: run.ms, bundle: JSON.parse(run.stdout).file, rssKb: Number(await readFile(rssFile, 'utf8')) };
  },
  async baseline(tgz, scratch) {
    const started = process.hrtime.bigint();
    const dir = await extract(tgz, scratch);
    await sh('npm', ['install', '--omit=dev'], { cwd: dir, env: npmEnv() });
    const pkg = JSON.parse(await readFile(path.join(dir, 'package.json'), 'utf8'));
    pkg.bundleDependencies = (await readdir(path.join(dir, 'node_modules'))).filter((n) => !n.startsWith('.'))
      .flatMap((n) => n.startsWith('@') ? [] : [n]);
    for (const scope of (await readdir(path.join(dir, 'node_modules'))).filter((n) => n.startsWith('@'))) {
      for (const name of await readdir(path.join(dir, 'node_modules', scope))) pkg.bundleDependencies.push(`${scope}/${name}`);
    }
    await writeFile(path.join(dir, 'package.json'), JSON.stringify(pkg, null, 2));
    await sh('npm', ['pack'], { cwd: dir, env: npmEnv() });
    return { ms: Number(process.hrtime.bigint() - started) / 1e6, bundle: await newestTgz(dir) };
  },
  async 'npm-pack-all'(tgz, scratch) {
    const started = process.hrtime.bigint();
    const dir = await extract(tgz, scratch);
    await sh('npm', ['install', '--omit=dev'], { cwd: dir, env: npmEnv() });
    const run = await timed(process.execPath, [path.join(work, 'peers', 'node_modules', 'npm-pack-all', 'index.js')], { cwd: dir, env: npmEnv() });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (run.code !== 0) return { ms, error: run.output.trim().split('\n').slice(-3).join(' ') };
    return { ms, bundle: await newestTgz(dir) };
  },
  async 'npm-bundle'(tgz, scratch) {
    const started = process.hrtime.bigint();
    const dir = await extract(tgz, scratch);
    const run = await timed(process.execPath, [path.join(work, 'peers', 'node_modules', 'npm-bundle', 'bin', 'cli.js')], { cwd: dir, env: npmEnv() });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (run.code !== 0) return { ms, error: run.output.trim().split('\n').filter(Boolean).slice(-2).join(' ').slice(0, 300) };
    return { ms, bundle: await newestTgz(dir).catch(() => undefined) ?? path.resolve(dir, run.output.trim().split('\n').at(-1)) };
  },
};

/** Installs a bundle offline into an empty project with an empty cache: does it install, and load? */
async function installsOffline(bundle, scratch, name) {
  const dir = path.join(scratch, 'consumer');
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'package.json'), '{"name":"consumer","version":"1.0.0","private":true}');
  const run = await timed('npm', ['install', bundle, '--offline', '--no-audit', '--no-fund'], {
    cwd: dir,
    env: { ...process.env, npm_config_cache: path.join(scratch, 'empty-cache') },
  });
  if (run.code !== 0) return `no (${(run.output.match(/code (\w+)/) ?? [])[1] ?? `exit ${run.code}`})`;
  const load = await timed(process.execPath, ['-e', `require(${JSON.stringify(name)})`], { cwd: dir, env: process.env });
  return load.code === 0 ? 'yes' : `installs, does not load (${(load.output.match(/Cannot find module '([^']+)'/) ?? [])[1] ?? `exit ${load.code}`} missing)`;
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

export async function run({ log }) {
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  log(`Packages: ${PACKAGES.map((p) => `${p.name} (${Object.keys(p.dependencies).join(', ')})`).join('; ')}. ${ROUNDS} rounds, medians.`);
  log('Preparing: peers, inputs, and one warm-up run of every tool (warms the npm cache for all)…');
  await mkdir(path.join(work, 'peers'), { recursive: true });
  await writeFile(path.join(work, 'peers', 'package.json'), '{"name":"peers","version":"1.0.0","private":true}');
  await sh('npm', ['install', 'npm-bundle@3.0.3', 'npm-pack-all@1.12.7'], { cwd: path.join(work, 'peers'), env: npmEnv() });

  const inputs = [];
  for (const spec of PACKAGES) {
    const dir = path.join(work, 'src', spec.name);
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: spec.name, version: '1.0.0', main: 'index.js', dependencies: spec.dependencies }, null, 2));
    // Loading the package resolves every dependency: a "bundle" that lacks them fails here.
    await writeFile(path.join(dir, 'index.js'), `${Object.keys(spec.dependencies).map((dep) => `require.resolve(${JSON.stringify(dep)});`).join('\n')}\nmodule.exports = 1;\n`);
    await sh('npm', ['pack', '--pack-destination', path.join(work, 'src')], { cwd: dir, env: npmEnv() });
    inputs.push({ ...spec, tgz: path.join(work, 'src', `${spec.name}-1.0.0.tgz`) });
  }
  // Warm-up: every tool once per package, untimed. Our own npm cache is separate (the CLI's
  // --cache-dir), so it is warmed here too.
  for (const input of inputs) {
    for (const [name, tool] of Object.entries(TOOLS)) {
      await tool(input.tgz, path.join(work, 'warm', input.name, name)).catch(() => undefined);
    }
  }
  await rm(path.join(work, 'warm'), { recursive: true, force: true });

  const rows = [];
  for (const input of inputs) {
    const results = Object.fromEntries(Object.keys(TOOLS).map((name) => [name, { times: [], error: undefined, bundle: undefined, rss: [] }]));
    for (let round = 0; round < ROUNDS; round += 1) {
      for (const [name, tool] of Object.entries(TOOLS)) {
        const scratch = path.join(work, 'runs', input.name, name, String(round));
        const result = await tool(input.tgz, scratch);
        results[name].times.push(result.ms);
        if (result.error) results[name].error = result.error;
        if (result.bundle) results[name].bundle = result.bundle;
        if (result.rssKb) results[name].rss.push(result.rssKb);
        if (round < ROUNDS - 1) await rm(scratch, { recursive: true, force: true }).catch(() => undefined);
      }
    }
    const base = median(results.baseline.times);
    for (const [name, result] of Object.entries(results)) {
      const offline = result.bundle ? await installsOffline(result.bundle, path.join(work, 'offline', input.name, name), input.name) : 'no bundle';
      rows.push({
        package: input.name,
        tool: name,
        seconds: (median(result.times) / 1000).toFixed(2),
        ratio: (median(result.times) / base).toFixed(2),
        offline,
        note: result.error ? `failed: ${result.error.replace(/\s+/g, ' ').slice(0, 120)}` : result.rss.length ? `peak RSS ${(Math.max(...result.rss) / 1024).toFixed(0)} MB` : '',
      });
    }
  }
  const bigModules = await execFileAsync('du', ['-sm', path.join(work, 'runs', 'big-app', 'baseline', String(ROUNDS - 1), 'package', 'node_modules')]).then(({ stdout }) => stdout.split('\t')[0]).catch(() => '?');

  log('');
  log('| package | tool | median s | ÷ baseline | installs offline | note |');
  log('|---|---|---|---|---|---|');
  for (const row of rows) log(`| ${row.package} | ${row.tool} | ${row.seconds} | ${row.ratio} | ${row.offline} | ${row.note} |`);
  log('');
  log(`big-app's node_modules: ${bigModules} MB. Targets: ours ≤ 1.10× baseline; our peak RSS < 150 MB on big-app.`);
  await rm(path.join(work, 'runs'), { recursive: true, force: true });
}
