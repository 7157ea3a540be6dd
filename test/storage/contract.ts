/**
 * The ObjectStore contract: one suite, run against every implementation (dir-store.test.ts,
 * s3-store.test.ts). A store factory provides a fresh, empty store per suite and a way to
 * corrupt an object behind the store's back (to test integrity checks).
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { buffer } from 'node:stream/consumers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isBundleError } from '../../lib/errors.js';
import { copyObject, listAllObjects, type ObjectStore, type Progress } from '../../lib/storage/index.js';

export interface ContractStore {
  store: ObjectStore;
  /** A second store of the same kind (another prefix/dir), for copies between stores. */
  other: ObjectStore;
  /** Replaces an object's bytes (same length) while keeping its recorded sha256. */
  corrupt(key: string): Promise<void>;
  cleanup(): Promise<void>;
}

export const MiB = 1024 * 1024;

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Streams `data` in 1 MiB chunks, optionally pausing before each chunk. */
export function chunked(data: Buffer, options: { pauseMs?: number; onChunk?: (index: number) => void | Promise<void> } = {}): Readable {
  return Readable.from(
    (async function* generate() {
      for (let offset = 0, index = 0; offset < data.length; offset += MiB, index += 1) {
        if (options.pauseMs) await delay(options.pauseMs);
        await options.onChunk?.(index);
        yield data.subarray(offset, Math.min(data.length, offset + MiB));
      }
    })(),
    { objectMode: false },
  );
}

export async function expectCode(promise: Promise<unknown>, code: string): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    expect(isBundleError(error) ? error.code : error).toBe(code);
    return error as Error;
  }
  throw new Error(`expected ${code}, but it resolved`);
}

async function read(store: ObjectStore, key: string): Promise<Buffer> {
  const { body } = await store.get(key);
  return buffer(body);
}

