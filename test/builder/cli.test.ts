import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { childEnv } from '../helpers/builder.js';
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
});
