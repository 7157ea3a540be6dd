/**
 * Two builders on one machine must not share build uids: each kills the processes of its range
 * when it starts (orphans of a crashed run), so the second would kill the first one's builds.
 * The real bin, as root (the only case with build uids).
 */
import { chmod, mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultClaimsDir } from '../../lib/builder/resources.js';
import { TEST_UID_RANGES, childEnv, isRoot, killChildBuilders, newToken, spawnBuilder, type ChildBuilder } from '../helpers/builder.js';
import { runCli } from '../helpers/cli.js';
import { tempDir, testCacheDir } from '../helpers/packages.js';

const { first, last } = TEST_UID_RANGES.claims;
let root: { dir: string; remove: () => Promise<void> };
const children: ChildBuilder[] = [];
beforeAll(async () => {
  root = await tempDir('bd-uid-claims-');
  // Build users pass through to the work dirs under it.
  await chmod(root.dir, 0o711);
});
afterAll(async () => {
  await killChildBuilders(children);
  await root?.remove();
});

const env = (name: string, range: string) => childEnv({
  BUNDLE_DISPATCH_BUILDER_TOKENS: newToken(),
  BUNDLE_DISPATCH_BUILDER_ID: name,
  BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, name),
  BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: range,
});
const args = (name: string) => ['builder', '--port', '0', '--store', path.join(root.dir, `${name}-store`), '--cache-dir', testCacheDir];

describe.runIf(isRoot)('build uids on one machine', () => {
  it('a second builder whose uids overlap a live one\'s refuses to start (exit 2, naming it); once the first stops it starts; a dead builder\'s claim is cleared', async () => {
    const a = await spawnBuilder(args('claims-a').slice(3), env('claims-a', `${first}-${last}`));
    children.push(a);
    const overlapping = await runCli(args('claims-b'), { cwd: root.dir, env: env('claims-b', `${last}-${last + 10}`) });
    expect(overlapping.code).toBe(2);
    expect(overlapping.stderr).toContain(`ERR_CONFIG: builder.runAsUids ${last}-${last + 10} overlaps ${first}-${last}, the build uids of the builder claims-a (pid ${a.child.pid}`);
    expect(overlapping.stderr).toContain('Give each builder on this machine its own range');

    a.child.kill('SIGTERM');
    expect((await a.exited).code).toBe(0);
    expect((await readdir(defaultClaimsDir())).filter((name) => name === `${a.child.pid}.json`)).toEqual([]);

    // A claim left by a builder that is gone (SIGKILLed): cleared, not an obstacle.
    await mkdir(defaultClaimsDir(), { recursive: true });
    const stale = path.join(defaultClaimsDir(), '4194000.json');
    await writeFile(stale, JSON.stringify({ pid: 4194000, first, last, builder: 'long-gone', since: '2026-01-01T00:00:00Z' }));
    const b = await spawnBuilder(args('claims-b').slice(3), env('claims-b', `${first}-${last}`));
    children.push(b);
    expect(await readdir(defaultClaimsDir())).not.toContain('4194000.json');
    b.child.kill('SIGTERM');
    expect((await b.exited).code).toBe(0);
  }, 60_000);
});
