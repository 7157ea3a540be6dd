/**
 * Build records and logs in the builder's store, written as they happen, so a restart (or a
 * replica behind the same URL) loses nothing. Layout under `builder/`:
 *
 * - `builds/<id>/record.json`             the record: on acceptance, changes (≤ 1/s), heartbeats, the end
 * - `builds/<id>/log/<first seq>.ndjson`  log chunks, one per flush (every 500 ms while lines come)
 * - `builds/<id>/<bundle file>.tgz`       the result when no output URL was given
 * - `index/<inverted ms>-<id>`            history, newest first in the store's ascending listing
 * - `active/<builder id>/<id>`            queued or running builds of that builder (restart recovery)
 * - `idempotency/<sha256 of key>`         Idempotency-Key → build id
 *
 * Writes of one record are coalesced: while one is in flight only the newest snapshot waits.
 */
import { createHash } from 'node:crypto';
import { BundleError } from '../errors.js';
import { listAllObjects, readJsonObject, readWhole, type ObjectStore } from '../storage/index.js';
import type { BuildRecord, LogLine } from '../protocol.js';

const ROOT = 'builder';
const MAX_TIME = 9_999_999_999_999;

export const keys = {
  buildsPrefix: () => `${ROOT}/builds/`,
  record: (id: string) => `${ROOT}/builds/${id}/record.json`,
  logPrefix: (id: string) => `${ROOT}/builds/${id}/log/`,
  logChunk: (id: string, firstSeq: number) => `${ROOT}/builds/${id}/log/${String(firstSeq).padStart(10, '0')}.ndjson`,
  artifact: (id: string, file: string) => `${ROOT}/builds/${id}/${file}`,
  indexPrefix: () => `${ROOT}/index/`,
  index: (id: string, createdMs: number) => `${ROOT}/index/${String(MAX_TIME - createdMs).padStart(13, '0')}-${id}`,
  activeRoot: () => `${ROOT}/active/`,
  activePrefix: (builder: string) => `${ROOT}/active/${encodeURIComponent(builder)}/`,
  active: (builder: string, id: string) => `${ROOT}/active/${encodeURIComponent(builder)}/${id}`,
  idempotencyPrefix: () => `${ROOT}/idempotency/`,
  /** Where a replica says it can be reached (its advertised URL), for cancels sent to another replica. */
  replica: (builder: string) => `${ROOT}/replicas/${encodeURIComponent(builder)}.json`,
  /** A key nobody writes: readiness asks whether it exists, to see that the store answers. */
  probe: () => `${ROOT}/readiness-probe`,
  idempotency: (key: string) => `${ROOT}/idempotency/${createHash('sha256').update(key).digest('hex')}`,
};

export interface RecordStoreOptions {
  store: ObjectStore;
  /** Where write failures go (they never fail a build: the memory copy still serves). */
  onWriteError: (error: unknown, what: string) => void;
}

async function readText(store: ObjectStore, key: string, signal?: AbortSignal): Promise<string | undefined> {
  return (await readWhole(store, key, signal ? { signal } : {}))?.toString('utf8');
}

export class RecordStore {
  private readonly store: ObjectStore;
  private readonly onWriteError: RecordStoreOptions['onWriteError'];
  private readonly writing = new Map<string, { pending?: string; done: Promise<void> }>();
  private readonly logBuffers = new Map<string, { lines: LogLine[]; timer?: NodeJS.Timeout; chain: Promise<void> }>();

  constructor(options: RecordStoreOptions) {
    this.store = options.store;
    this.onWriteError = options.onWriteError;
  }

  /** Persists a snapshot of the record; resolves once that snapshot (or a newer one) is stored. */
  saveRecord(record: BuildRecord): Promise<void> {
    const { queuePosition: _position, ...persisted } = record;
    const text = JSON.stringify(persisted);
    const current = this.writing.get(record.id);
    if (current) {
      current.pending = text;
      return current.done;
    }
    const entry: { pending?: string; done: Promise<void> } = { pending: text, done: Promise.resolve() };
    entry.done = (async () => {
      while (entry.pending !== undefined) {
        const next = entry.pending;
        entry.pending = undefined;
        await this.store.put(keys.record(record.id), next, { contentType: 'application/json' }).catch((error: unknown) => this.onWriteError(error, `record ${record.id}`));
      }
      this.writing.delete(record.id);
    })();
    this.writing.set(record.id, entry);
    return entry.done;
  }

  async readRecord(id: string, signal?: AbortSignal): Promise<BuildRecord | undefined> {
    // Read again if torn: a replica may be rewriting this record right now.
    return readJsonObject<BuildRecord>(this.store, keys.record(id), signal ? { signal } : {});
  }

  /** Queues log lines; they are written as one chunk within 500 ms. */
  appendLog(id: string, line: LogLine): void {
    let buffer = this.logBuffers.get(id);
    if (!buffer) {
      buffer = { lines: [], chain: Promise.resolve() };
      this.logBuffers.set(id, buffer);
    }
    buffer.lines.push(line);
    buffer.timer ??= setTimeout(() => void this.flushLog(id), 500);
  }

