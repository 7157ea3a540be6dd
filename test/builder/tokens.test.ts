import { chmod, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_UID_RANGES, childEnv, newToken, spawnBuilder, waitFor, type ChildBuilder } from '../helpers/builder.js';
import { tempDir, testCacheDir } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
let child: ChildBuilder | undefined;
let tokenFile: string;
const [first, second, third] = [newToken(), newToken(), newToken()];

beforeAll(async () => {
  root = await tempDir('bd-tokens-');
  // Build users pass through to their work dirs.
  await chmod(root.dir, 0o711);
  await mkdir(path.join(root.dir, 'work'), { recursive: true });
  tokenFile = path.join(root.dir, 'tokens');
  await writeFile(tokenFile, `# the CI's token\n${first}\n`, { mode: 0o600 });
  child = await spawnBuilder(['--store', path.join(root.dir, 'store'), '--cache-dir', testCacheDir, '--token-file', tokenFile], childEnv({
    BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work'),
    BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: `${TEST_UID_RANGES.tokens.first}-${TEST_UID_RANGES.tokens.last}`,
  }));
});
afterAll(async () => {
  if (child && child.child.exitCode === null && child.child.signalCode === null) {
    child.child.kill('SIGTERM');
    await child.exited;
  }
  await root?.remove();
});

const status = async (token: string) => (await fetch(`${child?.url}/v1/builds`, { headers: { authorization: `Bearer ${token}` } })).status;
const reloads = () => (child?.stderr() ?? '').split('\n').filter((line) => line.includes('builder.tokenFile re-read')).length;

describe('token rotation (the real bin, builder.tokenFile re-read without a restart)', () => {
  it('takes a new token file within seconds: the old token is refused, the new one accepted', async () => {
    expect(await status(first)).toBe(200);
    expect(await status(second)).toBe(401);
    await writeFile(tokenFile, `${second}\n`);
    await waitFor(async () => ((await status(second)) === 200 ? true : undefined), 15_000, 200);
    expect(await status(first)).toBe(401);
    expect(reloads()).toBe(1);
  });

  it('keeps the tokens in use when the new file is bad (a short token), and says so', async () => {
    await writeFile(tokenFile, 'short\n');
    await waitFor(async () => (child?.stderr().includes('builder.tokenFile not re-read') ? true : undefined), 15_000, 200);
    expect(child?.stderr()).toMatch(/shorter than 16 characters.*Keeping the tokens in use/);
    expect(await status(second)).toBe(200);
  });

  it('re-reads on SIGHUP (and SIGHUP does not stop it); no token ever reaches its log', async () => {
    await writeFile(tokenFile, `${third}\n`);
    await waitFor(async () => ((await status(third)) === 200 ? true : undefined), 15_000, 200);
    const before = reloads();
    child?.child.kill('SIGHUP');
    // Nothing changed since: only the signal explains a new re-read line.
    await waitFor(async () => (reloads() > before ? true : undefined), 15_000, 100);
    expect(child?.child.exitCode).toBe(null);
    expect(await status(third)).toBe(200);
    for (const token of [first, second, third]) expect(child?.stderr()).not.toContain(token);
  });
});
