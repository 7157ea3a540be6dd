import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listAllPackages, packagesWithInstallWork } from '../../lib/workflow/steps/bundle.js';
import { tempDir } from '../helpers/packages.js';

describe('the bundle step\'s view of an installed tree', () => {
  let root: { dir: string; remove: () => Promise<void> };
  const install = async (relative: string, json: object) => {
    await mkdir(path.join(root.dir, relative), { recursive: true });
    await writeFile(path.join(root.dir, relative, 'package.json'), JSON.stringify(json));
  };
  beforeAll(async () => {
    root = await tempDir();
    await writeFile(path.join(root.dir, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0' }));
    await install('node_modules/a', { name: 'a' });
    await install('node_modules/a/node_modules/c', { name: 'c', scripts: { postinstall: 'node x.js' } });
    await install('node_modules/a/node_modules/c/node_modules/d', { name: 'd', gypfile: true });
    await writeFile(path.join(root.dir, 'node_modules/a/node_modules/c/node_modules/d/binding.gyp'), '{}');
    await install('node_modules/@s/b', { name: '@s/b' });
    await install('node_modules/@s/b/node_modules/e', { name: 'e' });
    await mkdir(path.join(root.dir, 'node_modules/.bin'), { recursive: true });
  });
  afterAll(() => root.remove());

  it('lists every package breadth first, each depth in name order (scopes whole), dot-directories left out', async () => {
    const all = await listAllPackages(root.dir);
    expect(all.map((pkg) => pkg.name)).toEqual(['@s/b', 'a', 'e', 'c', 'd']);
    expect(all.map((pkg) => path.relative(root.dir, pkg.dir))).toEqual([
      'node_modules/@s/b', 'node_modules/a', 'node_modules/@s/b/node_modules/e', 'node_modules/a/node_modules/c', 'node_modules/a/node_modules/c/node_modules/d',
    ]);
  });

  it('finds the packages with install work at any depth: a script, or a binding.gyp node-gyp would build', async () => {
    expect(await packagesWithInstallWork(root.dir)).toEqual(['c', 'd']);
  });
});
