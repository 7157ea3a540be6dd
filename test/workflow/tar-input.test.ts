import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BundleError } from '../../lib/errors.js';
import { unpack } from '../../lib/workflow/steps/unpack.js';
import { maybeGunzip, openInput } from '../../lib/workflow/tar-input.js';
import { withoutRoot } from '../helpers/privileges.js';
import { makeTar, makeTgz, packageEntries, readAll, streamOf } from '../helpers/tar.js';

let parent: string;

beforeEach(async () => {
  parent = await mkdtemp(path.join(tmpdir(), 'tar-input-test-'));
});

afterEach(async () => {
  await rm(parent, { recursive: true, force: true });
});

async function failure(stream: Readable): Promise<BundleError> {
  const error: unknown = await readAll(stream).then(() => new Error('the stream ended without error'), (rejection: unknown) => rejection);
  expect(error).toBeInstanceOf(BundleError);
  return error as BundleError;
}

describe('maybeGunzip', () => {
  it('gunzips gzip input', async () => {
    const tar = await makeTar(packageEntries());
    const out = await readAll(maybeGunzip(streamOf(gzipSync(tar), 1000)));
    expect(out.equals(tar)).toBe(true);
  });

  it('passes plain bytes through unchanged', async () => {
    const tar = await makeTar(packageEntries([{ name: 'package/a', content: 'a'.repeat(100_000) }]));
    const out = await readAll(maybeGunzip(streamOf(tar, 1)));
    expect(out.equals(tar)).toBe(true);
  });

  it('sniffs the magic even when it arrives one byte at a time', async () => {
    const tar = await makeTar(packageEntries());
    const out = await readAll(maybeGunzip(streamOf(gzipSync(tar), 1)));
    expect(out.equals(tar)).toBe(true);
  });

  it('gives an empty stream for empty input, and one byte for one byte', async () => {
    expect((await readAll(maybeGunzip(streamOf(Buffer.alloc(0))))).length).toBe(0);
    expect((await readAll(maybeGunzip(streamOf(Buffer.from([0x1f]))))).equals(Buffer.from([0x1f]))).toBe(true);
  });

  it('maps garbage after the gzip magic to ERR_INPUT_NOT_TAR', async () => {
    const garbage = Buffer.concat([Buffer.from([0x1f, 0x8b]), Buffer.from('this is not deflate data at all, just text '.repeat(20))]);
    const error = await failure(maybeGunzip(streamOf(garbage)));
    expect(error.code).toBe('ERR_INPUT_NOT_TAR');
    expect(error.message).toMatch(/not a gzip file/);
  });

  it('maps a cut gzip stream to ERR_INPUT_TRUNCATED', async () => {
    const gz = gzipSync(await makeTar(packageEntries([{ name: 'package/a', content: Buffer.alloc(50_000, 7) }])));
    const error = await failure(maybeGunzip(streamOf(gz.subarray(0, gz.length - 30))));
    expect(error.code).toBe('ERR_INPUT_TRUNCATED');
    expect(error.message).toMatch(/cut short/);
  });

  it('passes the input\'s own errors through', async () => {
    const input = new PassThrough();
    const out = maybeGunzip(input);
    setTimeout(() => input.destroy(new BundleError('ERR_SOURCE_FETCH', 'download failed')), 10);
    const error = await failure(out);
    expect(error.code).toBe('ERR_SOURCE_FETCH');
  });

  it('destroys the input when the output is destroyed', async () => {
    const input = new PassThrough();
    const out = maybeGunzip(input);
    input.write(gzipSync(Buffer.alloc(1000)));
    out.destroy();
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(input.destroyed).toBe(true);
  });

  it('destroys the input when the output is destroyed before the first bytes', async () => {
    const input = new PassThrough();
    maybeGunzip(input).destroy();
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(input.destroyed).toBe(true);
  });

  it('inflates a gzip bomb only as fast as it is read', async () => {
    const bomb = gzipSync(Buffer.alloc(64 * 1024 * 1024));
    const out = maybeGunzip(streamOf(bomb));
    await new Promise((resolve) => setTimeout(resolve, 100));
    // Nobody read: only a few buffers' worth may be inflated, not 64 MiB.
    expect(out.readableLength).toBeLessThan(1024 * 1024);
    out.destroy();
  });
});

