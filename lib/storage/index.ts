/**
 * Storage entry point: the ObjectStore interface, `openStore(location)` and `copyObject`.
 * The S3 store is loaded with a dynamic import only when an `s3://` location is opened, so
 * runs that use directories only never load the AWS SDK.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BundleError } from '../errors.js';
import { DirStore } from './dir-store.js';
import type { ObjectInfo, ObjectStore } from './object-store.js';
import type { S3StoreOptions } from './s3-store.js';

export * from './object-store.js';
export { copyObject } from './copy.js';
export { readJsonObject, readWhole, type ReadOptions } from './read.js';
export { DirStore, type DirStoreOptions } from './dir-store.js';
export type { S3StoreOptions } from './s3-store.js';

/** A parsed store location. */
export type StoreLocation = { kind: 's3'; bucket: string; prefix: string } | { kind: 'dir'; path: string };

export interface OpenStoreOptions {
  /** Base for relative directory paths (no process.cwd() default inside lib). */
  cwd?: string;
  /** Default for every put's `immutable`. */
  immutable?: boolean;
  /** Settings for `s3://` locations, from the config layer; bucket and prefix come from the URL. */
  s3?: Omit<S3StoreOptions, 'bucket' | 'prefix' | 'immutable'>;
}

/**
 * Parses `s3://bucket/prefix`, `file:///abs/dir` or a plain path (relative ones need `cwd`).
 * Anything else is ERR_STORE_URL.
 */
export function parseLocation(location: string, cwd?: string): StoreLocation {
  const bad = (why: string): never => {
    throw new BundleError('ERR_STORE_URL', `Invalid store location ${JSON.stringify(location)}: ${why}.`, {
      hint: 'Use s3://bucket/prefix, file:///absolute/dir or a directory path.',
      details: { location },
    });
  };
  if (!location) return bad('it is empty');
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(location)?.[1]?.toLowerCase();
  if (scheme === 's3') {
    const match = /^s3:\/\/([^/?#]+)\/?([^?#]*)$/i.exec(location);
    if (!match?.[1]) return bad('it has no bucket');
    const bucket = match[1];
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) return bad(`${JSON.stringify(bucket)} is not a valid bucket name`);
    const prefix = decodeURIComponent(match[2] ?? '').replace(/\/+$/, '');
    return { kind: 's3', bucket, prefix };
  }
  if (scheme === 'file') {
    try {
      return { kind: 'dir', path: fileURLToPath(location) };
    } catch (error) {
      return bad(error instanceof Error ? error.message : String(error));
    }
  }
  // One-letter "schemes" are Windows drive letters.
  if (scheme && scheme.length > 1) return bad(`the "${scheme}:" scheme is not supported`);
  if (path.isAbsolute(location)) return { kind: 'dir', path: path.normalize(location) };
  if (!cwd) return bad('a relative path needs a base directory (cwd)');
  return { kind: 'dir', path: path.resolve(cwd, location) };
}

/**
 * Opens the store a location names.
 *
 * @example
 * ```ts
 * const dist = await openStore('./dist', { cwd });
 * const releases = await openStore('s3://releases/bundles', { s3: { region: 'eu-west-1' } });
 * ```
 */
export async function openStore(location: string, options: OpenStoreOptions = {}): Promise<ObjectStore> {
  const parsed = parseLocation(location, options.cwd);
  if (parsed.kind === 'dir') {
    return new DirStore({ root: parsed.path, ...(options.immutable === undefined ? {} : { immutable: options.immutable }) });
  }
  const { S3Store } = await import('./s3-store.js');
  return new S3Store({
    ...options.s3,
    bucket: parsed.bucket,
    ...(parsed.prefix ? { prefix: parsed.prefix } : {}),
    ...(options.immutable === undefined ? {} : { immutable: options.immutable }),
  });
}

/** Every object under a prefix, page by page. */
export async function* listAllObjects(store: ObjectStore, options: { prefix?: string; signal?: AbortSignal; pageSize?: number } = {}): AsyncGenerator<ObjectInfo> {
  let cursor: string | undefined;
  do {
    const page = await store.list({
      ...(options.prefix === undefined ? {} : { prefix: options.prefix }),
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.pageSize ? { limit: options.pageSize } : {}),
      ...(cursor ? { cursor } : {}),
    });
    yield* page.items;
    cursor = page.cursor;
  } while (cursor);
}
