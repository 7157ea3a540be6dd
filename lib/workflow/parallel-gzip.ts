import { availableParallelism } from 'node:os';
import { Transform, type TransformCallback } from 'node:stream';
import { promisify } from 'node:util';
import { constants, crc32, deflateRaw, type ZlibOptions } from 'node:zlib';
import { DEFAULT_GZIP_LEVEL } from '../protocol.js';

const deflateRawAsync = promisify(deflateRaw) as (buffer: Buffer, options: ZlibOptions) => Promise<Buffer>;

/** Deflate's window: how far back a match may reach, so what each block is primed with. */
const WINDOW = 32 * 1024;

/** Block size chosen from measurements on the bench's packages (docs/bench.md, Packing). */
export const GZIP_BLOCK_SIZE = 1024 * 1024;

export interface ParallelGzipOptions {
  /** zlib level, 1–9 (default {@link DEFAULT_GZIP_LEVEL}; the gzipLevel setting). */
  level?: number | undefined;
  /** Bytes of input per block, at least 32 KiB (default {@link GZIP_BLOCK_SIZE}). Changes the output bytes. */
  blockSize?: number;
  /**
   * Blocks being deflated at once on libuv's thread pool (default: one more than the cores, so
   * a core never waits while this thread cuts the next block; at most 4, the pool's default
   * size). Bounds memory; never changes the output bytes.
   */
  concurrency?: number;
}

interface Job {
  done: Promise<void>;
  output?: Buffer;
}

/**
 * A gzip stream that deflates on several cores and still gives the same bytes for the same
 * input, whatever its chunking, the thread timing or the core count (pigz's scheme).
 *
 * The input is cut into blocks of `blockSize` bytes at fixed offsets. Each block is deflated
 * on its own, as raw deflate primed with the 32 KiB of input before it (`dictionary`), so it
 * compresses almost as well as one stream; every block but the last ends with a sync flush (an
 * empty stored block, byte-aligned and not final) and the last with finish, so their
 * concatenation in order is one valid deflate stream. Around it: a gzip header with mtime 0
 * and a fixed OS byte (Unix), and the trailer's CRC-32 and length of the input.
 *
 * At most `concurrency` blocks are in flight: a writer is held back (its write callback
 * waits) until the oldest block is done, so memory stays a few blocks whatever the stream's
 * size. Any gzip reader (gunzip, tar, npm) reads the result.
 *
 * @example
 * await pipeline(pack(dir), createParallelGzip(), createWriteStream(out));
 */
export function createParallelGzip(options: ParallelGzipOptions = {}): Transform {
  return new ParallelGzip(options);
}

class ParallelGzip extends Transform {
  private readonly level: number;
  private readonly blockSize: number;
  private readonly concurrency: number;
  /** Input not yet cut into a block. */
  private parts: Buffer[] = [];
  private buffered = 0;
  /** The last 32 KiB of input before the next block. */
  private window: Buffer | undefined;
  /** Blocks in input order, oldest first. */
  private readonly jobs: Job[] = [];
  private crc = 0;
  private length = 0;

  constructor(options: ParallelGzipOptions) {
    super();
    this.level = options.level ?? DEFAULT_GZIP_LEVEL;
    this.blockSize = options.blockSize ?? GZIP_BLOCK_SIZE;
    this.concurrency = options.concurrency ?? Math.min(availableParallelism() + 1, 4);
    if (!Number.isInteger(this.level) || this.level < 1 || this.level > 9) throw new RangeError(`gzip level must be 1–9, not ${this.level}`);
    if (!Number.isInteger(this.blockSize) || this.blockSize < WINDOW) throw new RangeError(`gzip block size must be at least ${WINDOW} bytes, not ${this.blockSize}`);
    if (!Number.isInteger(this.concurrency) || this.concurrency < 1) throw new RangeError(`gzip concurrency must be at least 1, not ${this.concurrency}`);
    this.push(gzipHeader(this.level));
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.crc = crc32(chunk, this.crc);
    this.length += chunk.length;
    this.parts.push(chunk);
    this.buffered += chunk.length;
    this.submitFullBlocks().then(() => callback(), callback);
  }

  override _flush(callback: TransformCallback): void {
    this.finish().then((trailer) => callback(null, trailer), callback);
  }

  /** Deflates the rest as the last block, hands on every block, and returns the trailer. */
  private async finish(): Promise<Buffer> {
    await this.handOn(this.concurrency);
    this.submit(this.cut(this.buffered), true);
    await this.handOn(1);
    const trailer = Buffer.alloc(8);
    trailer.writeUInt32LE(this.crc >>> 0, 0);
    trailer.writeUInt32LE(this.length % 2 ** 32, 4);
    return trailer;
  }

  /** Deflates every full block of the buffered input, each once a block is free, and hands on those done. */
  private async submitFullBlocks(): Promise<void> {
    while (this.buffered >= this.blockSize) {
      await this.handOn(this.concurrency);
      if (this.destroyed) return;
      this.submit(this.cut(this.blockSize), false);
    }
    await this.handOn(Infinity);
  }

  /** Hands on the blocks already done, in order, then waits until fewer than `limit` are in flight. */
  private async handOn(limit: number): Promise<void> {
    for (;;) {
      const head = this.jobs[0];
      if (!head) return;
      if (!head.output) {
        if (this.jobs.length < limit) return;
        await head.done;
      }
      this.jobs.shift();
      this.push(head.output);
    }
  }

  private submit(block: Buffer, last: boolean): void {
    const dictionary = this.window;
    if (!last) this.window = block.subarray(block.length - WINDOW);
    const job: Job = { done: Promise.resolve() };
    job.done = deflateRawAsync(block, {
      level: this.level,
      ...(dictionary ? { dictionary } : {}),
      finishFlush: last ? constants.Z_FINISH : constants.Z_SYNC_FLUSH,
      // Room for the whole block's output: one trip through the thread pool per block.
      chunkSize: block.length + 1024,
    }).then((output) => {
      job.output = output;
    });
    // A stream destroyed meanwhile never awaits it; handOn() still sees a failure.
    job.done.catch(() => undefined);
    this.jobs.push(job);
  }

  /** The next `size` bytes of buffered input as one Buffer. */
  private cut(size: number): Buffer {
    const first = this.parts[0];
    let block: Buffer;
    if (first && first.length >= size) {
      block = first.subarray(0, size);
      if (first.length === size) this.parts.shift();
      else this.parts[0] = first.subarray(size);
    } else {
      block = Buffer.allocUnsafe(size);
      let offset = 0;
      while (offset < size) {
        const part = this.parts[0] as Buffer;
        const used = Math.min(part.length, size - offset);
        part.copy(block, offset, 0, used);
        offset += used;
        if (used === part.length) this.parts.shift();
        else this.parts[0] = part.subarray(used);
      }
    }
    this.buffered -= size;
    return block;
  }
}

/** RFC 1952 header: deflate, no flags, mtime 0, zlib's extra flags for the level, OS Unix. */
function gzipHeader(level: number): Buffer {
  const extraFlags = level === 9 ? 2 : level === 1 ? 4 : 0;
  return Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, extraFlags, 3]);
}
