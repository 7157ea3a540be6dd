import { once } from 'node:events';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { chmod, mkdir, readFile, stat } from 'node:fs/promises';
import { createBuilderClient } from '../../lib/builder/client.js';
import { SYSTEM_DIRS } from '../../lib/config/load.js';
import type { BuildRecord } from '../../lib/protocol.js';
import { TEST_UID_RANGES, childEnv, hostTargetSpec, isRoot, newToken, spawnBuilder, startSourceServer, tgz } from '../helpers/builder.js';
import { packageTar, tempDir } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-builder-cli-');
});
afterAll(async () => {
  await root?.remove();
});

describe('bundle-dispatch builder (CLI)', () => {
  it('refuses to start without a token, with a bad target or a bad port (exit 2, coded message)', async () => {
    const base = ['builder', '--port', '0', '--store', path.join(root.dir, 'store')];
    const env = childEnv({ BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') });
    const noToken = await runCli(base, { cwd: root.dir, env });
    expect(noToken.code).toBe(2);
    expect(noToken.stderr).toContain('ERR_CONFIG');
    expect(noToken.stderr).toContain('BUNDLE_DISPATCH_BUILDER_TOKENS');
    expect(noToken.stdout).toBe('');
    const withToken = { ...env, BUNDLE_DISPATCH_BUILDER_TOKENS: 'a-long-enough-test-token' };
    const badTarget = await runCli([...base, '--targets', 'linux-sparc'], { cwd: root.dir, env: withToken });
    expect(badTarget.code).toBe(2);
    expect(badTarget.stderr).toContain('Unknown cpu "sparc"');
    const badPort = await runCli(['builder', '--port', '70000'], { cwd: root.dir, env: withToken });
    expect(badPort.code).toBe(2);
    expect(badPort.stderr).toContain('must be a port number');
    const shortToken = await runCli(base, { cwd: root.dir, env: { ...env, BUNDLE_DISPATCH_BUILDER_TOKENS: 'short' } });
    expect(shortToken.code).toBe(2);
    expect(shortToken.stderr).toContain('shorter than 16');
    expect(shortToken.stderr).not.toContain('short\n');
  });

  it('logs its start at info, and nothing at --log-level warn', async () => {
    const env = childEnv({ BUNDLE_DISPATCH_BUILDER_TOKENS: newToken(), BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: 'off', BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work-levels') });
    const stderrAt = async (level: string[]) => {
      const builder = await spawnBuilder(['--store', path.join(root.dir, 'store-levels'), ...level], env);
      const closed = once(builder.child, 'close'); // stdio drained, not only exited
      builder.child.kill('SIGTERM');
      const exited = await builder.exited;
      expect(exited.code).toBe(0);
      await closed;
      return builder.stderr().split('\n').filter(Boolean).map((line) => JSON.parse(line) as { level: number; msg: string });
    };
    const info = await stderrAt([]);
    expect(info.some((line) => line.level === 30 && line.msg.startsWith('serving '))).toBe(true);
    const quiet = await stderrAt(['--log-level', 'warn']);
    expect(quiet.filter((line) => line.level < 40)).toEqual([]);
  });

  it('takes --targets comma-separated and repeated (as dispatch does) and --id; an unknown route answers 401, then 404 with the JSON error', async () => {
    const token = newToken();
    const env = childEnv({ BUNDLE_DISPATCH_BUILDER_TOKENS: token, BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: 'off', BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work-flags') });
    const builder = await spawnBuilder(['--store', path.join(root.dir, 'store-flags'), '-t', 'linux-x64,linux-arm64', '--targets', 'darwin-arm64', '--id', 'flags-test-1'], env);
    try {
      const health = await (await fetch(`${builder.url}/v1/health`)).json() as { builder: string; targets: string[] };
      expect(health.builder).toBe('flags-test-1');
      expect(health.targets).toEqual(['linux-x64', 'linux-arm64', 'darwin-arm64']);
      const anonymous = await fetch(`${builder.url}/v1/nope`);
      expect(anonymous.status).toBe(401);
      const unknown = await fetch(`${builder.url}/v1/nope?x=1`, { headers: { authorization: `Bearer ${token}` } });
      expect(unknown.status).toBe(404);
      expect(await unknown.json()).toEqual({ error: { code: 'ERR_REQUEST_INVALID', message: 'No route GET /v1/nope.' } });
      const wrongMethod = await fetch(`${builder.url}/v1/health`, { method: 'PUT', headers: { authorization: `Bearer ${token}` } });
      expect(wrongMethod.status).toBe(404);
      expect(await wrongMethod.json()).toEqual({ error: { code: 'ERR_REQUEST_INVALID', message: 'No route PUT /v1/health.' } });
    } finally {
      builder.child.kill('SIGTERM');
      await builder.exited;
    }
  });

  // As root (a container's user) with only a token: the defaults are the system's directories,
  // which the build users can pass through, not root's 0700 home. Leaves its npm cache and store
  // in /var/cache/bundle-dispatch and /var/lib/bundle-dispatch, as a real builder would.
  it.skipIf(!isRoot)('as root with only a token set, starts on /var/cache, /var/tmp and /var/lib defaults and builds', async () => {
    const home = path.join(root.dir, 'root-home');
    await mkdir(home, { recursive: true });
    await chmod(home, 0o700);
    const sources = await startSourceServer();
    const token = newToken();
    // Besides the token: HOME is a 0700 directory (like /root), and the uid range is this test
    // file's own so its start-up sweep of leftover build processes cannot touch other tests'.
    const env = childEnv({ HOME: home, BUNDLE_DISPATCH_BUILDER_TOKENS: token, BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: `${TEST_UID_RANGES.rootDefaults.first}-${TEST_UID_RANGES.rootDefaults.last}` });
    for (const name of Object.keys(env)) if (/^(XDG_|BUNDLE_DISPATCH_(CACHE|WORK)_DIR$|BUNDLE_DISPATCH_BUILDER_STORE$)/.test(name)) delete env[name];
    const builder = await spawnBuilder([], env);
    try {
      const client = createBuilderClient({ url: builder.url, token });
      const source = await tgz(packageTar({ name: 'root-defaults', version: '1.0.0' }, { 'index.js': 'module.exports = 1;\n' }));
      const { id } = await client.createBuild({ source: { url: sources.add('root-defaults.tgz', source.body), sha256: source.sha256 }, target: hostTargetSpec() }, { idempotencyKey: `root-defaults-${Date.now()}` });
      const record = await client.followBuild(id);
      expect(record.state, JSON.stringify(record.error)).toBe('succeeded');
      const stored = JSON.parse(await readFile(path.join(SYSTEM_DIRS.store, 'builder', 'builds', id, 'record.json'), 'utf8')) as BuildRecord;
      expect(stored.state).toBe('succeeded');
      for (const dir of [SYSTEM_DIRS.cacheDir, SYSTEM_DIRS.workDir]) expect((await stat(dir)).mode & 0o005).toBe(0o005);
    } finally {
      builder.child.kill('SIGTERM');
      await builder.exited;
      await sources.stop();
    }
  }, 120_000);
});
