/**
 * The cache check: a destination that holds a build key's marker, the bundle it names (with the
 * marker's sha256) and its provenance already has that target; nothing is built for it.
 */
import { isBundleError } from '../errors.js';
import { readJsonObject, type ObjectStore } from '../storage/index.js';
import { markerKey } from './keys.js';
import type { TargetSuccess } from './outcome.js';

/** What a destination keeps per build key: the delivered bundle, for cache hits. */
export type CacheMarker = Pick<TargetSuccess, 'buildKey' | 'target' | 'key' | 'file' | 'sha256' | 'size' | 'node' | 'abi' | 'npm' | 'method' | 'verification' | 'isolation' | 'prebuilt' | 'builder' | 'buildId' | 'provenance'> & { createdAt: string };

/** A small JSON object (marker, manifest); undefined when absent or when it does not parse. */
export async function readJson<T>(store: ObjectStore, key: string, signal: AbortSignal): Promise<T | undefined> {
  try {
    return await readJsonObject<T>(store, key, { signal });
  } catch (error) {
    if (isBundleError(error, 'ERR_STORE_IO') && error.cause instanceof SyntaxError) return undefined;
    throw error;
  }
}

/** The cache hit for `buildKey` in `destination`, or undefined when it has to be built. */
export async function findCached(destination: ObjectStore, pkg: { name: string; version: string }, target: string, buildKey: string, signal: AbortSignal): Promise<TargetSuccess | undefined> {
  const marker = await readJson<CacheMarker>(destination, markerKey(pkg, buildKey), signal);
  if (!marker) return undefined;
  const [bundle, statements] = await Promise.all([
    destination.head(marker.key, { signal }).catch(() => undefined),
    // A bundle delivered without its provenance (by a version before it existed) is built again.
    marker.provenance ? destination.head(marker.provenance.key, { signal }).catch(() => undefined) : undefined,
  ]);
  if (!bundle || !statements || (bundle.sha256 !== undefined && bundle.sha256 !== marker.sha256)) return undefined;
  return {
    target, ok: true, cached: true, buildKey, key: marker.key, file: marker.file, sha256: marker.sha256, size: marker.size,
    ...(marker.node ? { node: marker.node } : {}), ...(marker.abi ? { abi: marker.abi } : {}), ...(marker.npm ? { npm: marker.npm } : {}),
    ...(marker.method ? { method: marker.method } : {}), ...(marker.verification ? { verification: marker.verification } : {}), ...(marker.isolation ? { isolation: marker.isolation } : {}), ...(marker.prebuilt ? { prebuilt: marker.prebuilt } : {}),
    ...(marker.builder ? { builder: marker.builder } : {}), ...(marker.buildId ? { buildId: marker.buildId } : {}),
    ...(marker.provenance ? { provenance: marker.provenance } : {}),
    durations: { totalMs: 0 },
  };
}
