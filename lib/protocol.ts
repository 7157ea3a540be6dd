/**
 * The builder HTTP API (v1): request and response types shared by the builder
 * (`lib/builder/`) and its clients (`lib/builder/client.ts`, dispatch). The JSON schemas that
 * validate these shapes on the wire, and the OpenAPI document, are in `lib/builder/schemas.ts`.
 */
import type { TargetCpu, TargetLibc, TargetOs } from './target.js';

/** Version of the API; part of every path (`/v1/…`). */
export const API_VERSION = 'v1';

/** The header that makes `POST /v1/builds` idempotent: the same key returns the existing build. */
export const IDEMPOTENCY_HEADER = 'idempotency-key';

export type BuildState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

/** States a build never leaves. */
export const TERMINAL_STATES: readonly BuildState[] = ['succeeded', 'failed', 'cancelled'];

export function isTerminal(state: BuildState): boolean {
  return TERMINAL_STATES.includes(state);
}

/** Where the builder gets the source: an http(s) URL (presigned or plain) or a key in its own store. */
export type SourceSpec = { url: string; key?: never; sha256: string } | { key: string; url?: never; sha256: string };

/** The target as a JSON object; `node` is a semver range. */
export interface TargetSpec {
  os: TargetOs;
  cpu: TargetCpu;
  libc?: TargetLibc;
  node?: string;
}

/**
 * Where the result goes: a URL the builder PUTs the `.tgz` to (a presigned S3 URL), with the
 * headers that are part of its signature. Without it the result goes to the builder's store.
 */
export interface OutputSpec {
  url: string;
  headers?: Record<string, string>;
}

/**
 * What a client may change per build. Deliberately small: paths, env allow-lists and registry
 * credentials are the builder's own configuration and are never taken from a request.
 */
export interface RequestOverrides {
  registry?: string;
  scopes?: Record<string, string>;
  /** Extra environment variables for npm and scripts (not secrets: they are logged). */
  env?: Record<string, string>;
  /** Seconds since the epoch for every mtime in the bundle. */
  sourceDateEpoch?: number;
  /**
   * zlib level of the bundle's gzip, 1 (fastest) to 9 (smallest); absent: {@link DEFAULT_GZIP_LEVEL}.
   * Changes the .tgz's bytes, never the tar inside (tarSha256). Sent only when not the default,
   * so the build keys of runs that never set it stay what they were.
   */
  gzipLevel?: number;
}

/** The bundle's gzip level when a request or the config names none: zlib's own default. */
export const DEFAULT_GZIP_LEVEL = 6;

/** `POST /v1/builds` body. Send `Idempotency-Key: <build key>` with it. */
export interface CreateBuildRequest {
  source: SourceSpec;
  target: TargetSpec;
  output?: OutputSpec;
  overrides?: RequestOverrides;
  /** Free text shown in histories and the dashboard (`ci #512`, `cron nightly`). */
  label?: string;
  /**
   * What the dispatcher tells the builder for the build's provenance: its run id (part of the
   * invocation id) and the input as the user gave it. Recorded as given, as a claim of the
   * requester (externalParameters); the builder vouches only for what it did with the source.
   */
  provenance?: { runId?: string; input?: { spec: string; kind: string; sha256: string; commit?: string } };
}

/** A DSSE envelope (secure-systems-lab/dsse envelope.md): base64 payload, its type, signatures. */
export interface ProvenanceEnvelope {
  payload: string;
  payloadType: string;
  signatures: Array<{ keyid?: string; sig: string }>;
}

/** `GET /v1/keys`: the public keys this builder signs provenance with (one today; a list for rotation). */
export interface KeysResponse {
  keys: Array<{ keyid: string; algorithm: 'ed25519' | 'ecdsa-p256'; publicKey: string }>;
}

export type StepName = 'unpack' | 'configure' | 'runtime' | 'install' | 'bundle' | 'verify' | 'pack' | 'output';

export interface StepRecord {
  name: StepName;
  state: 'running' | 'finished' | 'failed';
  startedAt: string;
  finishedAt?: string;
  durationMs?: number;
}

export interface ArtifactRecord {
  /** Where the `.tgz` went: the output URL without its query (signatures stay secret)… */
  url?: string;
  /** …or its key in the builder's store (download it from `links.artifact`). */
  key?: string;
  /** sha256 of the gzipped bundle. */
  sha256: string;
  size: number;
  /** The bundle's file name (`{pkgfile}-{version}-{os}-{cpu}[-{libc}]-node{major}.tgz`). */
  file: string;
}

export interface BuildLinks {
  self: string;
  events: string;
  log: string;
  artifact?: string;
}

/**
 * How a builder makes a bundle for a target: `native` (its own platform: addons compiled and
 * loaded here), `cross-compiled` (another Linux CPU: addons cross-compiled and loaded under an
 * emulator, or header-checked only when allowed), `cross` (another platform without a
 * toolchain: only bundles in which nothing compiles).
 */
export type BuildMethod = 'native' | 'cross-compiled' | 'cross';
/**
 * `wine-node-api`: a win32 addon that takes only Node-API from node.exe, loaded under Wine by an
 * older Windows Node (the target's does not start there; Node-API is ABI-stable), its imports
 * checked against the target version's own node.exe. `structure`: macOS binaries verified by
 * structure, not run (cpu slice, file type, minimum macOS, libraries, code signature page hashes,
 * every symbol left to Node exported by the target Node).
 */
