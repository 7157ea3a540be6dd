/**
 * The one storage interface of bundle-dispatch. Sources, results, build records and logs all
 * go through an {@link ObjectStore}; two implementations exist: a directory (`dir-store.ts`,
 * the embedded default) and S3 or any S3-compatible endpoint (`s3-store.ts`, the only module
 * that loads `@aws-sdk/*`). See docs/storage.md for the choices behind it.
 */
import type { Readable } from 'node:stream';
import { BundleError } from '../errors.js';

/** What a store knows about one object. */
export interface ObjectInfo {
  /** The key inside the store (without the store's prefix). */
  key: string;
  /** Size in bytes of the whole object. */
  size: number;
  /**
   * Lowercase hex sha256 of the whole object, as recorded when it was written. Undefined
   * only for objects written by something else (a presigned PUT without a hash, a file
   * copied into a directory store by hand) and in S3 listings (which carry no metadata).
   */
  sha256?: string;
  /** User metadata (lowercase keys). The reserved `sha256` entry is never in here. */
  metadata: Record<string, string>;
  contentType?: string;
  /** S3 ETag (quotes removed); undefined for directory stores. */
  etag?: string;
  lastModified?: Date;
}

/** Progress of a put or copy: bytes handed to the store so far, and the total when known. */
export interface Progress {
  loaded: number;
  total?: number;
}

/** Options every operation takes. */
export interface OperationOptions {
  /** Cancels the operation; the promise (or stream) rejects with ERR_ABORTED. */
  signal?: AbortSignal;
}

export interface PutOptions extends OperationOptions {
  /**
   * The body's sha256 when the caller knows it (content-addressed uploads do). The body is
   * still hashed while it streams; a mismatch fails with ERR_INTEGRITY before the object
   * becomes visible. When absent the hash is computed while streaming and recorded.
   */
  sha256?: string;
  /** Size in bytes when known; only used for progress totals. */
  size?: number;
  contentType?: string;
  /** User metadata; keys are lowercased, `sha256` is reserved. */
  metadata?: Record<string, string>;
  /**
   * Refuse to replace an existing object with different content (ERR_STORE_EXISTS). The
   * same content again is accepted and leaves the object as it is. Defaults to the store's
   * `immutable` option.
   */
  immutable?: boolean;
  onProgress?: (progress: Progress) => void;
}

/** Byte range, both ends inclusive like HTTP `Range: bytes=start-end`. */
export interface ByteRange {
  start: number;
  /** Last byte included; omitted = to the end. */
  end?: number;
}

export interface GetOptions extends OperationOptions {
  range?: ByteRange;
  /**
   * Hash the body while it streams and compare it with `sha256` (or, when absent, the
   * recorded sha256). A mismatch makes the stream fail with ERR_INTEGRITY and removes the
   * stored object. Not allowed together with `range`.
   */
  verify?: boolean;
  /** Expected sha256 for `verify`, overriding the recorded one. */
  sha256?: string;
}

export interface GetResult {
  info: ObjectInfo;
  /** The bytes (the requested range only, when `range` is given). Always consume or destroy it. */
  body: Readable;
}

export interface ListOptions extends OperationOptions {
  /** Only keys starting with this string (not validated as a key: `a/b` and `a/b-` both work). */
  prefix?: string;
  /** Opaque cursor from the previous page's `cursor`. */
  cursor?: string;
  /** Maximum items per page (default 1000). A page may hold fewer even when more follow. */
  limit?: number;
}

export interface ListPage {
  /** Keys in ascending (byte) order. */
  items: ObjectInfo[];
  /** Present when more items follow; pass it back as `cursor`. */
  cursor?: string;
}

export interface CopyOptions extends OperationOptions {
  /** Expected sha256 of the source; the copy fails with ERR_INTEGRITY when it differs. */
  sha256?: string;
  /** Refuse to replace a different object at the destination (see PutOptions.immutable). */
  immutable?: boolean;
  onProgress?: (progress: Progress) => void;
}

export interface PresignOptions extends OperationOptions {
  /** Seconds the URL stays valid; defaults to the store's `presignExpiresIn`. */
  expiresIn?: number;
}

export interface PresignPutOptions extends PresignOptions {
  /**
   * When known, recorded as the object's sha256: the uploader must then send the returned
   * `headers` with its PUT.
   */
  sha256?: string;
  contentType?: string;
}

export interface PresignedRequest {
  url: string;
  method: 'GET' | 'PUT';
  /** Headers the client must send as they are (they are part of the signature). */
  headers: Record<string, string>;
  expiresAt: Date;
}

export type StoreKind = 's3' | 'dir';

/**
 * A flat namespace of immutable-by-choice objects addressed by `/`-separated keys.
 *
 * @example
 * ```ts
 * const store = await openStore('s3://releases/bundles', { s3: { region: 'eu-west-1' } });
 * await store.put('pkg/1.0.0/pkg.tgz', createReadStream(file), { immutable: true });
 * const { body } = await store.get('pkg/1.0.0/pkg.tgz', { verify: true });
 * ```
 */
