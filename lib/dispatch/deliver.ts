/**
 * The verified copy: a finished build's result goes into the destination at its key only after
 * its signed provenance verifies with the builder's configured key for exactly this result,
 * source and target; the bytes are checked against the sha256 the statement names as they
 * stream. The cache marker and the provenance are written beside it.
 */
import { createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { BundleError, type ErrorCode } from '../errors.js';
import type { BuildRecord } from '../protocol.js';
import { verifyProvenance } from '../provenance/verify.js';
import { copyObject, type ObjectInfo, type ObjectStore } from '../storage/index.js';
import { formatTarget, type Target } from '../target.js';
import type { CacheMarker } from './cache.js';
import { markerKey, renderKey, type TemplateVars } from './keys.js';
import { provenanceKey, type ProvenanceRef } from './outcome.js';
import type { PoolBuilder } from './plan.js';

export interface DeliverOptions {
  record: BuildRecord;
  builder: PoolBuilder;
  label: string;
  target: Target;
  buildKey: string;
  /** Where a presigned PUT staged the result (when the builder did not keep it in its store). */
  stageKey: string;
  sourceSha256: string;
  sourceStore: ObjectStore;
  destination: ObjectStore;
  /** The builder's store is the source store (a local directory): copy from it directly. */
  shared: boolean;
  keyTemplate: string;
  vars: Omit<TemplateVars, 'file' | 'target'>;
  overwrite: boolean;
  /** Temp space for a result downloaded over HTTP. */
  tmpDir: string;
  signal: AbortSignal;
  /** The provenance verified: the copy starts. */
  onCopy?: () => void;
}

export interface Delivered {
  key: string;
  provenance: ProvenanceRef;
  copyMs: number;
}

/** An object's body as a stream that sends its GET on the first read; destroying it ends the GET. */
function lazyBody(store: ObjectStore, key: string, signal: AbortSignal): Readable {
  return Readable.from((async function* read() {
    const { body } = await store.get(key, { signal });
    try {
      for await (const chunk of body) yield chunk as Buffer;
    } finally {
      body.destroy();
    }
  })(), { objectMode: false });
}

/** Throws the build's own error unless it succeeded with a result. */
export function requireResult(record: BuildRecord): asserts record is BuildRecord & { artifact: NonNullable<BuildRecord['artifact']> } {
  if (record.state === 'succeeded' && record.artifact) return;
  const code = record.error?.code ?? (record.state === 'cancelled' ? 'ERR_ABORTED' : 'ERR_INTERNAL');
  throw new BundleError(code as ErrorCode, record.error?.message ?? `The build ended ${record.state}.`, { details: { buildId: record.id } });
}

export async function deliverBundle(options: DeliverOptions): Promise<Delivered> {
  const { record, builder, destination, sourceStore, signal } = options;
  requireResult(record);
  const { artifact } = record;
  if (!record.provenance) {
    throw new BundleError('ERR_PROVENANCE_UNSIGNED', `Build ${record.id} on ${builder.url} has no signed provenance; nothing was published.`, { hint: 'Run a builder of this version (it signs every bundle), or check its builder.signingKey.', details: { buildId: record.id } });
  }
  const verified = verifyProvenance([record.provenance], {
    keys: builder.keys, sha256: artifact.sha256, file: artifact.file, sourceSha256: options.sourceSha256,
    target: formatTarget(options.target, { withNode: false }), builder: record.builder,
  });
  options.onCopy?.();
  const copyStarted = Date.now();
  const key = renderKey(options.keyTemplate, { ...options.vars, file: artifact.file, target: options.target, ...(record.resolved ? { node: record.resolved.node } : {}), buildKey: options.buildKey });
  const immutable = !options.overwrite;
  // The cache marker is written while the bundle is copied: a cache hit also needs the bundle at
  // the marker's key with the marker's sha256, so a marker whose copy then fails never counts
  // (and is removed below).
  const provenance: ProvenanceRef = { key: provenanceKey(key), keyid: verified.keyid };
  const marker: CacheMarker = {
    buildKey: options.buildKey, target: options.label, key, file: artifact.file, sha256: artifact.sha256, size: artifact.size,
    ...record.resolved,
    builder: record.builder, buildId: record.id, provenance, createdAt: new Date().toISOString(),
  };
  const markerAt = markerKey({ name: options.vars.name, version: options.vars.version }, options.buildKey);
  const markerWritten = destination.put(markerAt, `${JSON.stringify(marker, null, 2)}\n`, { contentType: 'application/json', immutable: false, signal });
  markerWritten.catch(() => undefined);
  try {
    // What the store wrote: put and copy hash the bytes as they stream and refuse a mismatch.
    let written: ObjectInfo | undefined;
    if (artifact.key !== undefined && options.shared && (await sourceStore.exists(artifact.key, { signal }))) {
      written = await copyObject(sourceStore, artifact.key, destination, key, { sha256: artifact.sha256, immutable, signal });
    } else if (artifact.key !== undefined) {
      const file = path.join(options.tmpDir, `${options.buildKey}.tgz`);
      try {
        const downloaded = await builder.client.downloadArtifact(record.id, file, { signal });
        if (downloaded.sha256 !== artifact.sha256) {
          throw new BundleError('ERR_INTEGRITY', `The result of build ${record.id} has sha256 ${downloaded.sha256}, but the builder reported ${artifact.sha256}; nothing was copied.`);
        }
        written = await destination.put(key, createReadStream(file), { sha256: artifact.sha256, size: artifact.size, contentType: 'application/gzip', immutable, signal });
      } finally {
        await rm(file, { force: true });
      }
    } else {
      // Staged through a presigned PUT, so it has no recorded sha256 and a server-side copy could
      // not record a checked one: streamed into the destination, whose put hashes it and refuses
      // a mismatch. The GET starts when put first reads, so it runs alongside put's own look-up of
      // the destination key. The staged object is removed with the others at the end of the run.
      written = await destination.put(key, lazyBody(sourceStore, options.stageKey, signal), { sha256: artifact.sha256, size: artifact.size, contentType: 'application/gzip', immutable, signal });
    }
    if (written?.sha256 !== undefined && written.sha256 !== artifact.sha256) {
      throw new BundleError('ERR_INTEGRITY', `${destination.location}${key} has sha256 ${written.sha256}, expected ${artifact.sha256}.`);
    }
    // The envelope as the builder signed it, one per line (the in-toto JSONL form). Not
    // immutable: a rebuild of byte-identical bundle bytes brings an equally valid statement.
    await destination.put(provenance.key, `${JSON.stringify(record.provenance)}\n`, { contentType: 'application/jsonl', immutable: false, signal });
  } catch (error) {
    if (await markerWritten.then(() => true, () => false)) await destination.delete(markerAt).catch(() => undefined);
    throw error;
  }
  await markerWritten;
  return { key, provenance, copyMs: Date.now() - copyStarted };
}
