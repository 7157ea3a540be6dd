import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BundleError } from '../../lib/errors.js';
import { NPM_EPOCH, pack } from '../../lib/workflow/steps/pack.js';
import { unpack } from '../../lib/workflow/steps/unpack.js';
import { withoutRoot } from '../helpers/privileges.js';
import { listTar, readAll } from '../helpers/tar.js';

let parent: string;

beforeEach(async () => {
  parent = await mkdtemp(path.join(tmpdir(), 'pack-test-'));
});

afterEach(async () => {
  await rm(parent, { recursive: true, force: true });
});

const LONG = `${'long-directory-name-'.repeat(4)}/${'very-long-file-name-'.repeat(4)}.js`;

/** A small package tree; `order` decides the order in which files are created (readdir order differs). */
const TREE: Record<string, { content: string; mode?: number }> = {
  'package.json': { content: '{"name":"tree","version":"1.0.0"}' },
  'index.js': { content: 'module.exports = 1;\n' },
  'bin/cli.js': { content: '#!/usr/bin/env node\n', mode: 0o755 },
  'lib/a.js': { content: 'a' },
  'lib-b.js': { content: 'b' },
  'lib/z/deep.js': { content: 'deep' },
  'Upper.js': { content: 'upper' },
  'ünï.js': { content: 'unicode' },
  'node_modules/dep/package.json': { content: '{"name":"dep","version":"2.0.0"}' },
  'node_modules/dep/empty.txt': { content: '' },
  [LONG]: { content: 'long path' },
};

async function writeTree(dir: string, reverse = false): Promise<void> {
  const names = Object.keys(TREE).sort();
  if (reverse) names.reverse();
  for (const name of names) {
    const file = path.join(dir, name);
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, TREE[name]?.content ?? '');
    await chmod(file, TREE[name]?.mode ?? (reverse ? 0o600 : 0o664));
  }
}

function sha256(buffer: Buffer): string {
  return createHash('sha256').update(buffer).digest('hex');
}