export interface ObjectStore {
  readonly kind: StoreKind;
  /** Where the store lives, as a URL: `s3://bucket/prefix/` or `file:///abs/dir/`. */
  readonly location: string;
  /** Writes an object atomically: readers see the old object or the whole new one. */
  put(key: string, body: PutBody, options?: PutOptions): Promise<ObjectInfo>;
  /** Streams an object; ERR_STORE_NOT_FOUND when it does not exist. */
  get(key: string, options?: GetOptions): Promise<GetResult>;
  /** Size, sha256 and metadata; ERR_STORE_NOT_FOUND when it does not exist. */
  head(key: string, options?: OperationOptions): Promise<ObjectInfo>;
  exists(key: string, options?: OperationOptions): Promise<boolean>;
  /** Removes an object; removing a missing object is not an error. */
  delete(key: string, options?: OperationOptions): Promise<void>;
  list(options?: ListOptions): Promise<ListPage>;
  /** Copies within this store (server-side on S3), keeping sha256 and metadata. */
  copy(fromKey: string, toKey: string, options?: CopyOptions): Promise<ObjectInfo>;
  /**
   * Server-side copy from another store when this store can do it (S3 → S3 on the same
   * endpoint); resolves to undefined when it cannot, so the caller streams instead.
   */
  copyFrom?(source: ObjectStore, sourceKey: string, toKey: string, options?: CopyOptions): Promise<ObjectInfo | undefined>;
  /** A URL anyone can GET for `expiresIn` seconds. Directory stores return a `file:` URL. */
  presignGet(key: string, options?: PresignOptions): Promise<PresignedRequest>;
  /** A URL anyone can PUT to for `expiresIn` seconds (S3 only; ERR_STORE_URL elsewhere). */
  presignPut(key: string, options?: PresignPutOptions): Promise<PresignedRequest>;
  /**
   * Checks, without a request to the store, that it is configured well enough to be used (S3:
   * a region and credentials the SDK can resolve); ERR_CONFIG saying what to set otherwise.
   */
  checkConfiguration?(options?: OperationOptions): Promise<void>;
  /** Releases what the store holds open (the S3 client's sockets); the store is unusable after. */
  close(): void;
}

/** What `put` accepts. Strings are written as UTF-8. */
export type PutBody = Readable | AsyncIterable<Uint8Array | string> | Uint8Array | string;

/** Key segment that stores keep for themselves (temp files, staging, metadata). */
export const RESERVED_SEGMENT = '.bundle-dispatch';

/** The largest object a single S3 CopyObject can copy (5 GiB). */
export const MAX_SINGLE_COPY_BYTES = 5 * 1024 ** 3;

/**
 * Checks a key and returns it unchanged: `/`-separated, relative, no empty, `.` or `..`
 * segments, no backslashes or control characters, at most 1024 bytes, and no
 * `.bundle-dispatch` segment (reserved for the stores). Anything else is ERR_STORE_KEY.
 */
export function validateKey(key: string): string {
  const fail = (why: string): never => {
    throw new BundleError('ERR_STORE_KEY', `Invalid object key ${JSON.stringify(key)}: ${why}.`, {
      hint: 'Keys are relative paths such as "name/1.0.0/file.tgz": no "..", no leading "/", no empty segments.',
      details: { key },
    });
  };
  if (typeof key !== 'string' || key.length === 0) return fail('it is empty');
  if (Buffer.byteLength(key) > 1024) return fail('it is longer than 1024 bytes');
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(key)) return fail('it contains a control character');
  if (key.includes('\\')) return fail('it contains a backslash');
  if (key.startsWith('/') || /^[a-zA-Z]:/.test(key)) return fail('it is absolute');
  const segments = key.split('/');
  for (const segment of segments) {
    if (segment === '') return fail('it has an empty segment');
    if (segment === '.' || segment === '..') return fail(`it has a "${segment}" segment`);
  }
  // Reserved at any depth: a store whose prefix is inside another store's keeps its
  // internals there, and the outer store must not list or overwrite them.
  if (segments.includes(RESERVED_SEGMENT)) return fail(`"${RESERVED_SEGMENT}" is reserved for the stores themselves`);
  return key;
}

/** Checks a sha256 given by a caller: 64 hex digits, returned lowercase. */
export function normalizeSha256(sha256: string): string {
  if (!/^[0-9a-fA-F]{64}$/.test(sha256)) {
    throw new BundleError('ERR_INTEGRITY', `Not a sha256 hex digest: ${JSON.stringify(sha256)}.`);
  }
  return sha256.toLowerCase();
}

/** Lowercases metadata keys and checks that they do not use the reserved `sha256` name. */
export function normalizeMetadata(metadata: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(metadata ?? {})) {
    const lower = name.toLowerCase();
    if (lower === 'sha256') {
      throw new BundleError('ERR_STORE_KEY', 'Metadata name "sha256" is reserved; pass the hash as the sha256 option.');
    }
    if (!/^[a-z0-9][a-z0-9-]*$/.test(lower)) {
      throw new BundleError('ERR_STORE_KEY', `Invalid metadata name ${JSON.stringify(name)}: use letters, digits and "-".`);
    }
    out[lower] = String(value);
  }
  return out;
}

export function integrityError(location: string, expected: string, actual: string): BundleError {
  return new BundleError('ERR_INTEGRITY', `Integrity check failed for ${location}: expected sha256 ${expected}, got ${actual}.`, {
    hint: 'The stored object was removed; write it again from its source.',
    details: { location, expected, actual },
  });
}
