import { mkdtemp, open, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirStore } from '../../lib/storage/index.js';
import { describeStoreContract, expectCode, sha256 } from './contract.js';

const roots: string[] = [];
async function tempRoot(): Promise<string> {
  const root = await mkdtemp(path.join(tmpdir(), 'bd-dir-store-'));
  roots.push(root);
  return root;
}
afterAll(async () => {
  await Promise.all(roots.map((root) => rm(root, { recursive: true, force: true })));
});

describeStoreContract('directory', async () => {
  const root = await tempRoot();
  const store = new DirStore({ root, prefix: 'one' });
  const other = new DirStore({ root, prefix: 'two' });
  return {
    store,
    other,
    async corrupt(key) {
      const file = path.join(store.root, ...key.split('/'));
      const before = await stat(file);
      const handle = await open(file, 'r+');
      await handle.write(Buffer.alloc(before.size, 'x'), 0, before.size, 0);
      await handle.close();
      await utimes(file, before.atime, before.mtime);
    },
    cleanup: async () => undefined,
  };
});

describe('DirStore specifics', () => {
  let root: string;
  let store: DirStore;
  beforeAll(async () => {
    root = await tempRoot();
    store = new DirStore({ root });
  });

  it('keeps objects as plain files at their key, and leaves no temp files', async () => {
    await store.put('pkg/1.0.0/pkg.tgz', 'tarball');
    expect((await stat(path.join(root, 'pkg', '1.0.0', 'pkg.tgz'))).size).toBe(7);
    expect(await readdir(path.join(root, '.bundle-dispatch', 'tmp'))).toEqual([]);
    expect(store.location).toBe(`file://${root}/`);
  });

  it('reports files put there by hand without a sha256, and refuses to verify them', async () => {
    await writeFile(path.join(root, 'manual.txt'), 'by hand');
    const info = await store.head('manual.txt');
    expect(info.size).toBe(7);
    expect(info.sha256).toBeUndefined();
    await expectCode(store.get('manual.txt', { verify: true }), 'ERR_INTEGRITY');
    const { body } = await store.get('manual.txt', { verify: true, sha256: sha256('by hand') });
    for await (const _chunk of body);
  });

  it('removes metadata and empty directories on delete', async () => {
    await store.put('gone/deep/file', 'x');
    await store.delete('gone/deep/file');
    await expect(stat(path.join(root, 'gone'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await store.exists('gone/deep/file')).toBe(false);
    const metas = await readdir(path.join(root, '.bundle-dispatch', 'meta'));
    const live = (await store.list()).items.filter((item) => item.sha256 !== undefined).length;
    expect(metas.length).toBe(live);
  });

  it('refuses a key that would turn a file into a directory', async () => {
    await store.put('clash', 'file');
    await expectCode(store.put('clash/inner', 'x'), 'ERR_STORE_KEY');
  });

  it('hands out file: URLs for GET and refuses presigned PUT', async () => {
    await store.put('url/file.txt', 'data');
    const { url } = await store.presignGet('url/file.txt');
    expect(url).toBe(`file://${root}/url/file.txt`);
    await expectCode(store.presignPut('url/file.txt'), 'ERR_STORE_URL');
  });

  it('needs an absolute root', () => {
    expect(() => new DirStore({ root: 'relative/dir' })).toThrow(/absolute/);
  });
});