export function describeStoreContract(name: string, makeStore: () => Promise<ContractStore>): void {
  describe(`ObjectStore contract: ${name}`, () => {
    let ctx: ContractStore;
    let store: ObjectStore;
    const large = randomBytes(12 * MiB + 12345);
    const largeSha = sha256(large);

    beforeAll(async () => {
      ctx = await makeStore();
      store = ctx.store;
    });
    afterAll(async () => {
      await ctx?.cleanup();
    });

    it('puts a small body and reads back bytes, size, sha256, metadata and content type', async () => {
      const info = await store.put('small/hello.txt', 'hello world', { metadata: { Origin: 'test' }, contentType: 'text/plain' });
      expect(info).toMatchObject({ key: 'small/hello.txt', size: 11, sha256: sha256('hello world'), metadata: { origin: 'test' } });
      const head = await store.head('small/hello.txt');
      expect(head).toMatchObject({ key: 'small/hello.txt', size: 11, sha256: sha256('hello world'), metadata: { origin: 'test' }, contentType: 'text/plain' });
      expect((await read(store, 'small/hello.txt')).toString()).toBe('hello world');
      expect(await store.exists('small/hello.txt')).toBe(true);
      expect(await store.exists('small/nope.txt')).toBe(false);
    });

    it('streams a large body of unknown hash, records its sha256 and reports progress', async () => {
      const seen: Progress[] = [];
      const info = await store.put('large/unknown.bin', chunked(large), { size: large.length, onProgress: (p) => seen.push(p) });
      expect(info.size).toBe(large.length);
      expect(info.sha256).toBe(largeSha);
      expect((await store.head('large/unknown.bin')).sha256).toBe(largeSha);
      expect(sha256(await read(store, 'large/unknown.bin'))).toBe(largeSha);
      expect(seen.length).toBeGreaterThan(0);
      expect(seen.at(-1)?.loaded).toBe(large.length);
      // Staging objects and temp files never show up in listings.
      const keys = [];
      for await (const item of listAllObjects(store)) keys.push(item.key);
      expect(keys.every((key) => !key.startsWith('.bundle-dispatch'))).toBe(true);
    });

    it('accepts a large body whose sha256 is given up front', async () => {
      const info = await store.put('large/known.bin', chunked(large), { sha256: largeSha.toUpperCase() });
      expect(info.sha256).toBe(largeSha);
      expect((await store.head('large/known.bin')).sha256).toBe(largeSha);
    });

    it('refuses a body that does not match its given sha256, and nothing becomes visible', async () => {
      const wrong = sha256('something else');
      await expectCode(store.put('bad/small.txt', 'content', { sha256: wrong }), 'ERR_INTEGRITY');
      expect(await store.exists('bad/small.txt')).toBe(false);
      await expectCode(store.put('bad/large.bin', chunked(large), { sha256: wrong }), 'ERR_INTEGRITY');
      expect(await store.exists('bad/large.bin')).toBe(false);
    });

    it('reads byte ranges (inclusive ends) and reports the whole size', async () => {
      await store.put('range/digits.txt', '0123456789');
      const part = await store.get('range/digits.txt', { range: { start: 2, end: 5 } });
      expect((await buffer(part.body)).toString()).toBe('2345');
      expect(part.info.size).toBe(10);
      const tail = await store.get('range/digits.txt', { range: { start: 7 } });
      expect((await buffer(tail.body)).toString()).toBe('789');
    });

    it('verifies on get: good objects pass, a corrupt one fails with ERR_INTEGRITY and is removed', async () => {
      await store.put('verify/good.bin', large.subarray(0, 3 * MiB));
      const good = await store.get('verify/good.bin', { verify: true });
      expect(sha256(await buffer(good.body))).toBe(sha256(large.subarray(0, 3 * MiB)));

      await store.put('verify/bad.bin', 'original content');
      await ctx.corrupt('verify/bad.bin');
      const bad = await store.get('verify/bad.bin', { verify: true });
      await expectCode(buffer(bad.body), 'ERR_INTEGRITY');
      expect(await store.exists('verify/bad.bin')).toBe(false);
    });

    it('says ERR_STORE_NOT_FOUND for missing objects and deletes idempotently', async () => {
      await expectCode(store.head('missing/a'), 'ERR_STORE_NOT_FOUND');
      await expectCode(store.get('missing/a'), 'ERR_STORE_NOT_FOUND');
      await store.put('del/one', '1');
      await store.delete('del/one');
      await store.delete('del/one');
      expect(await store.exists('del/one')).toBe(false);
    });

    it('lists by prefix, in key order, page by page', async () => {
      const keys = ['list/c', 'list/a', 'list/b/1', 'list/b/2', 'list/d', 'listing/x'];
      for (const key of keys) await store.put(key, key);
      const seen: string[] = [];
      let cursor: string | undefined;
      let pages = 0;
      do {
        const page = await store.list({ prefix: 'list/', limit: 2, ...(cursor ? { cursor } : {}) });
        expect(page.items.length).toBeLessThanOrEqual(2);
        seen.push(...page.items.map((item) => item.key));
        for (const item of page.items) expect(item.size).toBe(item.key.length);
        cursor = page.cursor;
        pages += 1;
      } while (cursor);
      expect(seen).toEqual(['list/a', 'list/b/1', 'list/b/2', 'list/c', 'list/d']);
      expect(pages).toBeGreaterThanOrEqual(3);
      const all = [];
      for await (const item of listAllObjects(store, { prefix: 'list' })) all.push(item.key);
      expect(all).toContain('listing/x');
      expect((await store.list({ prefix: 'nothing-here/' })).items).toEqual([]);
    });

    it('copies within the store keeping sha256 and metadata', async () => {
      await store.put('copy/src.bin', large.subarray(0, MiB), { metadata: { build: '42' } });
      const info = await store.copy('copy/src.bin', 'copy/dst.bin');
      expect(info).toMatchObject({ key: 'copy/dst.bin', size: MiB, sha256: sha256(large.subarray(0, MiB)), metadata: { build: '42' } });
      expect(sha256(await read(store, 'copy/dst.bin'))).toBe(info.sha256);
    });

    it('copies to another store, verifying an expected sha256', async () => {
      await store.put('xcopy/src.bin', chunked(large));
      const info = await copyObject(store, 'xcopy/src.bin', ctx.other, 'xcopy/dst.bin', { sha256: largeSha });
      expect(info.sha256).toBe(largeSha);
      expect((await ctx.other.head('xcopy/dst.bin')).sha256).toBe(largeSha);
      await expectCode(copyObject(store, 'xcopy/src.bin', ctx.other, 'xcopy/wrong.bin', { sha256: sha256('nope') }), 'ERR_INTEGRITY');
      expect(await ctx.other.exists('xcopy/wrong.bin')).toBe(false);
    });

    it('a copy from a corrupt source fails with ERR_INTEGRITY, writes nothing and removes the source', async () => {
      await store.put('xcopy/corrupt.bin', 'will be corrupted');
      await ctx.corrupt('xcopy/corrupt.bin');
      await expectCode(copyObject(store, 'xcopy/corrupt.bin', ctx.other, 'xcopy/from-corrupt.bin'), 'ERR_INTEGRITY');
      expect(await ctx.other.exists('xcopy/from-corrupt.bin')).toBe(false);
      expect(await store.exists('xcopy/corrupt.bin')).toBe(false);
    });

    it('immutable puts accept the same content again and refuse different content', async () => {
      await store.put('imm/a.txt', 'first', { immutable: true });
      await store.put('imm/a.txt', 'first', { immutable: true });
      await store.put('imm/a.txt', 'first', { immutable: true, sha256: sha256('first') });
      const error = await expectCode(store.put('imm/a.txt', 'second', { immutable: true }), 'ERR_STORE_EXISTS');
      expect(error.message).toContain('imm/a.txt');
      await expectCode(store.put('imm/a.txt', 'second', { immutable: true, sha256: sha256('second') }), 'ERR_STORE_EXISTS');
      await store.put('imm/large.bin', chunked(large), { immutable: true });
      await store.put('imm/large.bin', chunked(large), { immutable: true });
      const other = Buffer.from(large);
      other[0] = (other[0] ?? 0) ^ 1;
      await expectCode(store.put('imm/large.bin', chunked(other), { immutable: true }), 'ERR_STORE_EXISTS');
      expect((await read(store, 'imm/a.txt')).toString()).toBe('first');
      expect((await store.head('imm/large.bin')).sha256).toBe(largeSha);
      // Without immutable, overwriting is allowed.
      await store.put('imm/a.txt', 'second');
      expect((await read(store, 'imm/a.txt')).toString()).toBe('second');
      // Immutable copies follow the same rule.
      await expectCode(copyObject(store, 'imm/a.txt', store, 'imm/large.bin', { immutable: true }), 'ERR_STORE_EXISTS');
    });

    it('rejects unsafe keys with ERR_STORE_KEY', async () => {
      for (const key of ['../escape', 'a/../../b', '/abs', 'a//b', 'a\\b', 'a\u0000b', '', 'a/', './a', '.bundle-dispatch/tmp/x']) {
        await expectCode(store.put(key, 'x'), 'ERR_STORE_KEY');
        await expectCode(store.head(key), 'ERR_STORE_KEY');
      }
      await expectCode(store.get('../x'), 'ERR_STORE_KEY');
      await expectCode(store.delete('../x'), 'ERR_STORE_KEY');
    });

    it('never shows a half-written object: readers see the old one or the whole new one', async () => {
      await store.put('atomic/obj.bin', 'old');
      let checks = 0;
      const put = store.put('atomic/obj.bin', chunked(large, {
        pauseMs: 5,
        onChunk: async (index) => {
          if (index % 4 !== 2) return;
          checks += 1;
          const seen = await read(store, 'atomic/obj.bin');
          expect(seen.toString()).toBe('old');
          await expectCode(store.head('atomic/new.bin'), 'ERR_STORE_NOT_FOUND');
        },
      }));
      await put;
      expect(checks).toBeGreaterThan(1);
      expect(sha256(await read(store, 'atomic/obj.bin'))).toBe(largeSha);
    });

    it('cancels a put mid-stream with ERR_ABORTED and leaves nothing behind', async () => {
      const controller = new AbortController();
      const put = store.put('abort/obj.bin', chunked(large, { pauseMs: 2, onChunk: (index) => { if (index === 7) controller.abort(); } }), { signal: controller.signal });
      await expectCode(put, 'ERR_ABORTED');
      expect(await store.exists('abort/obj.bin')).toBe(false);
      const aborted = AbortSignal.abort();
      await expectCode(store.head('small/hello.txt', { signal: aborted }), 'ERR_ABORTED');
      await expectCode(store.get('small/hello.txt', { signal: aborted }), 'ERR_ABORTED');
      await expectCode(store.list({ signal: aborted }), 'ERR_ABORTED');
      await expectCode(store.put('abort/x', 'x', { signal: aborted }), 'ERR_ABORTED');
    });

    it('cancels a download mid-stream', async () => {
      const controller = new AbortController();
      const { body } = await store.get('large/known.bin', { signal: controller.signal });
      let received = 0;
      const reading = (async () => {
        for await (const chunk of body) {
          received += (chunk as Buffer).length;
          if (received > MiB) controller.abort();
        }
      })();
      await expect(reading).rejects.toThrow();
      expect(received).toBeLessThan(large.length);
    });
  });
}
