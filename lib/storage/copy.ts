import { BundleError, abortError } from '../errors.js';
import { normalizeSha256, validateKey, type CopyOptions, type ObjectInfo, type ObjectStore } from './object-store.js';

/**
 * Copies one object between any two stores (or within one), keeping its metadata and making
 * sure the destination ends up with the right sha256.
 *
 * - Server-side when the destination can copy from the source (`to.copyFrom`: S3 → S3 on the
 *   same endpoint, up to 5 GiB): no bytes pass through this process.
 * - Otherwise streamed: the source is read once and written with `put`, which hashes it
 *   while it streams and refuses to make the destination visible when the hash differs from
 *   the expected one (`options.sha256`, else the source's recorded sha256).
 *
 * A mismatch is ERR_INTEGRITY. The destination never shows the bad bytes; a source whose
 * content no longer matches its own recorded sha256 is corrupt and is removed, like `get`
 * with `verify` does.
 *
 * @example
 * ```ts
 * await copyObject(builderStore, `outputs/${id}.tgz`, destination, 'pkg/1.0.0/pkg.tgz', {
 *   sha256: artifact.sha256, immutable: true, signal,
 * });
 * ```
 */
export async function copyObject(from: ObjectStore, fromKey: string, to: ObjectStore, toKey: string, options: CopyOptions = {}): Promise<ObjectInfo> {
  validateKey(fromKey);
  validateKey(toKey);
  const wanted = options.sha256 === undefined ? undefined : normalizeSha256(options.sha256);
  if (from === to && fromKey === toKey) {
    const info = await from.head(fromKey, options);
    if (wanted && info.sha256 && info.sha256 !== wanted) throw mismatch(from, fromKey, wanted, info.sha256);
    return info;
  }
  if (to.copyFrom) {
    const copied = await to.copyFrom(from, fromKey, toKey, options);
    if (copied) return copied;
  }
  const { info, body } = await from.get(fromKey, options.signal ? { signal: options.signal } : {});
  if (wanted && info.sha256 && info.sha256 !== wanted) {
    body.destroy();
    throw mismatch(from, fromKey, wanted, info.sha256);
  }
  const expected = wanted ?? info.sha256;
  try {
    return await to.put(toKey, body, {
      ...(expected ? { sha256: expected } : {}),
      size: info.size,
      metadata: info.metadata,
      ...(info.contentType ? { contentType: info.contentType } : {}),
      ...(options.immutable === undefined ? {} : { immutable: options.immutable }),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
  } catch (error) {
    body.destroy();
    if (options.signal?.aborted) throw abortError(options.signal);
    if (error instanceof BundleError && error.code === 'ERR_INTEGRITY' && info.sha256 && info.sha256 === expected) {
      // The source's bytes do not match the hash it was stored with: it is the bad object.
      await from.delete(fromKey).catch(() => undefined);
      throw new BundleError('ERR_INTEGRITY', `${from.location}${fromKey} is corrupt (its content does not match its recorded sha256) and was removed; nothing was written to ${to.location}${toKey}.`, {
        cause: error,
        hint: 'Write the source object again.',
        details: { key: fromKey, ...(error.details ?? {}) },
      });
    }
    throw error;
  }
}

function mismatch(store: ObjectStore, key: string, expected: string, actual: string): BundleError {
  return new BundleError('ERR_INTEGRITY', `${store.location}${key} has sha256 ${actual}, expected ${expected}; nothing was copied.`, {
    details: { key, expected, actual },
  });
}
