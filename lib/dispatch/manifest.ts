/**
 * `manifest.json`, written last: what a run delivered (and failed) per target, merged over the
 * earlier runs' targets of the same source, plus the input, the lockfile and the commit.
 */
import type { BuildMethod, Isolation, PrebuiltBinary, Verification } from '../protocol.js';
import type { ObjectStore } from '../storage/index.js';
import type { DispatchResult, ProvenanceRef, TargetSuccess } from './outcome.js';

/** Version of manifest.json's shape. */
export const MANIFEST_VERSION = 1;

export interface Manifest {
  manifestVersion: number;
  name: string;
  version: string;
  updatedAt: string;
  runId: string;
  input: DispatchResult['input'];
  source: { key: string; sha256: string; size: number };
  lockfile: DispatchResult['lockfile'];
  targets: Record<string, ManifestTarget>;
}

export type ManifestTarget =
  | { ok: true; key: string; file: string; sha256: string; size: number; node?: string; abi?: string; npm?: string; method?: BuildMethod; verification?: Verification; isolation?: Isolation; prebuilt?: PrebuiltBinary[]; builder?: string; buildId?: string; provenance?: ProvenanceRef; buildKey: string; runId: string; cached: boolean; reused?: true; durations: TargetSuccess['durations'] }
  | { ok: false; error: { code: string; message: string }; builder?: string; buildId?: string; buildKey: string; runId: string };

export function buildManifest(result: DispatchResult, previous: Manifest | undefined): Manifest {
  const targets: Record<string, ManifestTarget> = {};
  // Earlier targets of the same source stay listed; targets of another source are dropped.
  if (previous && previous.source?.sha256 === result.source.sha256) Object.assign(targets, previous.targets);
  for (const outcome of result.targets) {
    if (outcome.ok) {
      const earlier = targets[outcome.target];
      // A cache hit keeps the entry of the run that built it.
      if (outcome.cached && earlier?.ok && earlier.buildKey === outcome.buildKey) continue;
      targets[outcome.target] = {
        ok: true, key: outcome.key, file: outcome.file, sha256: outcome.sha256, size: outcome.size,
        ...(outcome.node ? { node: outcome.node } : {}), ...(outcome.abi ? { abi: outcome.abi } : {}), ...(outcome.npm ? { npm: outcome.npm } : {}),
        ...(outcome.method ? { method: outcome.method } : {}), ...(outcome.verification ? { verification: outcome.verification } : {}), ...(outcome.isolation ? { isolation: outcome.isolation } : {}), ...(outcome.prebuilt ? { prebuilt: outcome.prebuilt } : {}),
        ...(outcome.builder ? { builder: outcome.builder } : {}), ...(outcome.buildId ? { buildId: outcome.buildId } : {}),
        ...(outcome.provenance ? { provenance: outcome.provenance } : {}),
        buildKey: outcome.buildKey, runId: result.runId, cached: outcome.cached, ...(outcome.reused ? { reused: true } : {}), durations: outcome.durations,
      };
    } else {
      targets[outcome.target] = {
        ok: false, error: outcome.error, ...(outcome.builder ? { builder: outcome.builder } : {}), ...(outcome.buildId ? { buildId: outcome.buildId } : {}),
        buildKey: outcome.buildKey, runId: result.runId,
      };
    }
  }
  return {
    manifestVersion: MANIFEST_VERSION,
    name: result.package.name,
    version: result.package.version,
    updatedAt: new Date().toISOString(),
    runId: result.runId,
    input: result.input,
    source: { key: result.source.key, sha256: result.source.sha256, size: result.source.size },
    lockfile: result.lockfile,
    targets,
  };
}

/**
 * Writes the manifest unless nothing changed: a run of cache hits that the manifest already
 * lists as they are leaves it alone, so a cron re-run on an unchanged input writes nothing.
 * Resolves to whether it wrote.
 */
export async function writeManifest(destination: ObjectStore, key: string, result: DispatchResult, previous: Manifest | undefined, signal: AbortSignal): Promise<boolean> {
  const unchanged = previous !== undefined && previous.source?.sha256 === result.source.sha256 && result.targets.every((outcome) => {
    const entry = previous.targets[outcome.target];
    return outcome.ok && outcome.cached && entry?.ok === true && entry.buildKey === outcome.buildKey && entry.key === outcome.key;
  });
  if (unchanged) return false;
  await destination.put(key, `${JSON.stringify(buildManifest(result, previous), null, 2)}\n`, { contentType: 'application/json', immutable: false, signal });
  return true;
}
