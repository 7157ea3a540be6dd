import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BundleError, type ErrorCode } from '../../lib/errors.js';
import { DEFAULT_UNPACK_LIMITS, unpack, type UnpackLimits } from '../../lib/workflow/steps/unpack.js';
import { makeTar, packageEntries, paxRecords, streamOf, type TarEntry } from '../helpers/tar.js';

let parent: string;
let target: string;

beforeEach(async () => {
  parent = await mkdtemp(path.join(tmpdir(), 'unpack-test-'));
  target = path.join(parent, 'pkg');
  await mkdir(target);
});

afterEach(async () => {
  await rm(parent, { recursive: true, force: true });
});

async function refused(input: Buffer | Readable, code: ErrorCode, limits?: Partial<UnpackLimits>): Promise<BundleError> {
  const stream = Buffer.isBuffer(input) ? streamOf(input) : input;
  const error: unknown = await unpack(stream, target, limits ? { limits } : {}).then(
    () => new Error('unpack resolved but should have failed'),
    (rejection: unknown) => rejection,
  );
  expect(error).toBeInstanceOf(BundleError);
  expect((error as BundleError).code, (error as Error).message).toBe(code);
  // Whatever failed, nothing may appear beside the target dir.
  expect(await readdir(parent)).toEqual(['pkg']);
  return error as BundleError;
}

async function tarOf(extra: TarEntry[]): Promise<Buffer> {
  return makeTar(packageEntries(extra));
}