export type Verification = 'loaded' | 'emulated' | 'wine' | 'wine-node-api' | 'structure' | 'headers' | 'none';

/** A package whose install-time build a prebuild it ships did instead, for a cross target: `file` relative to its `path`. */
export interface PrebuiltBinary {
  name: string;
  path: string;
  file: string;
}

/**
 * What isolated a build's npm and install scripts from the builder's machine: a bubblewrap
 * sandbox, a build user of its own (a builder running as root), both, or nothing (docs/sandbox.md).
 */
export type Isolation = 'bubblewrap' | 'bubblewrap+build-user' | 'build-user' | 'none';

/** A build as `GET /v1/builds/:id` returns it, and as it is persisted in the builder's store. */
export interface BuildRecord {
  id: string;
  /** The builder that ran (or runs) it: `builder.id`. */
  builder: string;
  state: BuildState;
  label?: string;
  idempotencyKey?: string;
  target: TargetSpec;
  source: { sha256: string; size: number; key?: string; url?: string };
  /** 1 = next to start; only while queued. */
  queuePosition?: number;
  steps: StepRecord[];
  package?: { name: string; version: string };
  /**
   * What the build used and how it proved its addons: `method` native | cross-compiled |
   * cross, `verification` loaded | emulated | wine | wine-node-api | structure | headers | none, `isolation` of its install scripts
   * bubblewrap | bubblewrap+build-user | build-user | none (see the workflow's BuildSummary).
   */
  resolved?: { node: string; abi: string; npm: string; method?: BuildMethod; verification?: Verification; isolation?: Isolation; prebuilt?: PrebuiltBinary[] };
  artifact?: ArtifactRecord;
  /**
   * The bundle's SLSA provenance, signed by the builder: a DSSE envelope of an in-toto
   * Statement v1 whose subject is `artifact.file` with `artifact.sha256` (docs/provenance.md).
   */
  provenance?: ProvenanceEnvelope;
  error?: { code: string; message: string };
  /** Last sign of life of a running build (ISO time). Stale → the build is lost. */
  heartbeatAt?: string;
  /** Peak resident memory of npm's process tree, bytes. */
  peakMemory?: number;
  /** Free bytes on the builder's work disk when the build started. */
  freeDisk?: number;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  /** Sequence number of the last log line (0 = none yet). */
  lastSeq: number;
  links: BuildLinks;
}

/** One log line (`GET /v1/builds/:id/log` NDJSON, SSE `log` events). */
export interface LogLine {
  /** 1, 2, 3… per build; the SSE event id. */
  seq: number;
  /** ISO time. */
  time: string;
  step: StepName | 'hook' | 'builder';
  stream: 'stdout' | 'stderr' | 'status';
  message: string;
  data?: Record<string, unknown>;
}

/** `POST /v1/builds` → 202 (new) or 200 (same Idempotency-Key). */
export interface CreateBuildResponse {
  id: string;
  state: BuildState;
  /** True when the Idempotency-Key matched an existing build. */
  existing: boolean;
  links: BuildLinks;
}

/** `GET /v1/builds` */
export interface BuildList {
  builds: BuildRecord[];
  /** Pass back as `?cursor=` for the next (older) page. */
  cursor?: string;
}

/** `GET /v1/health` */
/** One check of GET /v1/health/ready. */
export interface ReadinessCheck {
  name: 'draining' | 'disk' | 'store';
  ok: boolean;
  message: string;
}

/** GET /v1/health/ready: 200 when `ready`, else 503 (a balancer stops sending builds). */
export interface ReadinessResponse {
  ready: boolean;
  builder: string;
  checks: ReadinessCheck[];
}

/** GET /v1/health/live: 200 while the process serves requests, draining or not. */
export interface LivenessResponse {
  live: true;
  builder: string;
  uptimeSeconds: number;
}

/** POST /v1/drain. */
export interface DrainResponse {
  draining: true;
  since: string;
  /** Builds that were queued and went back to dispatch (ERR_BUILD_HANDED_BACK). */
  handedBack: string[];
  /** Builds still running; they finish (or meet builder.shutdownGrace at SIGTERM). */
  running: number;
}

export interface HealthResponse {
  ok: boolean;
  version: string;
  builder: string;
  /** Targets served, as `linux-x64`, `linux-arm64-musl`… */
  targets: string[];
  /**
   * How each served target is built: `native` (this machine's platform), `cross-compiled`
   * (a cross toolchain compiles addons, an emulator loads them) or `cross` (only bundles in
   * which nothing compiles).
   */
  methods: Record<string, BuildMethod>;
  runtimes: string[];
  node: string;
  npm: string;
  queue: { running: number; queued: number; capacity: number };
  /** True once SIGTERM was received: no new builds. */
  stopping: boolean;
  /** What isolates a build's npm and install scripts from this machine (docs/sandbox.md). */
  isolation: Isolation;
}

/** Every error response: `{ error: { code, message } }` with a 4xx/5xx status. */
export interface ErrorResponse {
  error: { code: string; message: string; details?: Record<string, unknown> };
}

/** SSE event names on `GET /v1/builds/:id/events`. */
export type BuildEventName = 'log' | 'status' | 'end';
