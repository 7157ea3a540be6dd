/**
 * What a newcomer trips over (issue 28), each through the real bin: an input path with a typo is
 * a usage error naming the file (not npm's 404), and a closed output ends the command quietly.
 */
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { createGzip } from 'node:zlib';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveRunId } from '../../lib/dispatch/history.js';
import { looksLikeFile } from '../../lib/dispatch/input.js';
import { chmod, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { TEST_UID_RANGES, startTestBuilder } from '../helpers/builder.js';
import { runCli, runCliInTerminal } from '../helpers/cli.js';
import { installOffline } from '../helpers/consumer.js';
import { packageTar, repoRoot, tempDir } from '../helpers/packages.js';
import type { DispatchResult } from '../../lib/dispatch/run.js';

const execFileAsync = promisify(execFile);
/** The uids of the builders this file starts through the bin: their start-up sweep kills processes of the range, so never the default (61000-61999) other files' builds use. */
const BIN_UIDS = `${TEST_UID_RANGES.newcomerBin.first}-${TEST_UID_RANGES.newcomerBin.last}`;
let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-newcomer-');
});
afterAll(async () => {
  await root?.remove();
});

describe('an input that looks like a file', () => {
  it('is told apart from a registry spec', () => {
    for (const spec of ['my-app-1.0.0.tg', 'my-app-1.0.0.tgz', 'dist/my-app.tgz', './my-app', '../app', '/tmp/x', '~/x', 'build/out', 'app.tar.gz']) expect(looksLikeFile(spec), spec).toBe(true);
    for (const spec of ['my-app', 'my-app@1.0.0', '@scope/app', '@scope/app@^1.2.0', 'github:owner/repo', 'https://example.test/app.tgz', 'git+ssh://git@host/x.git']) expect(looksLikeFile(spec), spec).toBe(false);
  });

  it('that does not exist: exit 2, ERR_INPUT_NOT_FOUND naming the file and where it was looked for; npm is never asked', async () => {
    const run = await runCli(['my-app-1.0.0.tg', '--cache-dir', path.join(root.dir, 'cache')], { cwd: root.dir });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('ERR_INPUT_NOT_FOUND');
    expect(run.stderr).toContain(`"my-app-1.0.0.tg" does not exist (no file or directory ${path.join(root.dir, 'my-app-1.0.0.tg')})`);
    expect(run.stderr).not.toMatch(/E404|ERR_INPUT_UNREADABLE|npm error|at \S+:\d+:\d+/);
    const json = await runCli(['dist/missing.tgz', '--json', '--cache-dir', path.join(root.dir, 'cache')], { cwd: root.dir });
    expect(json.code).toBe(2);
    expect(JSON.parse(json.stdout)).toMatchObject({ error: { code: 'ERR_INPUT_NOT_FOUND' } });
  });
});