describe('unpack: good archives', () => {
  it('extracts an npm pack tarball, stripping package/', async () => {
    const tar = await tarOf([
      { name: 'package/index.js', content: 'module.exports = 1;\n' },
      { name: 'package/lib/deep/a.js', content: 'a' },
    ]);
    const result = await unpack(streamOf(tar), target, {});
    expect(result.packageJson).toEqual({ name: 'fixture', version: '1.0.0' });
    expect(result.entries).toBe(4);
    expect(result.bytes).toBe(20 + 1 + JSON.stringify({ name: 'fixture', version: '1.0.0' }).length);
    expect(result.lockfile).toBeUndefined();
    expect(await readFile(path.join(target, 'index.js'), 'utf8')).toBe('module.exports = 1;\n');
    expect(await readFile(path.join(target, 'lib/deep/a.js'), 'utf8')).toBe('a');
    expect((await readdir(target)).sort()).toEqual(['index.js', 'lib', 'package.json']);
  });

  it('strips whatever the first component is (other tools, ./ prefixes)', async () => {
    const tar = await makeTar([
      { name: 'my-app-1.2.3/package.json', content: '{"name":"a","version":"1.2.3"}' },
      { name: 'my-app-1.2.3/bin/cli', content: '#!/usr/bin/env node\n', mode: 0o755 },
    ]);
    expect((await unpack(streamOf(tar), target, {})).packageJson.name).toBe('a');
    expect(await readFile(path.join(target, 'bin/cli'), 'utf8')).toContain('node');

    const dotted = path.join(parent, 'dotted');
    await mkdir(dotted);
    const tar2 = await makeTar([
      { name: './', type: 'directory' },
      { name: './package.json', content: '{"name":"b","version":"1.0.0"}' },
      { name: './lib//./x.js', content: 'x' },
    ]);
    expect((await unpack(streamOf(tar2), dotted, {})).packageJson.name).toBe('b');
    expect(await readFile(path.join(dotted, 'lib/x.js'), 'utf8')).toBe('x');
  });

  it('normalizes modes (any exec bit → 0o755, else 0o644) and ignores owners and times', async () => {
    const tar = await tarOf([
      { name: 'package/exec', content: 'x', mode: 0o700, uid: 4242, gid: 4242, uname: 'evil', mtime: new Date(0) },
      { name: 'package/setuid', content: 'x', mode: 0o4711 },
      { name: 'package/private', content: 'x', mode: 0o600 },
      { name: 'package/world', content: 'x', mode: 0o666 },
      { name: 'package/none', content: 'x', mode: 0o000 },
    ]);
    await unpack(streamOf(tar), target, {});
    const mode = async (name: string): Promise<number> => (await stat(path.join(target, name))).mode & 0o7777;
    expect(await mode('exec')).toBe(0o755);
    expect(await mode('setuid')).toBe(0o755);
    expect(await mode('private')).toBe(0o644);
    expect(await mode('world')).toBe(0o644);
    expect(await mode('none')).toBe(0o644);
    const stats = await stat(path.join(target, 'exec'));
    expect(stats.uid).toBe(process.getuid?.());
    expect(stats.mtimeMs).toBeGreaterThan(Date.now() - 60_000);
  });

  it('reads pax headers (long names, global headers) and GNU long names', async () => {
    const long = `package/${'d'.repeat(120)}/${'f'.repeat(150)}.js`;
    const tar = await makeTar([
      { name: 'pax_global_header', typeflag: 'g', content: paxRecords({ comment: 'made by git archive' }) },
      ...packageEntries([
        { name: long, content: 'long' },
        { name: 'package/ünïcode-名前.js', content: 'utf8' },
        { name: '././@LongLink', typeflag: 'L', content: `package/${'g'.repeat(200)}\0` },
        { name: 'package/truncated-name', content: 'gnu' },
      ]),
    ]);
    await unpack(streamOf(tar), target, {});
    expect(await readFile(path.join(target, long.slice('package/'.length)), 'utf8')).toBe('long');
    expect(await readFile(path.join(target, 'ünïcode-名前.js'), 'utf8')).toBe('utf8');
    expect(await readFile(path.join(target, 'g'.repeat(200)), 'utf8')).toBe('gnu');
  });

  it('handles input split at every byte boundary', async () => {
    const tar = await tarOf([{ name: 'package/a.txt', content: 'abc'.repeat(300) }]);
    await unpack(streamOf(tar, 7), target, {});
    expect(await readFile(path.join(target, 'a.txt'), 'utf8')).toBe('abc'.repeat(300));
  });

  it('streams a large file intact', async () => {
    const big = Buffer.alloc(8 * 1024 * 1024 + 3);
    for (let i = 0; i < big.length; i += 4096) big[i] = i % 251;
    const tar = await tarOf([{ name: 'package/big.bin', content: big }]);
    const result = await unpack(streamOf(tar, 10_000), target, {});
    expect(result.bytes).toBeGreaterThan(big.length);
    expect((await readFile(path.join(target, 'big.bin'))).equals(big)).toBe(true);
  });

  it('keeps symlinks that stay inside and hard links to earlier files', async () => {
    const tar = await tarOf([
      { name: 'package/lib/a.js', content: 'a' },
      { name: 'package/alias.js', type: 'symlink', linkname: 'lib/a.js' },
      { name: 'package/lib/up', type: 'symlink', linkname: '../alias.js' },
      { name: 'package/hard.js', type: 'link', linkname: 'package/lib/a.js' },
    ]);
    await unpack(streamOf(tar), target, {});
    expect(await readlink(path.join(target, 'alias.js'))).toBe('lib/a.js');
    expect(await readFile(path.join(target, 'lib/up'), 'utf8')).toBe('a');
    const hard = await lstat(path.join(target, 'hard.js'));
    expect(hard.isFile()).toBe(true);
    expect(hard.ino).toBe((await lstat(path.join(target, 'lib/a.js'))).ino);
  });

  it('accepts a directory entry for a directory that deeper paths created first', async () => {
    const tar = await tarOf([
      { name: 'package/lib/a.js', content: 'a' },
      { name: 'package/lib/', type: 'directory' },
    ]);
    await unpack(streamOf(tar), target, {});
    expect(await readFile(path.join(target, 'lib/a.js'), 'utf8')).toBe('a');
  });

  it('treats contiguous files as regular files', async () => {
    const tar = await tarOf([{ name: 'package/c.txt', type: 'contiguous-file', content: 'contiguous' }]);
    await unpack(streamOf(tar), target, {});
    expect(await readFile(path.join(target, 'c.txt'), 'utf8')).toBe('contiguous');
  });

  it('detects npm-shrinkwrap.json before package-lock.json', async () => {
    const both = await tarOf([
      { name: 'package/package-lock.json', content: '{}' },
      { name: 'package/npm-shrinkwrap.json', content: '{}' },
    ]);
    expect((await unpack(streamOf(both), target, {})).lockfile).toBe('npm-shrinkwrap.json');
    const other = path.join(parent, 'other');
    await mkdir(other);
    const lockOnly = await tarOf([{ name: 'package/package-lock.json', content: '{}' }]);
    expect((await unpack(streamOf(lockOnly), other, {})).lockfile).toBe('package-lock.json');
  });

  it('accepts a package.json with a byte order mark', async () => {
    const tar = await makeTar([{ name: 'package/package.json', content: '\uFEFF{"name":"bom","version":"1.0.0"}' }]);
    expect((await unpack(streamOf(tar), target, {})).packageJson.name).toBe('bom');
  });

  it('has documented default limits', () => {
    expect(DEFAULT_UNPACK_LIMITS).toEqual({ maxBytes: 1024 ** 3, maxEntries: 100_000 });
  });
});

