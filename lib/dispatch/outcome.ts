/**
 * What a dispatch run reports: the events it emits while it works and the per-target outcomes
 * it returns. Shared by the phases (lib/dispatch/*.ts), the run history and the CLI's views.
 */
import type { BuildMethod, BuildRecord, Isolation, LogLine, PrebuiltBinary, Verification } from '../protocol.js';
import type { PreparedInput } from './input.js';
import type { SourceTarball } from './lockfile.js';

export type TargetState = 'planned' | 'cached' | 'reused' | 'queued' | 'running' | 'copying' | 'succeeded' | 'failed' | 'cancelled';

/**
 * Something dispatch did about a builder other than just using it: a pool member skipped, a
 * request sent elsewhere or retried, a lost build sent again, a wait for a draining pool.
 * Shown live, in the summary and by `status`, so that a delivered bundle never hides a failover.
 */
export interface FailoverNote {
  kind: 'skipped' | 'failed-over' | 'retried' | 'redispatched' | 'waiting';
  /** The builder it is about (its URL). */
  builder: string;
  /** One line: what happened and what was done. */
  message: string;
  at: string;
}

/** What dispatch tells its caller while it works (the CLI's views and the run history listen). */
export type DispatchEvent =
  | { type: 'phase'; phase: 'cache' | 'upload' | 'manifest'; state: 'started' | 'finished'; detail?: string }
  | { type: 'target'; target: string; state: TargetState; detail?: string; builder?: string; buildId?: string }
  | { type: 'record'; target: string; record: BuildRecord }
  | { type: 'log'; target: string; line: LogLine }
  | { type: 'failover'; target: string; note: FailoverNote };

/** Where a bundle's signed provenance is, and which key signed it. */
export interface ProvenanceRef {
  key: string;
  keyid: string;
}

/** The destination key of a bundle's provenance: beside it, `.intoto.jsonl` appended. */
export function provenanceKey(bundleKey: string): string {
  return `${bundleKey}.intoto.jsonl`;
}

export interface TargetSuccess {
  target: string;
  ok: true;
  /** True when the destination already held the build key (no build ran). */
  cached: boolean;
  /**
   * True when the builder already held a finished build of this build key (an earlier run built
   * it and did not deliver it here): its result was copied, no build ran in this run.
   */
  reused?: true;
  buildKey: string;
  /** Destination key of the bundle. */
  key: string;
  file: string;
  sha256: string;
  size: number;
  node?: string;
  abi?: string;
  npm?: string;
  /** How the builder made it (native, cross-compiled, cross) and proved its addons. */
  method?: BuildMethod;
  verification?: Verification;
  /** What isolated its install scripts on the builder (bubblewrap, a build user, both, none). */
  isolation?: Isolation;
  /** Packages whose prebuilt binaries were used instead of compiling (cross targets). */
  prebuilt?: PrebuiltBinary[];
  builder?: string;
  builderUrl?: string;
  buildId?: string;
  /** `<bundle key>.intoto.jsonl` beside the bundle, and the key id that signed it (verified before publishing). */
  provenance?: ProvenanceRef;
  /** Failovers and retries on the way (absent when there were none). */
  failovers?: FailoverNote[];
  durations: { queueMs?: number; buildMs?: number; copyMs?: number; totalMs: number };
}

export interface TargetFailure {
  target: string;
  ok: false;
  buildKey: string;
  /** True when it was stopped (Ctrl-C, --fail-fast) rather than failing on its own. */
  cancelled: boolean;
  error: { code: string; message: string };
  builder?: string;
  builderUrl?: string;
  buildId?: string;
  failovers?: FailoverNote[];
  durations: { totalMs: number };
}

export type TargetOutcome = TargetSuccess | TargetFailure;

export interface DispatchResult {
  runId: string;
  ok: boolean;
  interrupted: boolean;
  package: { name: string; version: string };
  input: { spec: string; kind: PreparedInput['kind']; sha256: string; commit?: string };
  source: { key: string; sha256: string; size: number; uploaded: boolean };
  lockfile: SourceTarball['lockfile'];
  targets: TargetOutcome[];
  /** Destination key of manifest.json (absent when interrupted). */
  manifest?: string;
  destination: string;
  startedAt: string;
  durationMs: number;
}
