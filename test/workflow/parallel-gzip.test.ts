import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { createGunzip, gunzipSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createParallelGzip, type ParallelGzipOptions } from '../../lib/workflow/parallel-gzip.js';
import { pack } from '../../lib/workflow/steps/pack.js';
import { installOffline, runInConsumer } from '../helpers/consumer.js';
import { repoRoot, tempDir } from '../helpers/packages.js';
import { readAll } from '../helpers/tar.js';

const execFileAsync = promisify(execFile);
const KiB = 1024;

/** Bytes that compress like source code (repeats) interleaved with some that do not (a fixed PRNG). */
function sample(size: number, seed = 1): Buffer {
  const out = Buffer.alloc(size);
  let state = seed;
  let offset = 0;
  while (offset < size) {
    state = (state * 1103515245 + 12345) >>> 0;
    const text = Buffer.from(`function f${state % 97}(a, b) { return a + b * ${state % 13}; }\n`);
    offset += text.copy(out, offset);
    for (let noise = state % 40; noise > 0 && offset < size; noise -= 1) {
      state = (state * 1103515245 + 12345) >>> 0;
      out[offset++] = state >>> 24;
    }
  }
  return out;
}

/** `input` in chunks of the given sizes, cycled. */
function chunked(input: Buffer, sizes: number[]): Readable {
  const chunks: Buffer[] = [];
  for (let offset = 0, index = 0; offset < input.length; index += 1) {
    const size = sizes[index % sizes.length] as number;
    chunks.push(input.subarray(offset, offset + size));
    offset += size;
  }
  return Readable.from(chunks, { objectMode: false });
}

async function gzip(input: Readable, options: ParallelGzipOptions = {}): Promise<Buffer> {
  return readAll(input.pipe(createParallelGzip(options)));
}

describe('createParallelGzip', () => {
  const input = sample(3 * 256 * KiB + 12_345);

  it('gives a gzip that zlib inflates back to the input: empty, a byte, around block edges, many blocks', async () => {
    const blockSize = 64 * KiB;
    for (const size of [0, 1, blockSize - 1, blockSize, blockSize + 1, 2 * blockSize, input.length]) {
      const part = input.subarray(0, size);
      const out = await gzip(chunked(part, [10_000]), { blockSize });
      expect(gunzipSync(out).equals(part), `size ${size}`).toBe(true);
    }
  });

  it('is the same bytes whatever the chunking of the input and the blocks in flight', async () => {
    const options = { blockSize: 64 * KiB };
    const reference = await gzip(chunked(input, [input.length]), { ...options, concurrency: 1 });
    const variants = [
      await gzip(chunked(input, [1, 7, 65_536, 100_000, 3]), { ...options, concurrency: 2 }),
      await gzip(chunked(input, [64 * KiB]), { ...options, concurrency: 4 }),
      await gzip(chunked(input, [4096, 300_000]), { ...options, concurrency: 8 }),
    ];
    for (const variant of variants) expect(variant.equals(reference)).toBe(true);
    // And another block size is another (valid) encoding: the size is part of the format.
    const other = await gzip(chunked(input, [input.length]), { blockSize: 128 * KiB });
    expect(other.equals(reference)).toBe(false);
    expect(gunzipSync(other).equals(input)).toBe(true);
  });

  it('writes a fixed header (mtime 0, OS Unix) and the trailer zlib writes (CRC-32, length)', async () => {
    const out = await gzip(chunked(input, [50_000]), { level: 9 });
    const zlibs = gzipSync(input, { level: 9 });
    expect([...out.subarray(0, 10)]).toEqual([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]);
    expect(out.subarray(-8).equals(zlibs.subarray(-8))).toBe(true);
  });

  it('compresses about as well as one zlib stream at the same level', async () => {
    const tar = await readAll(pack(path.join(repoRoot, 'lib')));
    const ours = await gzip(chunked(tar, [256 * KiB]), { blockSize: 128 * KiB });
    expect(gunzipSync(ours).equals(tar)).toBe(true);
    expect(ours.length / gzipSync(tar, { level: 6 }).length).toBeLessThan(1.01);
  });

  it('refuses a level, block size or concurrency it cannot use', () => {
    expect(() => createParallelGzip({ level: 0 })).toThrow(RangeError);
    expect(() => createParallelGzip({ blockSize: 1000 })).toThrow(RangeError);
    expect(() => createParallelGzip({ concurrency: 0 })).toThrow(RangeError);
  });

  it('holds the writer back: a slow reader of a large stream keeps a few blocks in memory, not the stream', async () => {
    const blockSize = 256 * KiB;
    const concurrency = 2;
    const total = 96 * 1024 * KiB;
    const pattern = sample(1024 * KiB, 7);
    let produced = 0;
    let inflated = 0;
    let maxAhead = 0;
    const source = Readable.from((function* chunks() {
      while (produced < total) {
        maxAhead = Math.max(maxAhead, produced - inflated);
        produced += pattern.length;
        yield pattern;
      }
    })(), { objectMode: false });
    const slowReader = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        inflated += chunk.length;
        setImmediate(callback);
      },
    });
    await pipeline(source, createParallelGzip({ level: 1, blockSize, concurrency }), createGunzip(), slowReader);
    expect(inflated).toBe(total);
    // Blocks in flight, the block being filled, a source chunk and the streams' buffers; a
    // gzip that took whatever it was given would run the whole 96 MiB ahead of the reader.
    expect(maxAhead).toBeLessThan((concurrency + 1) * blockSize + 4 * pattern.length);
  });

  it('hands on an error of its input, and a destroyed stream with blocks in flight fails nothing else', async () => {
    const failing = Readable.from((async function* chunks() {
      yield input;
      throw new Error('source broke');
    })(), { objectMode: false });
    await expect(pipeline(failing, createParallelGzip({ blockSize: 64 * KiB }), new Writable({ write: (_chunk, _encoding, callback) => callback() }))).rejects.toThrow('source broke');
    // Destroyed while its blocks are on the thread pool: no error event, no output after it,
    // and (vitest would report it) no unhandled rejection when the blocks finish.
    const gz = createParallelGzip({ blockSize: 64 * KiB, concurrency: 1 });
    const events: string[] = [];
    gz.on('error', (error: Error) => events.push(`error ${error.message}`));
    gz.write(input);
    gz.destroy();
    gz.on('data', () => events.push('data'));
    await new Promise((resolve) => gz.once('close', resolve));
    await gzip(chunked(input, [input.length]), { blockSize: 64 * KiB });
    expect(events).toEqual([]);
  });
});