describe('unpack: not a tar, truncated', () => {
  it('refuses an empty input', async () => {
    const error = await refused(Buffer.alloc(0), 'ERR_INPUT_NOT_TAR');
    expect(error.message).toMatch(/empty/);
  });

  it('refuses random bytes', async () => {
    const junk = Buffer.alloc(4096);
    for (let i = 0; i < junk.length; i++) junk[i] = (i * 7919) % 256;
    await refused(junk, 'ERR_INPUT_NOT_TAR');
  });

  it('refuses a short text file', async () => {
    await refused(Buffer.from('hello, I am not a tarball\n'), 'ERR_INPUT_NOT_TAR');
  });

  it('refuses gzip data with a hint to gunzip it first', async () => {
    const error = await refused(gzipSync(await tarOf([])), 'ERR_INPUT_NOT_TAR');
    expect(error.message).toMatch(/gzip/);
  });

  it('refuses an archive whose second header is corrupt', async () => {
    const tar = await tarOf([{ name: 'package/a.js', content: 'a' }]);
    const corrupt = Buffer.from(tar);
    corrupt[512 * 3 + 10] = 0x41; // name byte of the third header: its checksum no longer matches
    const error = await refused(corrupt, 'ERR_INPUT_NOT_TAR');
    expect(error.message).toMatch(/corrupt/);
  });

  it('refuses a tar cut in the middle of file data', async () => {
    const tar = await tarOf([{ name: 'package/a.js', content: 'x'.repeat(5000) }]);
    await refused(tar.subarray(0, 512 * 4 + 100), 'ERR_INPUT_TRUNCATED');
  });

  it('refuses a tar cut in the middle of a header', async () => {
    const tar = await tarOf([{ name: 'package/a.js', content: 'a' }]);
    await refused(tar.subarray(0, 512 * 3 + 300), 'ERR_INPUT_TRUNCATED');
  });

  it('refuses a tar cut at a block boundary (no end-of-archive marker)', async () => {
    const tar = await makeTar(packageEntries([{ name: 'package/a.js', content: 'a' }]), { end: false });
    const error = await refused(tar, 'ERR_INPUT_TRUNCATED');
    expect(error.message).toMatch(/cut short/);
  });

  it('refuses a first header cut short as truncated, not "not a tar"', async () => {
    const tar = await tarOf([]);
    await refused(tar.subarray(0, 400), 'ERR_INPUT_TRUNCATED');
  });
});