describe('pack', () => {
  it('is byte-identical for identical trees at different paths, created in different orders', async () => {
    const a = path.join(parent, 'a', 'package');
    const b = path.join(parent, 'somewhere', 'much', 'deeper', 'x');
    await writeTree(a);
    await writeTree(b, true);
    const tarA = await readAll(pack(a));
    const tarB = await readAll(pack(b));
    expect(tarA.length).toBeGreaterThan(0);
    expect(sha256(tarA)).toBe(sha256(tarB));
    // And stable across runs.
    expect(sha256(await readAll(pack(a)))).toBe(sha256(tarA));
  });

  it('writes regular files only, under package/, sorted by byte order', async () => {
    const dir = path.join(parent, 'pkg');
    await writeTree(dir);
    const entries = await listTar(await readAll(pack(dir)));
    const names = entries.map((entry) => entry.header.name);
    const expected = Object.keys(TREE).map((name) => `package/${name}`).sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    expect(names).toEqual(expected);
    expect(names.indexOf('package/lib-b.js')).toBeLessThan(names.indexOf('package/lib/a.js')); // '-' < '/'
    expect(names.indexOf('package/Upper.js')).toBeLessThan(names.indexOf('package/bin/cli.js'));
    expect(entries.every((entry) => entry.header.type === 'file')).toBe(true);
    for (const entry of entries) {
      expect(entry.content.toString()).toBe(TREE[entry.header.name.slice('package/'.length)]?.content);
    }
  });

  it('fixes mtime, owners and modes', async () => {
    const dir = path.join(parent, 'pkg');
    await writeTree(dir);
    await chmod(path.join(dir, 'lib/a.js'), 0o710);
    const entries = await listTar(await readAll(pack(dir)));
    for (const { header } of entries) {
      expect(header.mtime.getTime()).toBe(NPM_EPOCH.getTime());
      expect(header.uid).toBe(0);
      expect(header.gid).toBe(0);
      expect(header.uname).toBe('');
      expect(header.gname).toBe('');
    }
    const mode = (name: string): number | undefined => entries.find((entry) => entry.header.name === `package/${name}`)?.header.mode;
    expect(mode('bin/cli.js')).toBe(0o755);
    expect(mode('lib/a.js')).toBe(0o755);
    expect(mode('index.js')).toBe(0o644);
  });

  it('uses the given mtime', async () => {
    const dir = path.join(parent, 'pkg');
    await writeTree(dir);
    const mtime = new Date('2024-02-03T04:05:06Z');
    const entries = await listTar(await readAll(pack(dir, { mtime })));
    expect(entries.map((entry) => entry.header.mtime.getTime())).toEqual(entries.map(() => mtime.getTime()));
    expect(NPM_EPOCH.toISOString()).toBe('1985-10-26T08:15:00.000Z');
  });

  it('writes long and non-ASCII paths readably and deterministically', async () => {
    const deep = `${'d'.repeat(90)}/${'e'.repeat(90)}/${'f'.repeat(120)}.js`;
    const a = path.join(parent, 'a');
    const b = path.join(parent, 'bb');
    for (const dir of [a, b]) {
      await mkdir(path.join(dir, path.dirname(deep)), { recursive: true });
      await writeFile(path.join(dir, deep), 'deep');
      await writeFile(path.join(dir, '名前.js'), 'name');
    }
    const tarA = await readAll(pack(a));
    expect(sha256(tarA)).toBe(sha256(await readAll(pack(b))));
    const names = (await listTar(tarA)).map((entry) => entry.header.name);
    expect(names).toEqual([`package/${deep}`, 'package/名前.js']);
  });

  it('skips symlinks and reports them', async () => {
    const dir = path.join(parent, 'pkg');
    await writeTree(dir);
    await mkdir(path.join(dir, 'node_modules/.bin'), { recursive: true });
    await symlink('../dep/index.js', path.join(dir, 'node_modules/.bin/dep'));
    await symlink('/etc/passwd', path.join(dir, 'passwd'));
    const skipped: [string, string][] = [];
    const entries = await listTar(await readAll(pack(dir, { onSkip: (file, reason) => skipped.push([file, reason]) })));
    expect(entries.map((entry) => entry.header.name)).not.toContain('package/passwd');
    expect(entries.some((entry) => entry.header.name.includes('.bin'))).toBe(false);
    expect(skipped.map(([file]) => file).sort()).toEqual(['node_modules/.bin/dep', 'passwd']);
    expect(skipped[0]?.[1]).toMatch(/symbolic link/);
  });

  it('applies the filter to files and whole directories', async () => {
    const dir = path.join(parent, 'pkg');
    await writeTree(dir);
    const seen: string[] = [];
    const entries = await listTar(await readAll(pack(dir, {
      filter: (file, stats) => {
        seen.push(file);
        return !(stats.isDirectory() && file === 'node_modules') && file !== 'index.js';
      },
    })));
    const names = entries.map((entry) => entry.header.name);
    expect(names).not.toContain('package/index.js');
    expect(names.some((name) => name.startsWith('package/node_modules/'))).toBe(false);
    expect(names).toContain('package/lib/a.js');
    expect(seen).not.toContain('node_modules/dep/package.json'); // not even visited
  });

  it('round-trips through unpack', async () => {
    const dir = path.join(parent, 'pkg');
    await writeTree(dir);
    const out = path.join(parent, 'out');
    const result = await unpack(pack(dir), out, {});
    expect(result.packageJson).toEqual({ name: 'tree', version: '1.0.0' });
    expect(result.entries).toBe(Object.keys(TREE).length);
    for (const [name, { content }] of Object.entries(TREE)) {
      expect(await readFile(path.join(out, name), 'utf8')).toBe(content);
    }
    // Packing the unpacked copy gives the same bytes again.
    expect(sha256(await readAll(pack(out)))).toBe(sha256(await readAll(pack(dir))));
  });

  it('packs a tree of 5,000 files', async () => {
    const dir = path.join(parent, 'big');
    for (let d = 0; d < 50; d++) {
      await mkdir(path.join(dir, 'node_modules', `pkg-${d}`, 'lib'), { recursive: true });
      await Promise.all(Array.from({ length: 100 }, (_, f) =>
        writeFile(path.join(dir, 'node_modules', `pkg-${d}`, 'lib', `file-${f}.js`), `// ${d}/${f}\n`.repeat(f + 1))));
    }
    await writeFile(path.join(dir, 'package.json'), '{"name":"big","version":"1.0.0"}');
    await writeFile(path.join(dir, 'huge.bin'), Buffer.alloc(5 * 1024 * 1024, 3));
    const entries = await listTar(await readAll(pack(dir)));
    expect(entries.length).toBe(5002);
    const sample = entries.find((entry) => entry.header.name === 'package/node_modules/pkg-7/lib/file-42.js');
    expect(sample?.content.toString()).toBe('// 7/42\n'.repeat(43));
    expect(entries.find((entry) => entry.header.name === 'package/huge.bin')?.content.equals(Buffer.alloc(5 * 1024 * 1024, 3))).toBe(true);
    const names = entries.map((entry) => entry.header.name);
    expect(names).toEqual([...names].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y))));
  });

  it('reads lazily: an unread stream holds at most a little of the tree', async () => {
    const dir = path.join(parent, 'pkg');
    await mkdir(dir);
    await writeFile(path.join(dir, 'a.bin'), Buffer.alloc(20 * 1024 * 1024, 1));
    const stream = pack(dir);
    stream.pause();
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(stream.readableLength).toBeLessThan(1024 * 1024);
    const tar = await readAll(stream);
    expect(tar.length).toBe(512 + 20 * 1024 * 1024 + 1024);
  });

  it.skipIf(!existsSync('/proc/self/fd'))('closes its files when the consumer stops reading', async () => {
    const dir = path.join(parent, 'pkg');
    await mkdir(dir);
    await writeFile(path.join(dir, 'a-large.bin'), Buffer.alloc(4 * 1024 * 1024, 1));
    await writeFile(path.join(dir, 'b.txt'), 'b');
    const before = (await readdir('/proc/self/fd')).length;
    const stream = pack(dir);
    for await (const _chunk of stream) break; // destroys the stream
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(stream.destroyed).toBe(true);
    expect((await readdir('/proc/self/fd')).length).toBe(before);
  });

  it('tells its progress at most once per interval: files and bytes so far, of the total', async () => {
    const dir = path.join(parent, 'progress');
    await writeTree(dir);
    const told: Array<{ files: number; bytes: number; totalFiles: number }> = [];
    const tar = await readAll(pack(dir, { progressIntervalMs: 0, onProgress: (progress) => told.push(progress) }));
    const total = Object.keys(TREE).length;
    expect(told.map((progress) => progress.files)).toEqual(Array.from({ length: total }, (_, index) => index + 1));
    expect(told.every((progress) => progress.totalFiles === total)).toBe(true);
    expect(told.at(-1)?.bytes).toBe(Object.values(TREE).reduce((sum, file) => sum + Buffer.byteLength(file.content), 0));
    // The default interval (a second) never fires on a pack this short, and the tar is the same.
    const quiet: unknown[] = [];
    expect(sha256(await readAll(pack(dir, { onProgress: (progress) => quiet.push(progress) })))).toBe(sha256(tar));
    expect(quiet).toEqual([]);
  });

  it('ends with ERR_PACK_FAILED when the directory does not exist', async () => {
    const error: unknown = await readAll(pack(path.join(parent, 'missing'))).catch((rejection: unknown) => rejection);
    expect(error).toBeInstanceOf(BundleError);
    expect((error as BundleError).code).toBe('ERR_PACK_FAILED');
  });

  it('ends with ERR_PACK_FAILED when a file vanishes before it is read', async () => {
    const dir = path.join(parent, 'pkg');
    await writeTree(dir);
    const error: unknown = await readAll(pack(dir, {
      filter: (file) => {
        if (file === 'package.json') void unlink(path.join(dir, 'index.js'));
        return true;
      },
    })).catch((rejection: unknown) => rejection);
    expect(error).toBeInstanceOf(BundleError);
    expect((error as BundleError).code).toBe('ERR_PACK_FAILED');
    expect((error as BundleError).message).toContain('index.js');
  });

  it('ends with ERR_PACK_FAILED for an unreadable file', async () => {
    const dir = path.join(parent, 'pkg');
    await writeTree(dir);
    await chmod(path.join(dir, 'lib/a.js'), 0o000);
    const error: unknown = await withoutRoot(() => readAll(pack(dir)).catch((rejection: unknown) => rejection), [parent]);
    expect((error as BundleError).code).toBe('ERR_PACK_FAILED');
    expect((error as BundleError).message).toContain('a.js');
  });

  it('ends with ERR_ABORTED when the signal aborts', async () => {
    const dir = path.join(parent, 'pkg');
    await mkdir(dir);
    await writeFile(path.join(dir, 'a.bin'), Buffer.alloc(10 * 1024 * 1024));
    const controller = new AbortController();
    const stream = pack(dir, { signal: controller.signal });
    let received = 0;
    const error: unknown = await (async () => {
      for await (const chunk of stream) {
        received += (chunk as Buffer).length;
        if (received > 100_000) controller.abort();
      }
    })().catch((rejection: unknown) => rejection);
    expect((error as BundleError).code).toBe('ERR_ABORTED');
    expect(received).toBeLessThan(10 * 1024 * 1024);
  });

  it('does not crash the process when it fails before anyone reads', async () => {
    const stream = pack(path.join(parent, 'missing'));
    await new Promise((resolve) => setTimeout(resolve, 100)); // the walk has failed by now
    const error: unknown = await readAll(stream).catch((rejection: unknown) => rejection);
    expect((error as BundleError).code).toBe('ERR_PACK_FAILED');
  });

  it('ends with ERR_ABORTED for an already aborted signal', async () => {
    const dir = path.join(parent, 'pkg');
    await writeTree(dir);
    const error: unknown = await readAll(pack(dir, { signal: AbortSignal.abort() })).catch((rejection: unknown) => rejection);
    expect((error as BundleError).code).toBe('ERR_ABORTED');
  });
});
