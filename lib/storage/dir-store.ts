/**
 * An ObjectStore in a plain directory: each object is an ordinary file at `<root>/<key>`, so
 * `./dist/` holds tarballs a person can use directly. Store internals live under
 * `<root>/.bundle-dispatch/`: `tmp/` for files being written and `meta/<dev>-<ino>.json`
 * for each object's sha256 and metadata.
 *
 * Why the metadata file is named after the data file's inode: a write creates the temp
 * file, writes its metadata under the temp file's inode, then renames the temp file onto
 * the key (rename keeps the inode). The metadata is therefore in place before the object is
 * visible, and a reader that finds a file always finds the metadata of exactly that file —
 * no window where new data meets old metadata, even with concurrent writers. The metadata
 * also records size and mtime, so a stale file whose inode was reused is recognised.
 */
import { createReadStream, createWriteStream, type Stats } from 'node:fs';
import { link, mkdir, open, readFile, readdir, rename, rm, rmdir, stat, unlink, writeFile } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { Readable, addAbortSignal } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import { BundleError, abortError, throwIfAborted } from '../errors.js';
import {
  RESERVED_SEGMENT,
  normalizeMetadata,
  normalizeSha256,
  validateKey,
  type CopyOptions,
  type GetOptions,
  type GetResult,
  type ListOptions,
  type ListPage,
  type ObjectInfo,
  type ObjectStore,
  type OperationOptions,
  type PresignOptions,
  type PresignPutOptions,
  type PresignedRequest,
  type PutBody,
  type PutOptions,
} from './object-store.js';
import { HashState, createVerifyStream, discardBody, hashChunks, toChunks } from './streams.js';
import { copyObject } from './copy.js';

export interface DirStoreOptions {
  /** Absolute path of the directory; created on first write. */
  root: string;
  /** Optional sub-directory (a key prefix) so several stores can share one root. */
  prefix?: string;
  /** Default for PutOptions.immutable (false). */
  immutable?: boolean;
}

interface MetaRecord {
  key: string;
  size: number;
  mtimeMs: number;
  sha256: string;
  contentType?: string;
  metadata: Record<string, string>;
}

const DEFAULT_PAGE = 1000;

export class DirStore implements ObjectStore {
  readonly kind = 'dir' as const;
  readonly location: string;
  readonly root: string;
  readonly immutable: boolean;
  readonly #internal: string;

  constructor(options: DirStoreOptions) {
    if (!path.isAbsolute(options.root)) {
      throw new BundleError('ERR_STORE_URL', `A directory store needs an absolute path, got ${JSON.stringify(options.root)}.`);
    }
    const prefix = options.prefix ? validateKey(options.prefix.replace(/\/+$/, '')) : undefined;
    this.root = prefix ? path.join(options.root, ...prefix.split('/')) : path.resolve(options.root);
    this.immutable = options.immutable ?? false;
    this.location = pathToFileURL(this.root + path.sep).href;
    this.#internal = path.join(this.root, RESERVED_SEGMENT);
  }