describe('the Node version a build uses', () => {
  const major = process.versions.node.split('.')[0];
  it('no --targets: the README\'s sample is built for this machine\'s Node major (its engines allow it), so the bundle installs here', async () => {
    const cwd = path.join(root.dir, 'host-node');
    await mkdir(cwd, { recursive: true });
    const run = await runCli([path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz'), '--json', '--cache-dir', path.join(root.dir, 'cache')], { cwd, env: { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') } });
    expect(run.code, run.stderr).toBe(0);
    const result = JSON.parse(run.stdout) as DispatchResult;
    const outcome = result.targets[0];
    expect(outcome).toMatchObject({ ok: true, target: `linux-${process.arch}` });
    if (!outcome?.ok) throw new Error(run.stdout);
    expect(outcome.node?.split('.')[0]).toBe(major);
    const bundle = path.join(cwd, 'dist', outcome.key);
    const { stdout } = await execFileAsync('tar', ['-xzOf', bundle, 'package/package.json']);
    expect((JSON.parse(stdout) as { engines: { node: string } }).engines.node).toBe(`${major}.x`);
    // This machine's npm takes it: no EBADENGINE.
    const installed = await installOffline(bundle, path.join(root.dir, 'consumer'));
    expect(installed.stderr).not.toMatch(/EBADENGINE/);
  }, 300_000);

  it('a Node other than this machine\'s (engines rule it out): the summary\'s notes say which and why', async () => {
    const cwd = path.join(root.dir, 'other-node');
    await mkdir(cwd, { recursive: true });
    const other = major === '22' ? '20' : '22';
    const input = path.join(cwd, 'pinned-1.0.0.tgz');
    await pipeline(packageTar({ name: 'pinned', version: '1.0.0', engines: { node: `${other}.x` } }, { 'index.js': 'module.exports = 1;\n' }), createGzip(), createWriteStream(input));
    const run = await runCli([input, '--cache-dir', path.join(root.dir, 'cache')], { cwd, env: { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') } });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(new RegExp(`notes:\\n  linux-${process.arch}: Node ${other}\\.\\d+\\.\\d+: the newest LTS release that satisfies engines\\.node "${other}\\.x" in package\\.json`));
  }, 300_000);
});

describe('npm\'s EBADENGINE in a build for another Node', () => {
  it('the log says npm runs under this machine\'s Node while the bundle (and its scripts) use the chosen one, and marks npm\'s "current:" line as npm\'s own', async () => {
    const cwd = path.join(root.dir, 'engine-lines');
    await mkdir(cwd, { recursive: true });
    const other = process.versions.node.split('.')[0] === '22' ? '20' : '22';
    const input = path.join(cwd, 'needs-new-1.0.0.tgz');
    // cookie 2.0.2 declares engines.node >=22: npm under this machine's Node warns EBADENGINE.
    await pipeline(packageTar({ name: 'needs-new', version: '1.0.0', dependencies: { cookie: '2.0.2' } }, { 'index.js': 'module.exports = 1;\n' }), createGzip(), createWriteStream(input));
    const run = await runCli(['bundle', input, '--node', other, '--verbose', '--cache-dir', path.join(root.dir, 'cache'), '-o', path.join(cwd, 'out.tgz')], { cwd, env: { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') } });
    expect(run.code, run.stderr).toBe(0);
    const output = run.stdout + run.stderr;
    expect(output).toMatch(new RegExp(`npm runs under Node ${process.versions.node.replaceAll('.', '\\.')} \\(this machine's\\); install scripts and node-gyp run under Node ${other}\\.\\d+\\.\\d+, the Node the bundle is for`));
    if (other === '20') return; // cookie wants >=22: only a build for 20 on a 22 machine would not warn
    expect(output).toMatch(new RegExp(`EBADENGINE\\s+current: \\{ node: 'v${process.versions.node.replaceAll('.', '\\.')}'.*\\(the Node npm runs under; the bundle is for Node ${other}\\.`));
  }, 300_000);
});

describe('one state model for runs and status', () => {
  it('a run that failed before any build: both say failed, its target "not started" (not pending or waiting), and both show the error', async () => {
    const cwd = path.join(root.dir, 'failed-early');
    await mkdir(cwd, { recursive: true });
    // An S3 destination whose endpoint refuses connections: the cache check fails before any build.
    await writeFile(path.join(cwd, '.bundlerc'), JSON.stringify({ dispatch: { s3: { endpoint: 'http://127.0.0.1:9', region: 'us-east-1', forcePathStyle: true } } }));
    const cache = path.join(root.dir, 'failed-early-cache');
    const env = { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') };
    const run = await runCli([path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz'), '-d', 's3://bucket/x', '--cache-dir', cache], { cwd, env });
    expect(run.code).toBe(1);
    const runs = await runCli(['runs', '--cache-dir', cache], { cwd, env });
    expect(runs.stdout).toMatch(/1 not started\s+\S+ s\s+failed/);
    expect(runs.stdout).toMatch(/\n\S+: ERR_STORE_IO: S3 download of s3:\/\/bucket\/x\//);
    const status = await runCli(['status', '--cache-dir', cache], { cwd, env });
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(/^run \S+ · failed · /);
    expect(status.stdout).toMatch(/\n {2}error: ERR_STORE_IO: S3 download/);
    expect(status.stdout).toMatch(new RegExp(`linux-${process.arch}\\s+not started`));
    expect((await runCli(['status', '--exit-status', '--cache-dir', cache], { cwd, env })).code).toBe(1);
    const json = JSON.parse((await runCli(['runs', '--json', '--cache-dir', cache], { cwd, env })).stdout) as { runs: Array<{ state: string; targets: Record<string, number>; error?: { code: string } }> };
    expect(json.runs[0]).toMatchObject({ state: 'failed', targets: { pending: 0, notStarted: 1 }, error: { code: 'ERR_STORE_IO' } });
  }, 120_000);
});

describe('an S3 store nobody configured', () => {
  it('is ERR_CONFIG (exit 2) before any work, saying what to set: no region, then no credentials', async () => {
    const cwd = path.join(root.dir, 's3-unconfigured');
    await mkdir(cwd, { recursive: true });
    // Nothing of this machine's AWS setup may leak in: no region, no keys, no profile files, no instance role.
    const env = { AWS_REGION: '', AWS_DEFAULT_REGION: '', AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '', AWS_PROFILE: '', AWS_CONFIG_FILE: path.join(cwd, 'none'), AWS_SHARED_CREDENTIALS_FILE: path.join(cwd, 'none'), AWS_EC2_METADATA_DISABLED: 'true', BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') };
    const cache = path.join(root.dir, 's3-unconfigured-cache');
    const noRegion = await runCli([path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz'), '-d', 's3://releases/bundles', '--cache-dir', cache], { cwd, env });
    expect(noRegion.code).toBe(2);
    expect(noRegion.stderr).toContain('ERR_CONFIG: No region for the S3 store s3://releases/bundles/.');
    expect(noRegion.stderr).toContain('Set dispatch.s3.region in .bundlerc or AWS_REGION');
    const noKeys = await runCli([path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz'), '-d', 's3://releases/bundles', '--cache-dir', cache], { cwd, env: { ...env, AWS_REGION: 'eu-west-1' } });
    expect(noKeys.code).toBe(2);
    expect(noKeys.stderr).toContain('ERR_CONFIG: No credentials for the S3 store s3://releases/bundles/');
    expect(noKeys.stderr).toContain('Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE');
    for (const run of [noRegion, noKeys]) expect(run.stderr).not.toMatch(/retry|ERR_STORE_IO|at \S+:\d+:\d+/);
    // The input is read while the stores are set up; a set-up failure still comes first.
    const bothWrong = await runCli([path.join(cwd, 'missing-1.0.0.tgz'), '-d', 's3://releases/bundles', '--cache-dir', cache], { cwd, env });
    expect(bothWrong.code).toBe(2);
    expect(bothWrong.stderr).toContain('ERR_CONFIG: No region');
    // Nothing was started: no run was recorded, and the input's work (npm resolving the
    // unpinned sample's tree) was stopped and its workdir removed.
    expect((await runCli(['runs', '--json', '--cache-dir', cache], { cwd, env })).stdout).toContain('"runs": []');
    expect((await readdir(path.join(root.dir, 'work'))).filter((name) => name.startsWith('dispatch-'))).toEqual([]);
  });
});

describe('a target no builder can compile for', () => {
  it('a package with its own addon, for linux-arm64-musl on the embedded default (no toolchain here compiles for musl): refused at planning (exit 2), naming the target and what to add; nothing uploaded, no manifest', async () => {
    const cwd = path.join(root.dir, 'uncompilable');
    await mkdir(cwd, { recursive: true });
    const input = path.join(cwd, 'native-fixture-1.0.0.tgz');
    const fixture = path.join(repoRoot, 'test', 'fixtures', 'native-addon');
    const files = Object.fromEntries(await Promise.all(['adder.c', 'binding.gyp', 'index.js'].map(async (name) => [name, await readFile(path.join(fixture, name), 'utf8')] as const)));
    await pipeline(packageTar({ name: 'native-fixture', version: '1.0.0', main: 'index.js' }, files), createGzip(), createWriteStream(input));
    const cache = path.join(root.dir, 'uncompilable-cache');
    const run = await runCli([input, '--targets', `linux-${process.arch},linux-arm64-musl`, '--cache-dir', cache], { cwd, env: { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') } });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('ERR_NATIVE_NEEDS_TARGET: Cannot build linux-arm64-musl: the package compiles native code at install time (binding.gyp) and no builder of that target\'s pool can compile for it. Nothing was uploaded.');
    expect(run.stderr).toContain('Add a builder running on that platform to dispatch.pools');
    expect(await readdir(cwd)).toEqual(['native-fixture-1.0.0.tgz']);
    expect(await readdir(path.join(cache, 'dispatch')).catch(() => [])).not.toContain('store');
  }, 120_000);
});

describe('flag names and typos', () => {
  it('an unknown flag: exit 2 with a "did you mean" from the command\'s own flags; a mistyped command likewise, before npm is asked', async () => {
    const flag = await runCli(['my-app-1.0.0.tgz', '--tagets', 'linux-x64', '--jsn'], { cwd: root.dir });
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain('Unknown arguments: tagets, jsn');
    expect(flag.stderr).toContain('Did you mean --targets (for --tagets), --json (for --jsn)?');
    const logs = await runCli(['logs', 'latest', '--folow'], { cwd: root.dir });
    expect(logs.stderr).toContain('Did you mean --follow (for --folow)?');
    const command = await runCli(['stauts', '--cache-dir', path.join(root.dir, 'cache')], { cwd: root.dir });
    expect(command.code).toBe(2);
    expect(command.stderr).toContain('Unknown command "stauts". Did you mean bundle-dispatch status?');
    expect(command.stderr).not.toMatch(/E404|npm pack/);
  });

  it('--targets/-t names a target everywhere (bundle, logs, verify), the old names kept as aliases', async () => {
    const cwd = path.join(root.dir, 'targets-flag');
    await mkdir(cwd, { recursive: true });
    const target = `linux-${process.arch}@${process.versions.node}`;
    const bundled = await runCli(['bundle', path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz'), '-t', target, '--json', '--cache-dir', path.join(root.dir, 'cache'), '-o', `${cwd}/`], { cwd, env: { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') } });
    expect(bundled.code, bundled.stderr).toBe(0);
    expect(JSON.parse(bundled.stdout)).toMatchObject({ node: process.versions.node, target: { os: 'linux', cpu: process.arch } });
    const both = await runCli(['bundle', path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz'), '--targets', target, '--os', 'linux'], { cwd });
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('Give the target either as --targets os-cpu[-libc][@node] or with --os/--cpu/--libc, not both.');
    const several = await runCli(['bundle', path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz'), '--target', 'linux-x64,linux-arm64'], { cwd });
    expect(several.stderr).toContain('bundle builds one target');
    for (const command of ['logs', 'verify']) {
      const help = await runCli([command, '--help'], { cwd });
      expect(help.stdout).toMatch(/-t, --targets, --target/);
    }
  }, 120_000);
});

describe('the summary in a terminal', () => {
  for (const columns of [80, 120]) {
    it(`at ${columns} columns: the table fits (header on one line, cells cut), full paths and errors below it, whole`, async () => {
      const cwd = path.join(root.dir, `terminal-${columns}`);
      await mkdir(cwd, { recursive: true });
      const env = { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') };
      // One target delivered (a long path), one failed (a long error): both too wide for a row.
      const run = await runCliInTerminal([path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz'), '--targets', `linux-${process.arch}@${process.versions.node},linux-${process.arch}@>=99`, '--cache-dir', path.join(root.dir, 'cache')], { cwd, columns, env });
      expect(run.code, run.screen).toBe(1);
      const lines = run.screen.split('\n');
      const header = lines.findIndex((line) => line.startsWith('target ') && line.includes('result'));
      expect(header, run.screen).toBeGreaterThan(-1);
      const table = lines.slice(header, header + 3);
      for (const line of table) expect(line.length, line).toBeLessThanOrEqual(columns);
      expect(table[0]).toMatch(/^target\s+result\s+how\s+node\s+size\s+build$/);
      const bundle = path.join(cwd, 'dist', 'hello-app', '1.0.0', `hello-app-1.0.0-linux-${process.arch}-glibc-node${process.versions.node.split('.')[0]}.tgz`);
      expect(lines).toContain(`linux-${process.arch}@${process.versions.node}  ${bundle}`);
      expect(lines).toContain(`linux-${process.arch}@>=99  ERR_ENGINES_UNSATISFIED:`);
      const summary = lines.filter((line) => line.startsWith('✖ 1/2 target(s) ok') || line.startsWith('  run ') || line.startsWith('    bundle-dispatch status'));
      for (const line of summary) expect(line.length, line).toBeLessThanOrEqual(columns);
    }, 300_000);
  }

  it('plain output (no terminal) keeps the one wide table', async () => {
    const cwd = path.join(root.dir, 'terminal-plain');
    await mkdir(cwd, { recursive: true });
    const run = await runCli([path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz'), '--targets', `linux-${process.arch}@${process.versions.node}`, '--cache-dir', path.join(root.dir, 'cache')], { cwd, env: { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') } });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^target\s+result\s+how\s+node\s+size\s+build\s+bundle \/ error\n/);
  }, 300_000);
});

describe('a builder started as root on a cache dir its build users cannot reach', () => {
  it.runIf(process.getuid?.() === 0)('names the directory that stops them, its mode and owner, and the two ways out (exit 2)', async () => {
    // As the main command leaves its cache dir: 0700, root's.
    await chmod(root.dir, 0o711);
    const cache = path.join(root.dir, 'private-cache');
    await mkdir(cache, { mode: 0o700 });
    const run = await runCli(['builder', '--port', '0', '--store', path.join(root.dir, 'private-store'), '--cache-dir', cache], { cwd: root.dir, env: { BUNDLE_DISPATCH_BUILDER_TOKENS: 'a-token-long-enough-0123456789', BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: BIN_UIDS } });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain(`ERR_CONFIG: cacheDir ${cache} cannot be reached by the build users (uids ${BIN_UIDS}, builder.runAsUids): ${cache} itself has mode 0700 (owner uid 0), which lets no other user pass through.`);
    expect(run.stderr).toContain(`chmod o+x ${cache}`);
    expect(run.stderr).not.toMatch(/root's home|is under/);
  });
});

describe('the builder\'s log', () => {
  const token = 'a-token-long-enough-0123456789';
  it('on a terminal: readable lines (time, level, message), not JSON', async () => {
    // Its build users (as root) pass through to the cache dir below, which the builder makes (0755): not the main command's 0700 one.
    await chmod(root.dir, 0o711);
    const run = await runCliInTerminal(['builder', '--port', '0', '--store', path.join(root.dir, 'log-store'), '--cache-dir', path.join(root.dir, 'builder-cache'), '--sandbox', 'off'], { cwd: root.dir, columns: 120, stopAfterSeconds: 4, env: { BUNDLE_DISPATCH_BUILDER_TOKENS: token, BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: BIN_UIDS } });
    expect(run.screen).toMatch(/^\[\d\d:\d\d:\d\d\] INFO: builder listening/m);
    expect(run.screen).toMatch(/^\[\d\d:\d\d:\d\d\] INFO: serving linux-/m);
    expect(run.screen).toMatch(/INFO: stopped/);
    expect(run.screen).not.toMatch(/^\{"level"/m);
  });

  it('elsewhere: one JSON document per line, each key once (reqId too)', async () => {
    await chmod(root.dir, 0o711);
    const child = spawn(process.execPath, [path.join(repoRoot, 'bin', 'bundle-dispatch.js'), 'builder', '--port', '0', '--store', path.join(root.dir, 'log-store-2'), '--cache-dir', path.join(root.dir, 'builder-cache'), '--sandbox', 'off'], {
      cwd: root.dir, env: { ...process.env, BUNDLE_DISPATCH_BUILDER_TOKENS: token, BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: BIN_UIDS }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const url = await new Promise<string>((resolve, reject) => {
      child.stdout.once('data', (chunk: Buffer) => resolve(chunk.toString().split('\n')[0] as string));
      child.once('close', () => reject(new Error(`the builder stopped: ${stderr}`)));
    });
    await fetch(`${url}/v1/builds`, { method: 'POST', headers: { 'x-request-id': 'req-1' } });
    await fetch(`${url}/v1/builds/nope`, { headers: { authorization: `Bearer ${token}` } });
    child.kill('SIGTERM');
    await once(child, 'close');
    const lines = stderr.trim().split('\n');
    for (const line of lines) {
      expect(() => JSON.parse(line), line).not.toThrow();
      expect(line.match(/"reqId"/g)?.length ?? 0, line).toBeLessThanOrEqual(1);
    }
    expect(lines.filter((line) => line.includes('"reqId":"req-1"'))).toHaveLength(1);
  });
});

describe('a closed output', () => {
  it('`… | head -1`: the command stops quietly, exit 0, no EPIPE stack', async () => {
    // The reader closes its end at once, as `head -1` does after its line; --help then writes ~6 KiB.
    const result = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
      const child = spawn(process.execPath, [path.join(repoRoot, 'bin', 'bundle-dispatch.js'), '--help'], { cwd: root.dir, stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout.destroy();
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stderr }));
    });
    expect(result.stderr).not.toMatch(/EPIPE|Error|at \S+:\d+:\d+/);
    expect(result.code).toBe(0);
  });
});

describe('status <build-url> without a token', () => {
  it('says where the token comes from: no pool member for that URL, or its tokenEnv unset', async () => {
    const builder = await startTestBuilder({ uids: TEST_UID_RANGES.newcomer, slots: 1 });
    try {
      const url = `${builder.url}/v1/builds/0mxnotabuild`;
      const bare = await runCli(['status', url, '--cache-dir', path.join(root.dir, 'cache')], { cwd: root.dir });
      expect(bare.code).toBe(1);
      expect(bare.stderr).toContain(`ERR_UNAUTHORIZED: Builder ${builder.url} refused the request (401): no pool member of .bundlerc has the URL ${builder.url}, so no token was sent.`);
      expect(bare.stderr).toContain('"tokenEnv": "MY_BUILDER_TOKEN"');
      const project = path.join(root.dir, 'with-pool');
      await mkdir(project, { recursive: true });
      await writeFile(path.join(project, '.bundlerc'), JSON.stringify({ dispatch: { pools: { 'linux-x64': [{ url: builder.url, tokenEnv: 'NEWCOMER_POOL_TOKEN', publicKey: 'builder.pub.pem' }] } } }));
      const unset = await runCli(['status', url, '--cache-dir', path.join(root.dir, 'cache')], { cwd: project, env: { NEWCOMER_POOL_TOKEN: '' } });
      expect(unset.code).toBe(1);
      expect(unset.stderr).toContain('the token comes from $NEWCOMER_POOL_TOKEN (its pool member\'s tokenEnv), which is not set');
      expect(unset.stderr).toContain('Set NEWCOMER_POOL_TOKEN to one of the builder\'s tokens');
    } finally {
      await builder.stop();
    }
  });
});

describe('naming runs', () => {
  it('resolves latest, a whole id and a unique prefix; an ambiguous or unknown one is a usage error naming the candidates', async () => {
    const dir = path.join(root.dir, 'runs-only');
    await mkdir(dir, { recursive: true });
    for (const id of ['20261207T040000Z-aaaaaaaa', '20261207T041500Z-bbbbbbbb', '20261207T041510Z-cccccccc']) await writeFile(path.join(dir, `${id}.json`), '{}');
    expect(await resolveRunId(dir, 'latest')).toBe('20261207T041510Z-cccccccc');
    expect(await resolveRunId(dir, '20261207T041500Z-bbbbbbbb')).toBe('20261207T041500Z-bbbbbbbb');
    expect(await resolveRunId(dir, '20261207T0400')).toBe('20261207T040000Z-aaaaaaaa');
    await expect(resolveRunId(dir, '20261207T0415')).rejects.toMatchObject({ code: 'ERR_USAGE', message: expect.stringContaining('matches 2 runs: 20261207T041510Z-cccccccc, 20261207T041500Z-bbbbbbbb') });
    await expect(resolveRunId(dir, '2025')).rejects.toMatchObject({ code: 'ERR_USAGE', message: expect.stringContaining('No run "2025"') });
    await expect(resolveRunId(path.join(root.dir, 'no-runs'), 'latest')).rejects.toMatchObject({ code: 'ERR_USAGE', message: expect.stringContaining('No run has been recorded') });
  });

  it('status with no id shows the latest run; status, logs and cancel take a prefix or latest (the real bin, a real run of the sample)', async () => {
    const cache = path.join(root.dir, 'runs-cache');
    const empty = await runCli(['status', '--cache-dir', cache], { cwd: root.dir });
    expect(empty.code).toBe(2);
    expect(empty.stderr).toContain('No run has been recorded');
    const sample = path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz');
    const run = await runCli([sample, '--targets', `linux-${process.arch}@${process.versions.node}`, '--cache-dir', cache, '-d', path.join(root.dir, 'runs-dist'), '--json'], { cwd: root.dir });
    expect(run.code, run.stderr).toBe(0);
    const { runId } = JSON.parse(run.stdout) as { runId: string };
    const latest = await runCli(['status', '--json', '--cache-dir', cache], { cwd: root.dir });
    expect(latest.code, latest.stderr).toBe(0);
    expect(JSON.parse(latest.stdout)).toMatchObject({ runId, state: 'finished' });
    const prefix = await runCli(['status', runId.slice(0, 12), '--json', '--cache-dir', cache], { cwd: root.dir });
    expect(JSON.parse(prefix.stdout)).toMatchObject({ runId });
    const logs = await runCli(['logs', 'latest', '--cache-dir', cache], { cwd: root.dir });
    expect(logs.code, logs.stderr).toBe(0);
    expect(logs.stdout).toContain('] ');
    const cancel = await runCli(['cancel', runId.slice(0, 16), '--json', '--cache-dir', cache], { cwd: root.dir });
    expect(JSON.parse(cancel.stdout)).toMatchObject({ runId, cancelled: false });
  }, 120_000);
});

describe('configuration errors', () => {
  it('name the key, the bad value and what is expected, without listing every known key; an unknown key gets a "did you mean"', async () => {
    const project = path.join(root.dir, 'bad-config');
    await mkdir(project, { recursive: true });
    await writeFile(path.join(project, '.bundlerc'), JSON.stringify({ dispatch: { concurrency: 'four' } }));
    const run = await runCli(['status', '--cache-dir', path.join(root.dir, 'cache')], { cwd: project });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('dispatch.concurrency: "four" must be a number');
    // A number flag or variable given text: the flag is named (not "null", JSON's NaN), the variable's text shown.
    const flag = await runCli(['bundle', 'missing.tgz', '--gzip-level', 'fast', '--cache-dir', path.join(root.dir, 'cache')], { cwd: root.dir });
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain('--gzip-level: must be a number');
    const variable = await runCli(['bundle', 'missing.tgz', '--cache-dir', path.join(root.dir, 'cache')], { cwd: root.dir, env: { BUNDLE_DISPATCH_GZIP_LEVEL: 'fast' } });
    expect(variable.code).toBe(2);
    expect(variable.stderr).toContain('BUNDLE_DISPATCH_GZIP_LEVEL: "fast" must be a number');
    expect(run.stderr).not.toContain('Known keys');
    await writeFile(path.join(project, '.bundlerc'), JSON.stringify({ dispatch: { concurency: 4 } }));
    const typo = await runCli(['status', '--cache-dir', path.join(root.dir, 'cache')], { cwd: project });
    expect(typo.code).toBe(2);
    expect(typo.stderr).toContain('unknown key "dispatch.concurency" (did you mean "dispatch.concurrency"?)');
    expect(typo.stderr).not.toContain('Known keys');
  });
});
