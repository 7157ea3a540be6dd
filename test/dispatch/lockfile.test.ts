/**
 * A shipped lockfile's `npm ci --dry-run` check, remembered per input and npm version.
 */
import { mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isBundleError } from '../../lib/errors.js';
import { prepareInput, type ToolEnvironment } from '../../lib/dispatch/input.js';
import { ensureLockfile } from '../../lib/dispatch/lockfile.js';
import { locateNpm } from '../../lib/workflow/npm.js';
import { writeFixture } from '../helpers/dispatch.js';
import { tempDir, testCacheDir } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-lockfile-');
});
afterAll(async () => {
  await root.remove();
});

function tools(node = process.execPath): ToolEnvironment {
  return {
    node,
    npmCli: locateNpm(process.env.PATH),
    env: { PATH: process.env.PATH ?? '', HOME: root.dir, npm_config_cache: path.join(testCacheDir, 'npm'), npm_config_update_notifier: 'false' },
    secrets: [],
  };
}

let runs = 0;
async function prepared(tarball: string) {
  const workDir = path.join(root.dir, 'work', String(runs++));
  await mkdir(workDir, { recursive: true });
  return { input: await prepareInput(tarball, { cwd: root.dir, workDir, tools: tools() }), workDir };
}

const IN_SYNC = JSON.stringify({ name: 'pinned', version: '1.0.0', lockfileVersion: 3, requires: true, packages: { '': { name: 'pinned', version: '1.0.0', dependencies: { ms: '2.1.3' } }, 'node_modules/ms': { version: '2.1.3', resolved: 'https://registry.npmjs.org/ms/-/ms-2.1.3.tgz', integrity: 'sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA==' } } });

describe('a shipped lockfile, checked once', () => {
  it('a tarball npm found in sync is not checked again by that npm: no npm start-up', async () => {
    const tarball = await writeFixture(path.join(root.dir, 'pinned-1.0.0.tgz'), { name: 'pinned', version: '1.0.0', dependencies: { ms: '2.1.3' } }, { 'npm-shrinkwrap.json': IN_SYNC });
    const checkedDir = path.join(root.dir, 'checked');
    const first = await prepared(tarball);
    const source = await ensureLockfile(first.input, { tools: tools(), workDir: first.workDir, checkedDir });
    expect(source.lockfile).toMatchObject({ name: 'npm-shrinkwrap.json', added: false });
    expect(await readdir(checkedDir)).toHaveLength(1);
    // A node that does not exist: the check would fail if npm were started.
    const again = await prepared(tarball);
    expect(await ensureLockfile(again.input, { tools: tools(path.join(root.dir, 'no-such-node')), workDir: again.workDir, checkedDir })).toEqual(source);
    // Without checkedDir npm is asked (and fails to start here).
    await expect(ensureLockfile(again.input, { tools: tools(path.join(root.dir, 'no-such-node')), workDir: again.workDir })).rejects.toThrow();
  });

  it('a lockfile out of sync fails every time and is never remembered', async () => {
    const tarball = await writeFixture(path.join(root.dir, 'stale-1.0.0.tgz'), { name: 'stale', version: '1.0.0', dependencies: { ms: '2.1.3', kleur: '4.1.5' } }, { 'npm-shrinkwrap.json': IN_SYNC.replaceAll('pinned', 'stale') });
    const checkedDir = path.join(root.dir, 'checked-stale');
    for (let round = 0; round < 2; round += 1) {
      const { input, workDir } = await prepared(tarball);
      const error = await ensureLockfile(input, { tools: tools(), workDir, checkedDir }).then(() => undefined, (failure: unknown) => failure);
      expect(isBundleError(error) ? error.code : error).toBe('ERR_LOCKFILE_OUT_OF_SYNC');
    }
    expect(await readdir(checkedDir).catch(() => [])).toEqual([]);
  });
});