  #path(key: string): string {
    return path.join(this.root, ...validateKey(key).split('/'));
  }

  #metaPath(stats: Stats): string {
    return path.join(this.#internal, 'meta', `${stats.dev}-${stats.ino}.json`);
  }

  async #readMeta(key: string, stats: Stats): Promise<MetaRecord | undefined> {
    try {
      const meta = JSON.parse(await readFile(this.#metaPath(stats), 'utf8')) as MetaRecord;
      // A metadata file whose size/mtime do not match belongs to an earlier file that had this inode.
      if (meta.size === stats.size && Math.abs(meta.mtimeMs - stats.mtimeMs) < 1 && meta.key === key) return meta;
    } catch (error) {
      if (!isCode(error, 'ENOENT') && !(error instanceof SyntaxError)) throw ioError('read metadata of', key, error);
    }
    return undefined;
  }

  #info(key: string, stats: Stats, meta: MetaRecord | undefined): ObjectInfo {
    return {
      key,
      size: stats.size,
      ...(meta ? { sha256: meta.sha256 } : {}),
      metadata: meta ? { ...meta.metadata } : {},
      ...(meta?.contentType ? { contentType: meta.contentType } : {}),
      lastModified: stats.mtime,
    };
  }

  async #statFile(key: string, file: string): Promise<Stats | undefined> {
    try {
      const stats = await stat(file);
      return stats.isFile() ? stats : undefined;
    } catch (error) {
      if (isCode(error, 'ENOENT') || isCode(error, 'ENOTDIR')) return undefined;
      throw ioError('stat', key, error);
    }
  }

  /**
   * The files on disk that hold `key`: its data file and, when there is one, its metadata file
   * (what `delete` removes), with their sizes. Empty when the key does not exist.
   */
  async files(key: string): Promise<Array<{ path: string; bytes: number }>> {
    const file = this.#path(key);
    const stats = await this.#statFile(key, file);
    if (!stats) return [];
    const meta = await stat(this.#metaPath(stats)).catch(() => undefined);
    return [{ path: file, bytes: stats.size }, ...(meta?.isFile() ? [{ path: this.#metaPath(stats), bytes: meta.size }] : [])];
  }

  async head(key: string, options: OperationOptions = {}): Promise<ObjectInfo> {
    throwIfAborted(options.signal);
    const file = this.#path(key);
    const stats = await this.#statFile(key, file);
    if (!stats) throw notFound(this.location, key);
    return this.#info(key, stats, await this.#readMeta(key, stats));
  }

  async exists(key: string, options: OperationOptions = {}): Promise<boolean> {
    throwIfAborted(options.signal);
    return (await this.#statFile(key, this.#path(key))) !== undefined;
  }

  async put(key: string, body: PutBody, options: PutOptions = {}): Promise<ObjectInfo> {
    const { signal } = options;
    let target: string;
    let expected: string | undefined;
    let metadata: Record<string, string>;
    try {
      target = this.#path(key);
      expected = options.sha256 === undefined ? undefined : normalizeSha256(options.sha256);
      metadata = normalizeMetadata(options.metadata);
      throwIfAborted(signal);
    } catch (error) {
      discardBody(body);
      throw error;
    }
    const immutable = options.immutable ?? this.immutable;
    const tmpDir = path.join(this.#internal, 'tmp');
    const metaDir = path.join(this.#internal, 'meta');
    try {
      await mkdir(tmpDir, { recursive: true });
      await mkdir(metaDir, { recursive: true });
    } catch (error) {
      discardBody(body);
      throw ioError('create the store directory for', key, error);
    }
    const tmp = path.join(tmpDir, randomUUID());
    const state = new HashState();
    let loaded = 0;
    let metaFile: string | undefined;
    let metaTmp: string | undefined;
    let committed = false;
    try {
      const chunks = hashChunks(toChunks(body), state, {
        location: `${this.location}${key}`,
        ...(expected ? { expected } : {}),
        ...(signal ? { signal } : {}),
        onChunk: (size) => {
          loaded += size;
          options.onProgress?.({ loaded, ...(options.size === undefined ? {} : { total: options.size }) });
        },
      });
      await pipeline(Readable.from(chunks, { objectMode: false }), createWriteStream(tmp, { flags: 'wx' }), ...(signal ? [{ signal }] : []));
      const handle = await open(tmp, 'r+');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
      const stats = await stat(tmp);
      const record: MetaRecord = {
        key,
        size: stats.size,
        mtimeMs: stats.mtimeMs,
        sha256: state.finish(),
        ...(options.contentType ? { contentType: options.contentType } : {}),
        metadata,
      };
      metaFile = this.#metaPath(stats);
      // Written then renamed, so a reader never sees half a JSON file.
      metaTmp = `${metaFile}.${randomUUID()}.tmp`;
      await writeFile(metaTmp, JSON.stringify(record));
      await rename(metaTmp, metaFile);
      metaTmp = undefined;
      throwIfAborted(signal);
      await mkdir(path.dirname(target), { recursive: true });
      const previous = await this.#statFile(key, target);
      if (immutable) {
        try {
          // link() fails if the key exists: an atomic "create only", unlike check-then-rename.
          await link(tmp, target);
        } catch (error) {
          if (!isCode(error, 'EEXIST')) throw error;
          const existing = await this.head(key);
          if (existing.sha256 === record.sha256) return existing;
          throw existsError(this.location, key, existing.sha256, record.sha256);
        }
      } else {
        await rename(tmp, target);
      }
      committed = true;
      if (previous && !(await sameInode(previous, target))) await rm(this.#metaPath(previous), { force: true });
      return this.#info(key, await stat(target), record);
    } catch (error) {
      if (signal?.aborted) throw abortError(signal);
      if (error instanceof BundleError) throw error;
      if (isCode(error, 'ENOTDIR') || isCode(error, 'EISDIR') || isCode(error, 'EEXIST')) {
        throw new BundleError('ERR_STORE_KEY', `Cannot write ${JSON.stringify(key)} in ${this.location}: a file and a directory would share a name.`, {
          cause: error,
          details: { key },
        });
      }
      throw ioError('write', key, error);
    } finally {
      await rm(tmp, { force: true }).catch(() => undefined);
      if (metaTmp) await rm(metaTmp, { force: true }).catch(() => undefined);
      if (!committed && metaFile) await rm(metaFile, { force: true }).catch(() => undefined);
    }
  }

  async get(key: string, options: GetOptions = {}): Promise<GetResult> {
    const { signal, range } = options;
    throwIfAborted(signal);
    if (range && options.verify) throw new BundleError('ERR_STORE_IO', 'A byte range cannot be verified against the whole object\'s sha256.');
    const file = this.#path(key);
    const info = await this.head(key, options);
    const expected = options.sha256 === undefined ? info.sha256 : normalizeSha256(options.sha256);
    if (options.verify && !expected) {
      throw new BundleError('ERR_INTEGRITY', `${this.location}${key} has no recorded sha256 to verify against.`);
    }
    if (range && (range.start < 0 || range.start >= Math.max(info.size, 1) || (range.end !== undefined && range.end < range.start))) {
      throw new BundleError('ERR_STORE_IO', `Range ${range.start}-${range.end ?? ''} is outside ${this.location}${key} (${info.size} bytes).`);
    }
    let body: Readable = createReadStream(file, range ? { start: range.start, ...(range.end === undefined ? {} : { end: range.end }) } : {});
    if (options.verify && expected) {
      const verify = createVerifyStream(expected, `${this.location}${key}`, () => this.delete(key));
      body.on('error', (error) => verify.destroy(error));
      body = body.pipe(verify);
    }
    if (signal) addAbortSignal(signal, body);
    return { info, body };
  }

  async delete(key: string, options: OperationOptions = {}): Promise<void> {
    throwIfAborted(options.signal);
    const file = this.#path(key);
    const stats = await this.#statFile(key, file);
    if (!stats) return;
    try {
      await unlink(file);
      await rm(this.#metaPath(stats), { force: true });
    } catch (error) {
      if (isCode(error, 'ENOENT')) return;
      throw ioError('delete', key, error);
    }
    // Empty parent directories go too, so `dist/` does not fill with empty version folders.
    let dir = path.dirname(file);
    while (dir !== this.root && dir.startsWith(this.root)) {
      try {
        await rmdir(dir);
      } catch {
        break;
      }
      dir = path.dirname(dir);
    }
  }

  async list(options: ListOptions = {}): Promise<ListPage> {
    throwIfAborted(options.signal);
    const prefix = options.prefix ?? '';
    const limit = Math.max(1, options.limit ?? DEFAULT_PAGE);
    const after = options.cursor === undefined ? undefined : decodeCursor(options.cursor);
    // Walk only the directory the prefix points into.
    const slash = prefix.lastIndexOf('/');
    const startDir = slash >= 0 ? prefix.slice(0, slash) : '';
    const keys: string[] = [];
    const walk = async (relative: string): Promise<void> => {
      throwIfAborted(options.signal);
      let entries;
      try {
        entries = await readdir(relative ? path.join(this.root, ...relative.split('/')) : this.root, { withFileTypes: true });
      } catch (error) {
        if (isCode(error, 'ENOENT') || isCode(error, 'ENOTDIR')) return;
        throw ioError('list', relative || '/', error);
      }
      for (const entry of entries) {
        const key = relative ? `${relative}/${entry.name}` : entry.name;
        if (entry.name === RESERVED_SEGMENT) continue;
        if (entry.isDirectory()) {
          if (key.startsWith(prefix) || prefix.startsWith(`${key}/`)) await walk(key);
        } else if (entry.isFile() && key.startsWith(prefix) && (after === undefined || key > after)) {
          keys.push(key);
        }
      }
    };
    if (startDir && !isValidKey(startDir)) return { items: [] };
    await walk(startDir);
    keys.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    const page = keys.slice(0, limit);
    const items: ObjectInfo[] = [];
    for (const key of page) {
      const stats = await this.#statFile(key, path.join(this.root, ...key.split('/')));
      if (stats) items.push(this.#info(key, stats, await this.#readMeta(key, stats)));
    }
    const last = page.at(-1);
    return keys.length > limit && last !== undefined ? { items, cursor: encodeCursor(last) } : { items };
  }

  async copy(fromKey: string, toKey: string, options: CopyOptions = {}): Promise<ObjectInfo> {
    return copyObject(this, fromKey, this, toKey, options);
  }

  async presignGet(key: string, options: PresignOptions = {}): Promise<PresignedRequest> {
    const info = await this.head(key, options);
    return {
      url: pathToFileURL(this.#path(info.key)).href,
      method: 'GET',
      headers: {},
      // A file: URL does not expire; the date says how long the caller asked for.
      expiresAt: new Date(Date.now() + (options.expiresIn ?? 3600) * 1000),
    };
  }

  close(): void {
    // Nothing held open between operations.
  }

  async presignPut(key: string, _options: PresignPutOptions = {}): Promise<PresignedRequest> {
    validateKey(key);
    throw new BundleError('ERR_STORE_URL', `A directory store (${this.location}) cannot hand out upload URLs.`, {
      hint: 'Use an s3:// store for builders that upload through presigned URLs, or write with store.put().',
    });
  }
}

async function sameInode(previous: Stats, file: string): Promise<boolean> {
  try {
    const now = await stat(file);
    return now.ino === previous.ino && now.dev === previous.dev;
  } catch {
    return false;
  }
}

function isValidKey(key: string): boolean {
  try {
    validateKey(key);
    return true;
  } catch {
    return false;
  }
}

function encodeCursor(key: string): string {
  return Buffer.from(key).toString('base64url');
}

function decodeCursor(cursor: string): string {
  return Buffer.from(cursor, 'base64url').toString();
}

function isCode(error: unknown, code: string): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === code;
}

function notFound(location: string, key: string): BundleError {
  return new BundleError('ERR_STORE_NOT_FOUND', `No object ${JSON.stringify(key)} in ${location}.`, { details: { key } });
}

function existsError(location: string, key: string, existing: string | undefined, wanted: string): BundleError {
  return new BundleError('ERR_STORE_EXISTS', `${location}${key} already exists with different content.`, {
    hint: 'Published objects are immutable; use a new version, or overwrite on purpose (--overwrite).',
    details: { key, existingSha256: existing, sha256: wanted },
  });
}

function ioError(action: string, key: string, error: unknown): BundleError {
  const code = (error as { code?: string } | undefined)?.code;
  return new BundleError(code === 'ENOSPC' ? 'ERR_DISK_FULL' : 'ERR_STORE_IO', `Could not ${action} ${JSON.stringify(key)}: ${error instanceof Error ? error.message : String(error)}`, {
    cause: error,
    details: { key },
  });
}
