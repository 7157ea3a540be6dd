/**
 * Reading small objects (records, markers, manifests) whole, and read again when the read was
 * torn: the connection reset mid-body, or the object was rewritten while it was read. Real S3
 * replaces an object atomically, but a connection can still drop; s3rver rewrites its file in
 * place, so a reader racing a writer can get a cut-off body or a short one.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { BundleError, isBundleError } from '../errors.js';
import type { ObjectStore } from './object-store.js';

/** Up to 5 reads, 20, 40, 80 and 160 ms apart: a writer rewriting the object non-stop is outlasted. */
const ATTEMPTS = 5;
const RETRY_DELAY_MS = 20;
const CUT_SHORT = new Set(['ECONNRESET', 'ERR_STREAM_PREMATURE_CLOSE', 'UND_ERR_SOCKET']);

export interface ReadOptions {
  signal?: AbortSignal;
}

/** The whole object, or undefined when there is none. A torn read is read again. */
export async function readWhole(store: ObjectStore, key: string, options: ReadOptions = {}): Promise<Buffer | undefined> {
  return withRereads(store, key, options, (data) => data);
}

/**
 * The object parsed as JSON, or undefined when there is none. A torn read (or text that does
 * not parse, which a torn read also gives) is read again; text that still does not parse is
 * ERR_STORE_IO naming the key.
 */
export async function readJsonObject<T>(store: ObjectStore, key: string, options: ReadOptions = {}): Promise<T | undefined> {
  return withRereads(store, key, options, (data) => JSON.parse(data.toString('utf8')) as T);
}

async function withRereads<T>(store: ObjectStore, key: string, options: ReadOptions, decode: (data: Buffer) => T): Promise<T | undefined> {
  const { signal } = options;
  for (let attempt = 1; ; attempt += 1) {
    try {
      const { info, body } = await store.get(key, signal ? { signal } : {});
      const chunks: Buffer[] = [];
      for await (const chunk of body) chunks.push(Buffer.from(chunk as Buffer));
      const data = Buffer.concat(chunks);
      if (data.length !== info.size) throw Object.assign(new Error(`read ${data.length} of ${info.size} bytes`), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
      return decode(data);
    } catch (error) {
      if (isBundleError(error, 'ERR_STORE_NOT_FOUND')) return undefined;
      const torn = error instanceof SyntaxError || CUT_SHORT.has((error as { code?: string }).code ?? '') || (error as Error).message === 'aborted';
      if (!torn || signal?.aborted) throw error;
      if (attempt >= ATTEMPTS) {
        throw new BundleError('ERR_STORE_IO', `Could not read ${store.location}${key} whole after ${ATTEMPTS} attempts: ${(error as Error).message}`, { cause: error, details: { key } });
      }
    }
    await delay(RETRY_DELAY_MS * 2 ** (attempt - 1), undefined, signal ? { signal } : {});
  }
}
