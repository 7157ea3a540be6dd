/** Stream helpers shared by the stores: hashing while streaming, verifying, peeking. */
import { createHash, type Hash } from 'node:crypto';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { BundleError, abortError } from '../errors.js';
import { integrityError, type PutBody } from './object-store.js';

/** Running sha256 and byte count of what went through {@link hashChunks}. */
export class HashState {
  readonly hash: Hash = createHash('sha256');
  size = 0;
  digest: string | undefined;

  finish(): string {
    this.digest ??= this.hash.digest('hex');
    return this.digest;
  }
}

export interface HashChunksOptions {
  /** Fails the iteration (before its last chunk is handed on) when the digest differs. */
  expected?: string;
  /** Fails the iteration when more bytes than this arrive. */
  maxBytes?: number;
  maxBytesMessage?: string;
  /** Where the object goes, for error messages. */
  location: string;
  signal?: AbortSignal;
  onChunk?: (size: number) => void;
}

/** The body as an async iterable of Buffers. */
export function toChunks(body: PutBody): AsyncIterable<Buffer> {
  if (typeof body === 'string' || body instanceof Uint8Array) {
    const buffer = typeof body === 'string' ? Buffer.from(body) : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    return (async function* single() {
      yield buffer;
    })();
  }
  const source = body as AsyncIterable<Uint8Array | string>;
  return (async function* buffers() {
    for await (const chunk of source) {
      yield typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    }
  })();
}

/**
 * Passes chunks through, hashing them. The digest check happens after the source ends and
 * before the final chunk is yielded, so a consumer that commits only after the iteration
 * completes (temp file rename, multipart completion) never commits a bad object.
 */
export async function* hashChunks(source: AsyncIterable<Buffer>, state: HashState, options: HashChunksOptions): AsyncGenerator<Buffer> {
  let pending: Buffer | undefined;
  for await (const chunk of source) {
    if (options.signal?.aborted) throw abortError(options.signal);
    if (chunk.length === 0) continue;
    state.hash.update(chunk);
    state.size += chunk.length;
    if (options.maxBytes !== undefined && state.size > options.maxBytes) {
      throw new BundleError('ERR_STORE_IO', options.maxBytesMessage ?? `The body for ${options.location} is larger than ${options.maxBytes} bytes.`);
    }
    options.onChunk?.(chunk.length);
    if (pending) yield pending;
    pending = chunk;
  }
  if (options.signal?.aborted) throw abortError(options.signal);
  const digest = state.finish();
  if (options.expected !== undefined && options.expected !== digest) {
    throw integrityError(options.location, options.expected, digest);
  }
  if (pending) yield pending;
}

/**
 * A pass-through that hashes and, at the end, compares with `expected`. On a mismatch it
 * awaits `onMismatch` (which removes the bad object) and then fails with ERR_INTEGRITY.
 */
export function createVerifyStream(expected: string, location: string, onMismatch: () => Promise<void>): Transform {
  const hash = createHash('sha256');
  return new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      hash.update(chunk);
      callback(null, chunk);
    },
    flush(callback: TransformCallback) {
      const actual = hash.digest('hex');
      if (actual === expected) {
        callback();
        return;
      }
      onMismatch().then(
        () => callback(integrityError(location, expected, actual)),
        () => callback(integrityError(location, expected, actual)),
      );
    },
  });
}

/**
 * Reads from `chunks` until `limit` bytes have arrived or it ends. Returns what was read and,
 * when the body is larger, the whole body again as a Readable (read part first, then the rest).
 */
export async function peekChunks(chunks: AsyncIterable<Buffer>, limit: number): Promise<{ head: Buffer[]; size: number; ended: boolean; whole: () => Readable }> {
  const iterator = chunks[Symbol.asyncIterator]();
  const head: Buffer[] = [];
  let size = 0;
  let ended = false;
  while (size < limit) {
    const next = await iterator.next();
    if (next.done) {
      ended = true;
      break;
    }
    head.push(next.value);
    size += next.value.length;
  }
  const whole = (): Readable =>
    Readable.from(
      (async function* all() {
        while (head.length > 0) yield head.shift() as Buffer;
        if (ended) return;
        for (;;) {
          const next = await iterator.next();
          if (next.done) return;
          yield next.value;
        }
      })(),
      { objectMode: false, highWaterMark: 1024 * 1024 },
    );
  return { head, size, ended, whole };
}

/** Destroys a body the store did not read (so file handles and sockets are released). */
export function discardBody(body: PutBody): void {
  if (body instanceof Readable) body.destroy();
}