  /** Writes the buffered lines of a build now; resolves when every earlier chunk is stored. */
  flushLog(id: string): Promise<void> {
    const buffer = this.logBuffers.get(id);
    if (!buffer) return Promise.resolve();
    clearTimeout(buffer.timer);
    buffer.timer = undefined;
    const lines = buffer.lines.splice(0);
    if (lines.length > 0) {
      const first = lines[0] as LogLine;
      const text = `${lines.map((line) => JSON.stringify(line)).join('\n')}\n`;
      buffer.chain = buffer.chain.then(() =>
        this.store.put(keys.logChunk(id, first.seq), text, { contentType: 'application/x-ndjson' }).then(() => undefined, (error: unknown) => this.onWriteError(error, `log of ${id}`)));
    }
    return buffer.chain;
  }

  /** Flushes and forgets a finished build's log buffer. */
  async closeLog(id: string): Promise<void> {
    await this.flushLog(id);
    this.logBuffers.delete(id);
  }

  async readLog(id: string, since: number, signal?: AbortSignal): Promise<LogLine[]> {
    const lines: LogLine[] = [];
    const chunks: string[] = [];
    for await (const info of listAllObjects(this.store, { prefix: keys.logPrefix(id), ...(signal ? { signal } : {}) })) chunks.push(info.key);
    for (const key of chunks.sort()) {
      const text = await readText(this.store, key, signal);
      for (const raw of (text ?? '').split('\n')) {
        if (!raw) continue;
        const line = JSON.parse(raw) as LogLine;
        if (line.seq > since) lines.push(line);
      }
    }
    return lines.sort((a, b) => a.seq - b.seq);
  }

  async addToIndex(record: BuildRecord): Promise<void> {
    await this.store.put(keys.index(record.id, Date.parse(record.createdAt)), record.id).catch((error: unknown) => this.onWriteError(error, `index of ${record.id}`));
  }

  /** Build ids, newest first. */
  async listIndex(options: { limit: number; cursor?: string; signal?: AbortSignal }): Promise<{ ids: string[]; cursor?: string }> {
    const page = await this.store.list({ prefix: keys.indexPrefix(), limit: options.limit, ...(options.cursor ? { cursor: options.cursor } : {}), ...(options.signal ? { signal: options.signal } : {}) });
    const ids = page.items.map((item) => item.key.slice(keys.indexPrefix().length).replace(/^\d+-/, ''));
    return { ids, ...(page.cursor ? { cursor: page.cursor } : {}) };
  }

  async markActive(builder: string, id: string): Promise<void> {
    await this.store.put(keys.active(builder, id), id).catch((error: unknown) => this.onWriteError(error, `active marker of ${id}`));
  }

  async clearActive(builder: string, id: string): Promise<void> {
    await this.store.delete(keys.active(builder, id)).catch((error: unknown) => this.onWriteError(error, `active marker of ${id}`));
  }

  async listActive(builder: string): Promise<string[]> {
    const ids: string[] = [];
    for await (const info of listAllObjects(this.store, { prefix: keys.activePrefix(builder) })) ids.push(info.key.slice(keys.activePrefix(builder).length));
    return ids;
  }

  async findIdempotent(key: string): Promise<string | undefined> {
    return (await readText(this.store, keys.idempotency(key)))?.trim() || undefined;
  }

  /** Claims a key for a build about to be accepted (a failed write throws: the request fails, nothing is built). */
  async claimIdempotent(key: string, id: string): Promise<void> {
    await this.store.put(keys.idempotency(key), id);
  }

  /** Removes a claim that still names `id` (its build was never accepted). */
  async releaseIdempotent(key: string, id: string): Promise<void> {
    if ((await this.findIdempotent(key)) === id) await this.store.delete(keys.idempotency(key));
  }

  async saveIdempotent(key: string, id: string): Promise<void> {
    await this.store.put(keys.idempotency(key), id).catch((error: unknown) => this.onWriteError(error, `idempotency key of ${id}`));
  }

  /** Says where this replica answers: other replicas forward cancels of its builds there. */
  async saveReplica(entry: ReplicaEntry): Promise<void> {
    await this.store.put(keys.replica(entry.builder), JSON.stringify(entry), { contentType: 'application/json' });
  }

  async readReplica(builder: string, signal?: AbortSignal): Promise<ReplicaEntry | undefined> {
    return readJsonObject<ReplicaEntry>(this.store, keys.replica(builder), signal ? { signal } : {});
  }

  /** Waits for every write in flight. */
  async drain(): Promise<void> {
    await Promise.all([...this.logBuffers.keys()].map((id) => this.flushLog(id)));
    await Promise.all([...this.writing.values()].map((entry) => entry.done));
  }
}

/** `builder/replicas/<id>.json`: a replica's advertised URL, written when it starts. */
export interface ReplicaEntry {
  builder: string;
  url: string;
  startedAt: string;
}

export function notFound(id: string): BundleError {
  return new BundleError('ERR_BUILD_NOT_FOUND', `No build ${id} on this builder.`);
}
