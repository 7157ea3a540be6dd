import { once } from 'node:events';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { childEnv, newToken, spawnBuilder } from '../helpers/builder.js';
import { tempDir } from '../helpers/packages.js';

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
});