describe('unpack: unsafe paths', () => {
  const cases: [string, string][] = [
    ['a parent-directory entry', '../evil.js'],
    ['.. after the top folder', 'package/../../evil.js'],
    ['.. deep inside', 'package/lib/../../../evil.js'],
    ['an absolute path', `/tmp/bundle-dispatch-evil-${process.pid}.js`],
    ['a backslash traversal', 'package\\..\\..\\evil.js'],
    ['a backslash in a component', 'package/lib\\evil.js'],
    ['a Windows drive path', 'C:\\evil.js'],
    ['a Windows drive with slashes', 'C:/evil.js'],
    ['a drive letter in a later component', 'package/D:evil.js'],
  ];
  for (const [what, name] of cases) {
    it(`refuses ${what}: ${name}`, async () => {
      const error = await refused(await tarOf([{ name, content: 'pwned' }]), 'ERR_UNSAFE_PATH');
      expect(error.message).toContain(name);
      expect(error.message).toMatch(/npm pack/);
    });
  }

  it('refuses .. hidden in a pax path record', async () => {
    const tar = await tarOf([{ name: 'package/innocent.js', content: 'pwned', pax: { path: 'package/../../evil.js' } }]);
    const error = await refused(tar, 'ERR_UNSAFE_PATH');
    expect(error.message).toContain('../../evil.js');
  });

  it('refuses .. hidden in a GNU long name', async () => {
    const tar = await tarOf([
      { name: '././@LongLink', typeflag: 'L', content: 'package/../../evil.js\0' },
      { name: 'package/innocent.js', content: 'pwned' },
    ]);
    await refused(tar, 'ERR_UNSAFE_PATH');
  });

  it('refuses a symlink to an absolute path', async () => {
    await refused(await tarOf([{ name: 'package/lib', type: 'symlink', linkname: '/tmp' }]), 'ERR_UNSAFE_PATH');
  });

  it('refuses a symlink that climbs out', async () => {
    const error = await refused(await tarOf([{ name: 'package/lib/x', type: 'symlink', linkname: '../../../etc/passwd' }]), 'ERR_UNSAFE_PATH');
    expect(error.message).toContain('../../../etc/passwd');
  });

  it('refuses a symlink to the parent of the package', async () => {
    await refused(await tarOf([{ name: 'package/up', type: 'symlink', linkname: '..' }]), 'ERR_UNSAFE_PATH');
  });

  it('refuses a symlink that escapes through another symlink (checked on the finished tree)', async () => {
    const tar = await tarOf([
      { name: 'package/d/', type: 'directory' },
      { name: 'package/d/up', type: 'symlink', linkname: '..' }, // d/.. is the root: inside
      { name: 'package/e', type: 'symlink', linkname: 'd/up/..' }, // by name "d", really the parent
    ]);
    const error = await refused(tar, 'ERR_UNSAFE_PATH');
    expect(error.message).toMatch(/"package\/e"/);
  });

  it('refuses the same escape when the inner link comes later', async () => {
    const tar = await tarOf([
      { name: 'package/e', type: 'symlink', linkname: 'd/up/../x' },
      { name: 'package/d/', type: 'directory' },
      { name: 'package/d/up', type: 'symlink', linkname: '..' },
    ]);
    await refused(tar, 'ERR_UNSAFE_PATH');
  });

  it('refuses a loop of symlinks', async () => {
    const tar = await tarOf([
      { name: 'package/a', type: 'symlink', linkname: 'b/x' },
      { name: 'package/b', type: 'symlink', linkname: 'a/y' },
    ]);
    const error = await refused(tar, 'ERR_UNSAFE_PATH');
    expect(error.message).toMatch(/loop/);
  });

  it('never writes through an extracted symlink, even one pointing inside', async () => {
    const tar = await tarOf([
      { name: 'package/lib', type: 'symlink', linkname: '.' },
      { name: 'package/lib/evil.js', content: 'pwned' },
    ]);
    const error = await refused(tar, 'ERR_UNSAFE_PATH');
    expect(error.message).toMatch(/through the symbolic link "lib"/);
    await expect(lstat(path.join(target, 'evil.js'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('never writes through a symlink that was made to leave, whatever the order', async () => {
    const tar = await tarOf([
      { name: 'package/d/', type: 'directory' },
      { name: 'package/d/up', type: 'symlink', linkname: '..' },
      { name: 'package/e', type: 'symlink', linkname: 'd/up/..' },
      { name: 'package/e/evil.js', content: 'pwned' },
    ]);
    await refused(tar, 'ERR_UNSAFE_PATH');
  });

  it('refuses a directory entry through a symlink', async () => {
    const tar = await tarOf([
      { name: 'package/lib', type: 'symlink', linkname: '.' },
      { name: 'package/lib/sub/', type: 'directory' },
    ]);
    await refused(tar, 'ERR_UNSAFE_PATH');
  });

  it('refuses a hard link to an absolute path', async () => {
    await refused(await tarOf([{ name: 'package/passwd', type: 'link', linkname: '/etc/passwd' }]), 'ERR_UNSAFE_PATH');
  });

  it('refuses a hard link that climbs out', async () => {
    await refused(await tarOf([{ name: 'package/passwd', type: 'link', linkname: 'package/../../../etc/passwd' }]), 'ERR_UNSAFE_PATH');
  });

  it('calls a hard link\'s bad target its target, not the entry\'s own path (issue 15.6)', async () => {
    for (const [linkname, why] of [['package/../../../etc/passwd', /has "\.\." in its link target "package\/\.\.\/\.\.\/\.\.\/etc\/passwd"/], ['/etc/passwd', /has the absolute link target "\/etc\/passwd"/]] as const) {
      const error = await refused(await tarOf([{ name: 'package/passwd', type: 'link', linkname }]), 'ERR_UNSAFE_PATH');
      expect(error.message).toMatch(/^Hard link "package\/passwd" → /);
      expect(error.message).toMatch(why);
      expect(error.message).not.toMatch(/Entry "package\/passwd" (contains|has the absolute path)/);
      expect(error.details).toEqual({ entry: 'package/passwd', linkname });
      await rm(target, { recursive: true, force: true });
      await mkdir(target);
    }
  });

  it('refuses a hard link to a file not extracted yet', async () => {
    const tar = await tarOf([
      { name: 'package/early.js', type: 'link', linkname: 'package/later.js' },
      { name: 'package/later.js', content: 'later' },
    ]);
    const error = await refused(tar, 'ERR_UNSAFE_PATH');
    expect(error.message).toMatch(/extracted before it/);
  });

  it('refuses a hard link to a symlink', async () => {
    const tar = await tarOf([
      { name: 'package/link', type: 'symlink', linkname: 'package.json' },
      { name: 'package/hard', type: 'link', linkname: 'package/link' },
    ]);
    await refused(tar, 'ERR_UNSAFE_PATH');
  });

  it('refuses a hard link to a directory', async () => {
    const tar = await tarOf([
      { name: 'package/dir/', type: 'directory' },
      { name: 'package/hard', type: 'link', linkname: 'package/dir' },
    ]);
    await refused(tar, 'ERR_UNSAFE_PATH');
  });

  it('refuses an absurdly deep path quickly (no quadratic directory walk)', async () => {
    const deep = `package/${'a/'.repeat(1_000_000)}x`;
    const started = Date.now();
    const error = await refused(await tarOf([{ name: 'package/x', content: 'x', pax: { path: deep } }]), 'ERR_UNSAFE_PATH');
    expect(error.message).toMatch(/longer than 4096 bytes/);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('refuses a path component longer than NAME_MAX', async () => {
    await refused(await tarOf([{ name: 'package/x', content: 'x', pax: { path: `package/${'n'.repeat(300)}` } }]), 'ERR_UNSAFE_PATH');
  });

  it('refuses a symlink target longer than PATH_MAX', async () => {
    await refused(await tarOf([{ name: 'package/l', type: 'symlink', linkname: 'x', pax: { linkpath: 'a/'.repeat(3000) } }]), 'ERR_UNSAFE_PATH');
  });

  it('refuses a NUL byte in a pax path', async () => {
    await refused(await tarOf([{ name: 'package/a.js', content: 'x', pax: { path: 'package/a.js\0/../../x' } }]), 'ERR_UNSAFE_PATH');
  });
});

describe('unpack: unsafe entries', () => {
  const types: [string, TarEntry][] = [
    ['a character device', { name: 'package/null', type: 'character-device', devmajor: 1, devminor: 3 }],
    ['a block device', { name: 'package/sda', type: 'block-device', devmajor: 8, devminor: 0 }],
    ['a FIFO', { name: 'package/pipe', type: 'fifo' }],
    ['a GNU sparse file', { name: 'package/sparse', typeflag: 'S', content: 'x' }],
    ['a GNU volume header', { name: 'volume', typeflag: 'V' }],
    ['a device as the top folder itself', { name: 'package', type: 'character-device' }],
  ];
  for (const [what, entry] of types) {
    it(`refuses ${what}`, async () => {
      const error = await refused(await tarOf([entry]), 'ERR_UNSAFE_ENTRY');
      expect(error.message).toContain(entry.name);
    });
  }

  it('refuses a file that would replace a directory', async () => {
    const tar = await tarOf([
      { name: 'package/lib/a.js', content: 'a' },
      { name: 'package/lib', content: 'not a dir' },
    ]);
    await refused(tar, 'ERR_UNSAFE_ENTRY');
  });

  it('refuses a file below a file', async () => {
    const tar = await tarOf([
      { name: 'package/lib', content: 'file' },
      { name: 'package/lib/a.js', content: 'a' },
    ]);
    await refused(tar, 'ERR_UNSAFE_ENTRY');
  });
});

describe('unpack: limits', () => {
  it('refuses a header that claims more than maxBytes before writing anything of it', async () => {
    const tar = await tarOf([{ name: 'package/bomb.bin', size: 2 ** 33, content: 'only a little' }]);
    const error = await refused(tar, 'ERR_INPUT_TOO_LARGE');
    expect(error.message).toContain('bomb.bin');
    await expect(lstat(path.join(target, 'bomb.bin'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('refuses when the sum of sizes passes maxBytes', async () => {
    const entries = Array.from({ length: 10 }, (_, i) => ({ name: `package/f${i}`, content: 'x'.repeat(1000) }));
    await refused(await tarOf(entries), 'ERR_INPUT_TOO_LARGE', { maxBytes: 5000 });
    expect((await readdir(target)).length).toBeLessThanOrEqual(6);
  });

  it('refuses more than maxEntries entries', async () => {
    const entries = Array.from({ length: 50 }, (_, i) => ({ name: `package/f${i}`, content: '' }));
    const error = await refused(await tarOf(entries), 'ERR_INPUT_TOO_LARGE', { maxEntries: 20 });
    expect(error.message).toMatch(/at least 21 entries .*over the limit of 20\b/);
    expect((await readdir(target)).length).toBeLessThanOrEqual(20);
  });

  it('counts the directories that deep paths imply (an inode bomb)', async () => {
    const deep = `package/${'d/'.repeat(30)}file`;
    const error = await refused(await tarOf([{ name: deep, content: 'x' }]), 'ERR_INPUT_TOO_LARGE', { maxEntries: 20 });
    expect(error.message).toMatch(/directories its paths imply/);
    expect(error.details).toMatchObject({ entries: 3 });
  });

  it('accepts exactly the limits', async () => {
    const tar = await makeTar([{ name: 'package/package.json', content: '{"name":"a","version":"1.0.0"}' }]);
    const result = await unpack(streamOf(tar), target, { limits: { maxBytes: 30, maxEntries: 1 } });
    expect(result).toMatchObject({ entries: 1, bytes: 30 });
  });

  it('names the real total and the limit when one entry declares exactly the limit (issue 15.6)', async () => {
    // package.json (30 bytes) + an entry of exactly maxBytes: the message used to read
    // "more than 1000 bytes (entry declares 1000)", as if 1000 were more than 1000.
    const tar = await makeTar([
      { name: 'package/package.json', content: '{"name":"a","version":"1.0.0"}' },
      { name: 'package/exact.bin', content: Buffer.alloc(1000) },
    ]);
    const error = await refused(tar, 'ERR_INPUT_TOO_LARGE', { maxBytes: 1000 });
    expect(error.message).toContain('at least 1030 bytes (entry "package/exact.bin" declares 1000), over the limit of 1000 bytes');
    expect(error.message).not.toMatch(/more than 1000/);
  });

  it('stops an endless run of empty blocks (a zero-block bomb)', async () => {
    const header = await tarOf([]);
    let sent = 0;
    const zeros = Buffer.alloc(1024 * 1024);
    const endless = new Readable({
      read() {
        sent += zeros.length;
        this.push(sent === zeros.length ? Buffer.concat([header, zeros]) : zeros);
      },
    });
    await refused(endless, 'ERR_INPUT_TOO_LARGE');
    expect(sent).toBeLessThan(64 * 1024 * 1024);
    expect(endless.destroyed).toBe(true);
  });

  it('refuses an oversized pax header', async () => {
    const tar = await tarOf([{ name: 'PaxHeader', typeflag: 'x', content: paxRecords({ comment: 'x'.repeat(5 * 1024 * 1024) }) }, { name: 'package/a', content: 'a' }]);
    await refused(tar, 'ERR_INPUT_TOO_LARGE');
  });
});

describe('unpack: package.json', () => {
  it('refuses an archive without package.json', async () => {
    const error = await refused(await makeTar([{ name: 'package/index.js', content: '' }]), 'ERR_NO_PACKAGE_JSON');
    expect(error.message).toMatch(/package\/package\.json/);
  });

  it('explains a package.json at the top level (no folder to strip)', async () => {
    const error = await refused(await makeTar([{ name: 'package.json', content: '{"name":"a","version":"1.0.0"}' }]), 'ERR_NO_PACKAGE_JSON');
    expect(error.message).toMatch(/one folder/);
  });

  it('refuses a package.json nested one level too deep', async () => {
    await refused(await makeTar([{ name: 'a/package/package.json', content: '{"name":"a","version":"1.0.0"}' }]), 'ERR_NO_PACKAGE_JSON');
  });

  const bad: [string, string][] = [
    ['invalid JSON', '{"name": "a", '],
    ['a JSON array', '["name", "version"]'],
    ['JSON null', 'null'],
    ['no name', '{"version":"1.0.0"}'],
    ['an empty name', '{"name":"","version":"1.0.0"}'],
    ['a numeric name', '{"name":42,"version":"1.0.0"}'],
    ['no version', '{"name":"a"}'],
    ['an empty version', '{"name":"a","version":"  "}'],
  ];
  for (const [what, content] of bad) {
    it(`refuses a package.json with ${what}`, async () => {
      const error = await refused(await makeTar([{ name: 'package/package.json', content }]), 'ERR_BAD_PACKAGE_JSON');
      expect(error.message).toMatch(/package\.json/);
    });
  }

  it('refuses a package.json too big to be a manifest', async () => {
    const huge = `{"name":"a","version":"1.0.0","x":"${'x'.repeat(17 * 1024 * 1024)}"}`;
    const error = await refused(await makeTar([{ name: 'package/package.json', content: huge }]), 'ERR_BAD_PACKAGE_JSON');
    expect(error.message).toMatch(/more than any real manifest/);
  });

  it('refuses a package.json that is a symlink', async () => {
    const tar = await makeTar([
      { name: 'package/real.json', content: '{"name":"a","version":"1.0.0"}' },
      { name: 'package/package.json', type: 'symlink', linkname: 'real.json' },
    ]);
    await refused(tar, 'ERR_BAD_PACKAGE_JSON');
  });

  it('refuses a package.json that is a directory', async () => {
    await refused(await makeTar([{ name: 'package/package.json/', type: 'directory' }]), 'ERR_BAD_PACKAGE_JSON');
  });
});

describe('unpack: cancellation and input errors', () => {
  it('rejects at once with an aborted signal and destroys the input', async () => {
    const input = streamOf(await tarOf([]));
    const controller = new AbortController();
    controller.abort();
    await expect(unpack(input, target, { signal: controller.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(input.destroyed).toBe(true);
  });

  it('stops mid-stream on abort and destroys the input', async () => {
    const tar = await tarOf([{ name: 'package/big', content: Buffer.alloc(100_000) }]);
    const input = new PassThrough();
    input.write(tar.subarray(0, 10_000));
    const controller = new AbortController();
    const result = unpack(input, target, { signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    await expect(result).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(input.destroyed).toBe(true);
    expect(await readdir(parent)).toEqual(['pkg']);
  });

  it('keeps a timeout reason as ERR_BUILD_TIMEOUT', async () => {
    const input = new PassThrough();
    await expect(unpack(input, target, { signal: AbortSignal.timeout(30) })).rejects.toMatchObject({ code: 'ERR_BUILD_TIMEOUT' });
    expect(input.destroyed).toBe(true);
  });

  it('passes a coded error of the input through', async () => {
    const input = new PassThrough();
    input.write((await tarOf([])).subarray(0, 700));
    setTimeout(() => input.destroy(new BundleError('ERR_INPUT_TRUNCATED', 'gzip ended early')), 20);
    const error = await refused(input, 'ERR_INPUT_TRUNCATED');
    expect(error.message).toBe('gzip ended early');
  });
});

describe('unpack: a path that occurs twice (issue 15.5)', () => {
  it('refuses two different package/package.json entries, and runs nothing of the second', async () => {
    const tar = await makeTar([
      { name: 'package/package.json', content: '{"name":"a","version":"1.0.0"}' },
      { name: 'package/package.json', content: '{"name":"a","version":"1.0.0","scripts":{"install":"touch /tmp/pwned"}}' },
    ]);
    const error = await refused(tar, 'ERR_UNSAFE_ENTRY');
    expect(error.message).toMatch(/second entry for the path "package\.json"/);
    expect(error.details).toEqual({ entry: 'package/package.json', path: 'package.json', first: 'package/package.json' });
  });

  // Every spelling that names one path after the strip, and every kind of entry.
  const pairs: [string, TarEntry, TarEntry][] = [
    ['the same file twice', { name: 'package/a.js', content: 'first' }, { name: 'package/a.js', content: 'second' }],
    ['./ and // spellings of one file', { name: 'package/lib/a.js', content: 'first' }, { name: 'package/.//lib/./a.js', content: 'second' }],
    ['one path under two top folders', { name: 'package/a.js', content: 'first' }, { name: 'other/a.js', content: 'second' }],
    ['a file, then a symlink at its path', { name: 'package/a.js', content: 'first' }, { name: 'package/a.js', type: 'symlink', linkname: 'package.json' }],
    ['a symlink, then a file at its path', { name: 'package/b.js', type: 'symlink', linkname: 'package.json' }, { name: 'package/b.js', content: 'real file now' }],
    ['a file, then a hard link at its path', { name: 'package/a.js', content: 'first' }, { name: 'package/a.js', type: 'link', linkname: 'package/package.json' }],
    ['a directory twice', { name: 'package/lib/', type: 'directory' }, { name: 'package/lib', type: 'directory' }],
    ['a directory, then a file at its path', { name: 'package/lib/', type: 'directory' }, { name: 'package/lib', content: 'not a dir' }],
  ];
  for (const [what, first, second] of pairs) {
    it(`refuses ${what}`, async () => {
      const error = await refused(await tarOf([first, second]), 'ERR_UNSAFE_ENTRY');
      expect(error.message).toContain(`"${second.name}" is a second entry for the path`);
      expect(error.details).toMatchObject({ entry: second.name, first: first.name });
    });
  }

  it('refuses the top folder twice', async () => {
    const tar = await makeTar([...packageEntries(), { name: 'package/.', type: 'directory' }]);
    const error = await refused(tar, 'ERR_UNSAFE_ENTRY');
    expect(error.details).toMatchObject({ path: 'package' });
  });
});

describe('unpack: package name and version (issue 15.4)', () => {
  const badNames = ['../../x', '..', '.', '.hidden', '_private', 'a/b', '@scope/../x', '@scope/.x', ' padded', 'padded ', 'has space', 'node_modules', 'colon:name', 'x'.repeat(215), 'back\\slash'];
  for (const name of badNames) {
    it(`refuses the name ${JSON.stringify(name.length > 40 ? `${name.slice(0, 10)}…(${name.length})` : name)} with ERR_PACKAGE_INVALID`, async () => {
      const error = await refused(await makeTar(packageEntries([], { name, version: '1.0.0' })), 'ERR_PACKAGE_INVALID');
      expect(error.details).toEqual({ field: 'name', value: name });
      expect(error.message).toContain('is not a valid npm package name');
    });
  }

  const goodNames = ['a', '@acme/app', '@acme/app.js-2_x~y', 'JSONStream', 'events', 'x'.repeat(214)];
  for (const name of goodNames) {
    it(`accepts the name ${JSON.stringify(name.length > 40 ? `${name.slice(0, 10)}…(${name.length})` : name)} (npm's rules for existing packages)`, async () => {
      const result = await unpack(streamOf(await makeTar(packageEntries([], { name, version: '1.0.0' }))), target, {});
      expect(result.packageJson.name).toBe(name);
    });
  }

  const badVersions = ['not-semver', '1', '1.0', 'v1.0.0', '=1.0.0', ' 1.0.0', '1.0.0 ', '01.0.0', '1.0.0-', 'latest', '../1.0.0'];
  for (const version of badVersions) {
    it(`refuses the version ${JSON.stringify(version)} with ERR_PACKAGE_INVALID`, async () => {
      const error = await refused(await makeTar(packageEntries([], { name: 'a', version })), 'ERR_PACKAGE_INVALID');
      expect(error.details).toEqual({ field: 'version', value: version });
    });
  }

  it('says what npm would publish a non-canonical version as', async () => {
    const error = await refused(await makeTar(packageEntries([], { name: 'a', version: 'v1.2.3' })), 'ERR_PACKAGE_INVALID');
    expect(error.message).toContain('"1.2.3"');
  });

  for (const version of ['0.0.0', '1.2.3', '1.0.0-rc.1', '1.0.0-rc.1+build.5', '2.0.0+sha.abc']) {
    it(`accepts the version ${version}`, async () => {
      expect((await unpack(streamOf(await makeTar(packageEntries([], { name: 'a', version }))), target, {})).packageJson.version).toBe(version);
    });
  }
});