describe('a bundle gzipped with createParallelGzip', () => {
  let root: { dir: string; remove: () => Promise<void> };
  let tgz: string;
  let tarSha256: string;

  beforeAll(async () => {
    root = await tempDir('parallel-gzip-');
    const dir = path.join(root.dir, 'pkg');
    await mkdir(path.join(dir, 'lib'), { recursive: true });
    await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'gz-fixture', version: '1.0.0', main: 'lib/index.js' }));
    // Several blocks of content, so the consumer reads sync-flushed block boundaries.
    await writeFile(path.join(dir, 'lib', 'data.txt'), sample(700 * KiB, 3).toString('base64'));
    await writeFile(path.join(dir, 'lib', 'index.js'), 'module.exports = require("fs").readFileSync(__dirname + "/data.txt", "utf8").length;\n');
    tgz = path.join(root.dir, 'gz-fixture-1.0.0.tgz');
    await pipeline(pack(dir), createParallelGzip({ blockSize: 64 * KiB }), createWriteStream(tgz));
    tarSha256 = createHash('sha256').update(await readAll(pack(dir))).digest('hex');
  });

  afterAll(async () => {
    await root.remove();
  });

  it('is listed by tar and tested by gunzip, and holds the same tar', async () => {
    const { stdout } = await execFileAsync('tar', ['-tzf', tgz]);
    expect(stdout.split('\n').filter(Boolean).sort()).toEqual(['package/lib/data.txt', 'package/lib/index.js', 'package/package.json']);
    await execFileAsync('gzip', ['-t', tgz]);
    expect(createHash('sha256').update(gunzipSync(await readFile(tgz))).digest('hex')).toBe(tarSha256);
  });

  it('installs with npm offline and loads', async () => {
    const consumer = path.join(root.dir, 'consumer');
    const { env } = await installOffline(tgz, consumer);
    const expected = Buffer.from(sample(700 * KiB, 3).toString('base64')).length;
    expect(await runInConsumer(consumer, 'console.log(require("gz-fixture"))', env)).toBe(String(expected));
    await rm(consumer, { recursive: true, force: true });
  });
});