describe('openInput', () => {
  it('opens a .tgz as its tar and unpack reads it', async () => {
    const file = path.join(parent, 'app-1.0.0.tgz');
    await writeFile(file, await makeTgz(packageEntries([{ name: 'package/index.js', content: 'ok' }], { name: 'app', version: '1.0.0' })));
    const dir = path.join(parent, 'out');
    const result = await unpack(openInput(file), dir, {});
    expect(result.packageJson).toEqual({ name: 'app', version: '1.0.0' });
  });

  it('opens a plain .tar', async () => {
    const tar = await makeTar(packageEntries());
    const file = path.join(parent, 'app.tar');
    await writeFile(file, tar);
    expect((await readAll(openInput(file))).equals(tar)).toBe(true);
  });

  it('emits ERR_INPUT_NOT_FOUND for a missing file instead of throwing', async () => {
    let stream: Readable | undefined;
    expect(() => { stream = openInput(path.join(parent, 'missing.tgz')); }).not.toThrow();
    const error = await failure(stream as Readable);
    expect(error.code).toBe('ERR_INPUT_NOT_FOUND');
    expect(error.message).toContain('missing.tgz');
  });

  it('does not crash the process when the file is missing and nobody listens yet', async () => {
    const stream = openInput(path.join(parent, 'missing.tgz'));
    await new Promise((resolve) => setTimeout(resolve, 100)); // the open has failed by now
    expect(stream.destroyed).toBe(true);
    expect((await failure(stream)).code).toBe('ERR_INPUT_NOT_FOUND');
  });

  it('emits ERR_INPUT_NOT_TAR for a directory', async () => {
    const dir = path.join(parent, 'a-dir');
    await mkdir(dir);
    expect((await failure(openInput(dir))).code).toBe('ERR_INPUT_NOT_TAR');
  });

  it('emits ERR_INPUT_UNREADABLE for a file without read permission', async () => {
    const file = path.join(parent, 'secret.tgz');
    await writeFile(file, 'x');
    await chmod(file, 0o000);
    const error = await withoutRoot(() => failure(openInput(file)), [parent]);
    expect(error.code).toBe('ERR_INPUT_UNREADABLE');
  });

  it('makes unpack report a missing file as ERR_INPUT_NOT_FOUND', async () => {
    await expect(unpack(openInput(path.join(parent, 'nope.tgz')), path.join(parent, 'out'), {})).rejects.toMatchObject({ code: 'ERR_INPUT_NOT_FOUND' });
  });

  it('makes unpack report gzip of garbage as ERR_INPUT_NOT_TAR', async () => {
    const file = path.join(parent, 'garbage.tgz');
    await writeFile(file, gzipSync(Buffer.from('definitely not a tar archive\n'.repeat(100))));
    const dir = path.join(parent, 'out');
    await expect(unpack(openInput(file), dir, {})).rejects.toMatchObject({ code: 'ERR_INPUT_NOT_TAR' });
  });

  it('makes unpack report a cut .tgz as ERR_INPUT_TRUNCATED', async () => {
    const gz = await makeTgz(packageEntries([{ name: 'package/a', content: Buffer.alloc(100_000, 1) }]));
    const file = path.join(parent, 'cut.tgz');
    await writeFile(file, gz.subarray(0, Math.floor(gz.length / 2)));
    await expect(unpack(openInput(file), path.join(parent, 'out'), {})).rejects.toMatchObject({ code: 'ERR_INPUT_TRUNCATED' });
  });

  it('makes unpack report a .tgz cut inside a huge declared entry as ERR_INPUT_TRUNCATED, at any chunking (issue 15.6)', async () => {
    // The entry declares more than the size limit; the gzip stream ends early. Which error won
    // used to depend on whether gunzip's error or the entry's header reached unpack first.
    for (const [declared, content, limits] of [
      [2 ** 33, 20 * 1024 * 1024, {}],
      [500 * 1024 * 1024, 20 * 1024 * 1024, { maxBytes: 10 * 1024 * 1024 }],
      [2 ** 33, 1000, {}],
    ] as const) {
      const gz = await makeTgz(packageEntries([{ name: 'package/big.bin', size: declared, content: Buffer.alloc(content, 7) }]));
      const file = path.join(parent, `cut-${declared}-${content}.tgz`);
      await writeFile(file, gz.subarray(0, gz.length - 20));
      const error = await unpack(openInput(file), path.join(parent, `out-${declared}-${content}`), { limits }).catch((rejection: unknown) => rejection);
      expect(error, `declared ${declared}, content ${content}`).toMatchObject({ code: 'ERR_INPUT_TRUNCATED' });
    }
  });

  it('still reports a complete .tgz whose entry declares too much as ERR_INPUT_TOO_LARGE', async () => {
    const gz = await makeTgz(packageEntries([{ name: 'package/big.bin', size: 2 ** 33, content: Buffer.alloc(20 * 1024 * 1024, 7) }]));
    const file = path.join(parent, 'whole.tgz');
    await writeFile(file, gz);
    await expect(unpack(openInput(file), path.join(parent, 'out'), {})).rejects.toMatchObject({ code: 'ERR_INPUT_TOO_LARGE' });
  });

  it('makes unpack report a plain text file as ERR_INPUT_NOT_TAR', async () => {
    const file = path.join(parent, 'readme.tgz');
    await writeFile(file, 'This is a README, not a tarball.\n');
    await expect(unpack(openInput(file), path.join(parent, 'out'), {})).rejects.toMatchObject({ code: 'ERR_INPUT_NOT_TAR' });
  });
});

