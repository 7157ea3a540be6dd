/**
 * `dispatch()`: one input to finished, verified bundles for every target in the destination.
 * A plain async function: stores, builder clients, the signal and the clock come in as
 * arguments; per-target outcomes come back as data; nothing here prints or exits.
 */
import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import pRetry, { AbortError as StopRetrying } from 'p-retry';
import type { BuilderClient } from '../builder/client.js';
import { BundleError, abortError, isBundleError, throwIfAborted, toBundleError, type ErrorCode } from '../errors.js';
import { type BuildMethod, type BuildRecord, type CreateBuildRequest, type LogLine, type RequestOverrides, type Verification } from '../protocol.js';
import { copyObject, readJsonObject, type ObjectInfo, type ObjectStore } from '../storage/index.js';
import { formatTarget, type Target } from '../target.js';
import type { PreparedInput } from './input.js';
import { buildKey as computeBuildKey, markerKey, renderKey, sourceKey, stagingKey } from './keys.js';
import type { SourceTarball } from './lockfile.js';
import type { PlannedTarget, PoolBuilder } from './plan.js';
import { verifyProvenance } from '../provenance/verify.js';

/** Targets dispatched at once when the caller does not say (changesets-style named constant). */
export const DEFAULT_CONCURRENCY = 8;
/** How long a `/v1/health` probe may take before that builder counts as unhealthy. */
const HEALTH_TIMEOUT_MS = 5000;
/** Rounds over a pool whose builders could not be reached at all (p-retry, with backoff). */
const UNREACHABLE_ROUNDS = 3;
/** Retries of the same builder after a timeout or 5xx once the request was sent (same key). */
const SENT_RETRIES = 2;
/** How long cancelling remote builds may take when the run is interrupted. */
const CANCEL_TIMEOUT_MS = 10_000;
/** How long a create request in flight may still answer after the run stopped (its build is then cancelled). */
const CREATE_GRACE_MS = 10_000;
/** How often a followed build's record is read to see that it is alive. */
const WATCHDOG_MS = 15_000;
/** A running build without a heartbeat (or a builder without an answer) this long is lost. */
const LOST_AFTER_MS = 60_000;
/** Times a lost build is dispatched again before the target fails. */
const LOST_REDISPATCHES = 2;

/** Build errors that are the builder's, not the build's: such a build is dispatched again. */
const REDISPATCHED_CODES: ReadonlySet<string> = new Set(['ERR_BUILDER_STOPPING', 'ERR_BUILDER_RESTARTED']);

function lost(id: string, builder: PoolBuilder, why: string): BundleError {
  return new BundleError('ERR_BUILD_LOST', `Build ${id} on ${builder.url} is lost: ${why}.`, { details: { buildId: id, builder: builder.url } });
}

/** Version of manifest.json's shape. */
export const MANIFEST_VERSION = 1;

export type TargetState = 'planned' | 'cached' | 'reused' | 'queued' | 'running' | 'copying' | 'succeeded' | 'failed' | 'cancelled';

/** What dispatch tells its caller while it works (the CLI's views and the run history listen). */
export type DispatchEvent =
  | { type: 'phase'; phase: 'cache' | 'upload' | 'manifest'; state: 'started' | 'finished'; detail?: string }
  | { type: 'target'; target: string; state: TargetState; detail?: string; builder?: string; buildId?: string }
  | { type: 'record'; target: string; record: BuildRecord }
  | { type: 'log'; target: string; line: LogLine };

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
  builder?: string;
  builderUrl?: string;
  buildId?: string;
  /** `<bundle key>.intoto.jsonl` beside the bundle, and the key id that signed it (verified before publishing). */
  provenance?: ProvenanceRef;
  durations: { queueMs?: number; buildMs?: number; copyMs?: number; totalMs: number };
}

/** Where a bundle's signed provenance is, and which key signed it. */
export interface ProvenanceRef {
  key: string;
  keyid: string;
}

/** The destination key of a bundle's provenance: beside it, `.intoto.jsonl` appended. */
export function provenanceKey(bundleKey: string): string {
  return `${bundleKey}.intoto.jsonl`;
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

export interface DispatchOptions {
  runId?: string;
  input: PreparedInput;
  source: SourceTarball;
  targets: PlannedTarget[];
  sourceStore: ObjectStore;
  destination: ObjectStore;
  keyTemplate: string;
  manifestTemplate: string;
  concurrency?: number;
  /** Rebuild even when the destination holds the build key. */
  force?: boolean;
  /** Replace a different object at a destination key (publishing is immutable otherwise). */
  overwrite?: boolean;
  /** Cancel the other targets on the first failure. */
  failFast?: boolean;
  /** Seconds the presigned URLs stay valid (queue wait + build timeout). */
  presignExpiry: number;
  overrides?: RequestOverrides;
  /** Shown in the builders' histories. */
  label?: string;
  signal: AbortSignal;
  onEvent?: (event: DispatchEvent) => void;
  /** Temp space for artifacts downloaded over HTTP. */
  tmpDir?: string;
}

export function newRunId(now = new Date()): string {
  return `${now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}-${randomBytes(4).toString('hex')}`;
}

/** A builder's sketch of how busy it is: (running + queued) per slot. */
async function rankBuilders(builders: readonly PoolBuilder[], target: Target, signal: AbortSignal): Promise<{ healthy: PoolBuilder[]; problems: string[] }> {
  // Nothing to choose between: the build request itself says whether that builder can take it.
  if (builders.length === 1) return { healthy: [...builders], problems: [] };
  const problems: string[] = [];
  const probes = await Promise.all(builders.map(async (builder) => {
    try {
      const health = await builder.client.health({ signal: AbortSignal.any([signal, AbortSignal.timeout(HEALTH_TIMEOUT_MS)]) });
      if (!health.ok || health.stopping) {
        problems.push(`${builder.url}: stopping`);
        return undefined;
      }
      const platform = formatTarget(target, { withNode: false });
      if (health.targets.length > 0 && !health.targets.includes(platform)) {
        problems.push(`${builder.url}: does not serve ${platform} (serves ${health.targets.join(', ')})`);
        return undefined;
      }
      const { running, queued, capacity } = health.queue;
      return { builder, load: (running + queued) / Math.max(capacity, 1) };
    } catch (error) {
      if (signal.aborted) throw abortError(signal);
      problems.push(`${builder.url}: ${toBundleError(error).message}`);
      return undefined;
    }
  }));
  const healthy = probes.filter((probe): probe is { builder: PoolBuilder; load: number } => probe !== undefined)
    // Stable: equal loads keep the configured order.
    .sort((a, b) => a.load - b.load)
    .map((probe) => probe.builder);
  return { healthy, problems };
}

function neverSent(error: unknown): boolean {
  return error instanceof BundleError && error.code === 'ERR_BUILDER_UNREACHABLE' && error.details?.sent === false;
}

function retryableAfterSend(error: unknown): boolean {
  return error instanceof BundleError && error.details?.sent === true && error.details.retryable === true;
}

/**
 * Creates the build on the first builder of `ordered` that can be reached. A request that never
 * reached a builder fails over to the next one; a timeout or 5xx after it was sent is retried
 * on the SAME builder with the same Idempotency-Key, so a build never starts twice.
 */
async function createWithFailover(ordered: readonly PoolBuilder[], request: CreateBuildRequest, idempotencyKey: string, signal: AbortSignal, onSent: (sent: Promise<unknown>) => void, onCreated: (builder: PoolBuilder, id: string) => void): Promise<{ builder: PoolBuilder; id: string; existing: boolean; state: BuildRecord['state'] }> {
  // A create request in flight when the run stops is not cut off at once: the builder may have
  // started the build already, so the request gets CREATE_GRACE_MS to answer and whatever it
  // created is reported (onCreated) for cancelling. onSent lets the run wait for it.
  const send = (builder: PoolBuilder) => {
    const grace = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const stopLater = () => {
      timer = setTimeout(() => grace.abort(signal.reason), CREATE_GRACE_MS).unref();
    };
    signal.addEventListener('abort', stopLater, { once: true });
    const sent = builder.client.createBuild(request, { idempotencyKey, signal: grace.signal });
    const landed = sent.then((created) => onCreated(builder, created.id), () => undefined).finally(() => {
      signal.removeEventListener('abort', stopLater);
      clearTimeout(timer);
    });
    onSent(landed);
    return sent;
  };
  return pRetry(async () => {
    let lastUnreachable: unknown;
    for (const builder of ordered) {
      try {
        throwIfAborted(signal);
        const created = await pRetry(() => send(builder), {
          retries: SENT_RETRIES,
          minTimeout: 500,
          signal,
          shouldRetry: ({ error }) => retryableAfterSend(error),
        });
        return { builder, id: created.id, existing: created.existing, state: created.state };
      } catch (error) {
        if (signal.aborted) throw abortError(signal);
        if (!neverSent(error)) throw new StopRetrying(error instanceof Error ? error : new Error(String(error)));
        lastUnreachable = error;
      }
    }
    throw lastUnreachable instanceof Error ? lastUnreachable : new BundleError('ERR_BUILDER_UNREACHABLE', 'No builder of the pool could be reached.');
  }, { retries: UNREACHABLE_ROUNDS - 1, minTimeout: 500, factor: 2, signal }).catch((error: unknown) => {
    throw signal.aborted ? abortError(signal) : toBundleError(error);
  });
}

/**
 * Removes staged results, best effort: all but one at once, then the last. A store that keeps
 * directories (s3rver) removes one when a delete leaves it empty, and two deletes doing that
 * at once fail there; the one left keeps the directory until the others are gone.
 */
async function removeStaged(store: ObjectStore, keys: readonly string[]): Promise<void> {
  const remove = (key: string) => store.delete(key).catch(() => undefined);
  const [last, ...others] = keys;
  await Promise.all(others.map(remove));
  if (last !== undefined) await remove(last);
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

async function limitConcurrency<T>(items: readonly T[], limit: number, run: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(Math.max(limit, 1), items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await run(item);
    }
  });
  await Promise.all(workers);
}

/** What a destination keeps per build key: the delivered bundle, for cache hits. */
type CacheMarker = Pick<TargetSuccess, 'buildKey' | 'target' | 'key' | 'file' | 'sha256' | 'size' | 'node' | 'abi' | 'npm' | 'method' | 'verification' | 'builder' | 'buildId' | 'provenance'> & { createdAt: string };

/** A small JSON object (marker, manifest); undefined when absent or when it does not parse. */
async function readJson<T>(store: ObjectStore, key: string, signal: AbortSignal): Promise<T | undefined> {
  try {
    return await readJsonObject<T>(store, key, { signal });
  } catch (error) {
    if (isBundleError(error, 'ERR_STORE_IO') && error.cause instanceof SyntaxError) return undefined;
    throw error;
  }
}

/**
 * Dispatches one prepared source to every planned target.
 *
 * @example
 * const result = await dispatch({ input, source, targets, sourceStore, destination,
 *   keyTemplate: '{name}/{version}/{file}', manifestTemplate: '{name}/{version}/manifest.json',
 *   presignExpiry: 7200, signal });
 * result.targets.filter((t) => !t.ok) // the failures, as data
 */
export async function dispatch(options: DispatchOptions): Promise<DispatchResult> {
  const started = Date.now();
  const startedAt = new Date(started).toISOString();
  const runId = options.runId ?? newRunId(new Date(started));
  const { input, source, sourceStore, destination, signal } = options;
  const emit = (event: DispatchEvent) => {
    try {
      options.onEvent?.(event);
    } catch {
      // a listener cannot stop the run
    }
  };
  const name = input.packageJson.name;
  const version = input.packageJson.version;
  const srcKey = sourceKey(source.sha256);
  const vars = { name, version, sourceSha: source.sha256, ...(input.commit ? { commit: input.commit } : {}) };
  const shared = sourceStore.kind === 'dir';
  // Failing fast or being interrupted both stop every target through this one signal.
  const stop = new AbortController();
  const onOuterAbort = () => stop.abort(signal.reason);
  if (signal.aborted) onOuterAbort();
  else signal.addEventListener('abort', onOuterAbort, { once: true });
  const runSignal = stop.signal;
  // Every request, stream and wait of every target listens to it: not a leak.
  setMaxListeners(0, runSignal);

  const planned = options.targets.map((plan) => ({ plan, buildKey: computeBuildKey({ sourceSha256: source.sha256, target: plan.target, ...(options.overrides ? { overrides: options.overrides } : {}) }) }));
  const outcomes = new Map<string, TargetOutcome>();
  /** Builds started and not seen to end: cancelled on interruption. */
  const active = new Map<string, { client: BuilderClient; id: string }>();
  /**
   * Staging keys of this run's results, removed together once every target is done (and every
   * build stopped): not one by one while other builders may still be uploading, because
   * s3rver removes a "directory" that a delete leaves empty, and a PUT racing that fails.
   */
  const staged = new Set<string>();
  /** Create requests in flight; a stopped run waits for them so that what they start is cancelled. */
  const creating = new Set<Promise<unknown>>();
  const track = (sent: Promise<unknown>) => {
    creating.add(sent);
    void sent.finally(() => creating.delete(sent));
  };
  /** Removals of staged results, started when the builds are over and waited for before the run returns. */
  const cleanups: Promise<unknown>[] = [];
  let uploaded = false;
  const manifestKey = renderKey(options.manifestTemplate, vars);
  let previousManifest: Promise<Manifest | undefined> | undefined;

  try {
    // 1. Cache: a destination that holds the build key (and the bundle it names) is done. Whether
    // the source is already uploaded is asked at the same time.
    const sourcePresent = sourceStore.exists(srcKey, { signal: runSignal });
    sourcePresent.catch(() => undefined);
    emit({ type: 'phase', phase: 'cache', state: 'started' });
    const toBuild: typeof planned = [];
    await Promise.all(planned.map(async ({ plan, buildKey }) => {
      if (!options.force) {
        const marker = await readJson<CacheMarker>(destination, markerKey({ name, version }, buildKey), runSignal);
        const [bundle, statements] = marker ? await Promise.all([
          destination.head(marker.key, { signal: runSignal }).catch(() => undefined),
          // A bundle delivered without its provenance (by a version before it existed) is built again.
          marker.provenance ? destination.head(marker.provenance.key, { signal: runSignal }).catch(() => undefined) : undefined,
        ]) : [];
        if (marker && bundle && statements && (bundle.sha256 === undefined || bundle.sha256 === marker.sha256)) {
          outcomes.set(plan.label, {
            target: plan.label, ok: true, cached: true, buildKey, key: marker.key, file: marker.file, sha256: marker.sha256, size: marker.size,
            ...(marker.node ? { node: marker.node } : {}), ...(marker.abi ? { abi: marker.abi } : {}), ...(marker.npm ? { npm: marker.npm } : {}),
            ...(marker.method ? { method: marker.method } : {}), ...(marker.verification ? { verification: marker.verification } : {}),
            ...(marker.builder ? { builder: marker.builder } : {}), ...(marker.buildId ? { buildId: marker.buildId } : {}),
            ...(marker.provenance ? { provenance: marker.provenance } : {}),
            durations: { totalMs: 0 },
          });
          emit({ type: 'target', target: plan.label, state: 'cached', detail: marker.key });
          return;
        }
      }
      toBuild.push({ plan, buildKey });
      emit({ type: 'target', target: plan.label, state: 'planned' });
    }));
    emit({ type: 'phase', phase: 'cache', state: 'finished', detail: `${outcomes.size} cached, ${toBuild.length} to build` });
    // The manifest this run will merge into, read while the builds run rather than after them
    // (the lock per destination and input keeps another run of this input from changing it).
    previousManifest = readJson<Manifest>(destination, manifestKey, signal).catch(() => undefined);

    // 2. Upload the source once, content-addressed (skipped when present).
    if (toBuild.length > 0) {
      emit({ type: 'phase', phase: 'upload', state: 'started', detail: srcKey });
      if (!(await sourcePresent)) {
        await sourceStore.put(srcKey, createReadStream(source.file), { sha256: source.sha256, size: source.size, contentType: 'application/gzip', signal: runSignal });
        uploaded = true;
      }
      emit({ type: 'phase', phase: 'upload', state: 'finished', detail: uploaded ? 'uploaded' : 'already present' });
    }

    // 3–4. Build each target: trigger, follow, copy, verify.
    const tmp = await mkdtemp(path.join(options.tmpDir ?? tmpdir(), 'bd-dispatch-'));
    try {
      await limitConcurrency(toBuild, options.concurrency ?? DEFAULT_CONCURRENCY, async ({ plan, buildKey }) => {
        const outcome = await buildTarget(plan, buildKey);
        outcomes.set(plan.label, outcome);
        if (!outcome.ok && !outcome.cancelled && options.failFast && !runSignal.aborted) {
          stop.abort(new BundleError('ERR_ABORTED', `Cancelled: ${plan.label} failed and --fail-fast is set.`));
        }
      });
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }

    /**
     * Follows a build to its end. Every WATCHDOG_MS the record is read: a running build whose
     * heartbeat is older than LOST_AFTER_MS, or a builder that cannot be reached for that long,
     * makes it ERR_BUILD_LOST.
     */
    async function followWithWatchdog(builder: PoolBuilder, id: string, label: string): Promise<BuildRecord> {
      const watch = new AbortController();
      const signal = AbortSignal.any([runSignal, watch.signal]);
      let lastSign = Date.now();
      let running = false;
      // Heartbeats are compared with each other, never with our clock: the builder's may differ.
      let heartbeat: { value: string | undefined; seenAt: number } = { value: undefined, seenAt: Date.now() };
      const timer = setInterval(() => {
        void builder.client.getBuild(id, { signal }).then((current) => {
          lastSign = Date.now();
          if (current.state !== 'running' || current.heartbeatAt !== heartbeat.value) {
            heartbeat = { value: current.heartbeatAt, seenAt: Date.now() };
          } else if (Date.now() - heartbeat.seenAt >= LOST_AFTER_MS) {
            watch.abort(lost(id, builder, `its heartbeat has stayed at ${current.heartbeatAt} for ${Math.round((Date.now() - heartbeat.seenAt) / 1000)} s`));
          }
        }, () => {
          if (Date.now() - lastSign >= LOST_AFTER_MS) watch.abort(lost(id, builder, `the builder has not answered for ${Math.round((Date.now() - lastSign) / 1000)} s`));
        });
      }, WATCHDOG_MS);
      try {
        const record = await builder.client.followBuild(id, {
          signal,
          onLog: (line) => {
            lastSign = Date.now();
            emit({ type: 'log', target: label, line });
          },
          onStatus: (status) => {
            lastSign = Date.now();
            if (status.state === 'running' && !running) {
              running = true;
              emit({ type: 'target', target: label, state: 'running', builder: builder.url, buildId: status.id });
            }
            emit({ type: 'record', target: label, record: status });
          },
        });
        // A builder that shut down or restarted under the build did not fail it: the build failed
        // the builder. Another builder of the pool gets it.
        if ((record.state === 'failed' || record.state === 'cancelled') && REDISPATCHED_CODES.has(record.error?.code ?? '') && !runSignal.aborted) {
          throw lost(id, builder, `${record.error?.code}: ${record.error?.message}`);
        }
        return record;
      } catch (error) {
        if (error instanceof BundleError && error.code === 'ERR_BUILD_LOST') throw error;
        if (watch.signal.aborted && !runSignal.aborted) throw watch.signal.reason;
        // The builder went away while we followed: the same verdict, without waiting.
        if (!runSignal.aborted && error instanceof BundleError && error.code === 'ERR_BUILDER_UNREACHABLE') throw lost(id, builder, error.message);
        throw error;
      } finally {
        clearInterval(timer);
      }
    }

    async function buildTarget(plan: PlannedTarget, buildKey: string): Promise<TargetOutcome> {
      const t0 = Date.now();
      let builder: PoolBuilder | undefined;
      let builderName: string | undefined;
      let id: string | undefined;
      const stageKey = stagingKey(buildKey);
      const fail = (error: unknown): TargetFailure => {
        const failure = runSignal.aborted && !(error instanceof BundleError && error.code !== 'ERR_ABORTED') ? abortError(runSignal) : toBundleError(error);
        const cancelled = failure.code === 'ERR_ABORTED';
        emit({ type: 'target', target: plan.label, state: cancelled ? 'cancelled' : 'failed', detail: `${failure.code}: ${failure.message}` });
        return {
          target: plan.label, ok: false, buildKey, cancelled, error: { code: failure.code, message: failure.message },
          ...(builderName ? { builder: builderName } : {}), ...(builder ? { builderUrl: builder.url } : {}), ...(id ? { buildId: id } : {}),
          durations: { totalMs: Date.now() - t0 },
        };
      };
      try {
        if (runSignal.aborted) throw abortError(runSignal);
        const { healthy, problems } = await rankBuilders(plan.builders, plan.target, runSignal);
        if (healthy.length === 0) {
          throw new BundleError('ERR_BUILDER_UNREACHABLE', `No healthy builder for ${plan.label}: ${problems.join('; ')}.`, { details: { problems } });
        }
        // Both URLs are signed at once (no request is sent: signing is local).
        const [get, put] = shared ? [] : await Promise.all([
          sourceStore.presignGet(srcKey, { expiresIn: options.presignExpiry, signal: runSignal }),
          sourceStore.presignPut(stageKey, { expiresIn: options.presignExpiry, contentType: 'application/gzip', signal: runSignal }),
        ]);
        const request: CreateBuildRequest = {
          source: get ? { url: get.url, sha256: source.sha256 } : { key: srcKey, sha256: source.sha256 },
          target: { os: plan.target.os, cpu: plan.target.cpu, ...(plan.target.libc ? { libc: plan.target.libc } : {}), ...(plan.target.node ? { node: plan.target.node } : {}) },
          ...(options.overrides ? { overrides: options.overrides } : {}),
          label: options.label ?? `dispatch ${runId} ${name}@${version}`,
          provenance: { runId, input: { spec: input.spec, kind: input.kind, sha256: input.sha256, ...(input.commit ? { commit: input.commit } : {}) } },
        };
        if (put) {
          request.output = { url: put.url, ...(Object.keys(put.headers).length > 0 ? { headers: put.headers } : {}) };
          staged.add(stageKey);
        }
        // The build key is the Idempotency-Key: a retry, a second run or a re-attached run finds
        // the same build instead of starting another. A build that already ended badly, whose
        // result is gone, or any finished one under --force, is not reused: this run's own key then.
        const register = (on: PoolBuilder, created: string) => active.set(plan.label, { client: on.client, id: created });
        let created = await createWithFailover(healthy, request, buildKey, runSignal, track, register);
        const reusable = !created.existing
          || created.state === 'queued' || created.state === 'running'
          // A finished build's result must still be there: in the builder's store, or staged.
          || (created.state === 'succeeded' && !options.force && (shared || (await sourceStore.exists(stageKey, { signal: runSignal }))));
        if (!reusable) {
          created = await createWithFailover([created.builder, ...healthy.filter((other) => other !== created.builder)], request, `${buildKey}:${runId}`, runSignal, track, register);
        }
        builder = created.builder;
        id = created.id;
        const reused = created.existing && created.state === 'succeeded';
        // A reused build is not followed: its record is final, and its log would only repeat an earlier run.
        let record = reused ? await builder.client.getBuild(id, { signal: runSignal }) : undefined;
        if (record) emit({ type: 'target', target: plan.label, state: 'reused', builder: builder.url, buildId: id, detail: `built ${record.finishedAt ?? 'earlier'} for an earlier run` });
        // A build whose builder dies (or whose record stops heartbeating) is lost: it is
        // re-dispatched to a healthy builder of the pool under a key of its own, so the lost one
        // can never come back as a second build of the same request.
        for (let attempt = 0; record === undefined; attempt += 1) {
          active.set(plan.label, { client: builder.client, id });
          emit({ type: 'target', target: plan.label, state: 'queued', builder: builder.url, buildId: id });
          try {
            record = await followWithWatchdog(builder, id, plan.label);
          } catch (error) {
            if (runSignal.aborted || !(error instanceof BundleError) || error.code !== 'ERR_BUILD_LOST' || attempt >= LOST_REDISPATCHES) throw error;
            const lostOn = builder;
            await lostOn.client.cancelBuild(id, { signal: AbortSignal.any([runSignal, AbortSignal.timeout(2000)]) }).catch(() => undefined);
            emit({ type: 'target', target: plan.label, state: 'planned', detail: `${error.message} Dispatching it again.` });
            const ranked = await rankBuilders(plan.builders.length > 1 ? plan.builders.filter((other) => other !== lostOn) : plan.builders, plan.target, runSignal);
            if (ranked.healthy.length === 0) throw error;
            const again = await createWithFailover(ranked.healthy, request, `${buildKey}:${runId}:lost${attempt + 1}`, runSignal, track, register);
            builder = again.builder;
            id = again.id;
          }
        }
        active.delete(plan.label);
        builderName = record.builder;
        if (!reused) emit({ type: 'record', target: plan.label, record });
        if (record.state !== 'succeeded' || !record.artifact) {
          const code = (record.error?.code ?? (record.state === 'cancelled' ? 'ERR_ABORTED' : 'ERR_INTERNAL')) as ErrorCode;
          throw new BundleError(code, record.error?.message ?? `The build ended ${record.state}.`, { details: { buildId: id } });
        }
        const { artifact } = record;
        // The provenance must verify with this builder's configured key, for exactly this result,
        // source and target, before anything is published; the copy then checks the bytes against
        // the same sha256 the signed statement names.
        if (!record.provenance) {
          throw new BundleError('ERR_PROVENANCE_UNSIGNED', `Build ${id} on ${builder.url} has no signed provenance; nothing was published.`, { hint: 'Run a builder of this version (it signs every bundle), or check its builder.signingKey.', details: { buildId: id } });
        }
        const verified = verifyProvenance([record.provenance], {
          keys: builder.keys, sha256: artifact.sha256, file: artifact.file, sourceSha256: source.sha256,
          target: formatTarget(plan.target, { withNode: false }), builder: record.builder,
        });
        // 4. Copy into the destination at the key, verifying the builder's sha256.
        emit({ type: 'target', target: plan.label, state: 'copying' });
        const copyStarted = Date.now();
        const key = renderKey(options.keyTemplate, { ...vars, file: artifact.file, target: plan.target, ...(record.resolved ? { node: record.resolved.node } : {}), buildKey });
        const immutable = !options.overwrite;
        // The cache marker is written while the bundle is copied: a cache hit also needs the
        // bundle at the marker's key with the marker's sha256, so a marker whose copy then
        // fails never counts (and is removed below).
        const provenance: ProvenanceRef = { key: provenanceKey(key), keyid: verified.keyid };
        const marker: CacheMarker = {
          buildKey, target: plan.label, key, file: artifact.file, sha256: artifact.sha256, size: artifact.size,
          ...record.resolved,
          builder: record.builder, buildId: id, provenance, createdAt: new Date().toISOString(),
        };
        const markerAt = markerKey({ name, version }, buildKey);
        const markerWritten = destination.put(markerAt, `${JSON.stringify(marker, null, 2)}\n`, { contentType: 'application/json', immutable: false, signal: runSignal });
        markerWritten.catch(() => undefined);
        // What the store wrote: put and copy hash the bytes as they stream and refuse a mismatch.
        let written: ObjectInfo | undefined;
        try {
          if (artifact.key !== undefined && shared && (await sourceStore.exists(artifact.key, { signal: runSignal }))) {
            written = await copyObject(sourceStore, artifact.key, destination, key, { sha256: artifact.sha256, immutable, signal: runSignal });
          } else if (artifact.key !== undefined) {
            const file = path.join(tmp, `${buildKey}.tgz`);
            try {
              const downloaded = await builder.client.downloadArtifact(id, file, { signal: runSignal });
              if (downloaded.sha256 !== artifact.sha256) {
                throw new BundleError('ERR_INTEGRITY', `The result of build ${id} has sha256 ${downloaded.sha256}, but the builder reported ${artifact.sha256}; nothing was copied.`);
              }
              written = await destination.put(key, createReadStream(file), { sha256: artifact.sha256, size: artifact.size, contentType: 'application/gzip', immutable, signal: runSignal });
            } finally {
              await rm(file, { force: true });
            }
          } else {
            // Staged through a presigned PUT, so it has no recorded sha256 and a server-side copy
            // could not record a checked one: streamed into the destination, whose put hashes it
            // and refuses a mismatch. The GET starts when put first reads, so it runs alongside
            // put's own look-up of the destination key (and no HEAD of the source comes first,
            // as copyObject would send). It stays in `staged`, removed with the others at the end.
            written = await destination.put(key, lazyBody(sourceStore, stageKey, runSignal), { sha256: artifact.sha256, size: artifact.size, contentType: 'application/gzip', immutable, signal: runSignal });
          }
          if (written?.sha256 !== undefined && written.sha256 !== artifact.sha256) {
            throw new BundleError('ERR_INTEGRITY', `${destination.location}${key} has sha256 ${written.sha256}, expected ${artifact.sha256}.`);
          }
          // The envelope as the builder signed it, one per line (the in-toto JSONL form). Not
          // immutable: a rebuild of byte-identical bundle bytes brings an equally valid statement.
          await destination.put(provenance.key, `${JSON.stringify(record.provenance)}\n`, { contentType: 'application/jsonl', immutable: false, signal: runSignal });
        } catch (error) {
          if (await markerWritten.then(() => true, () => false)) await destination.delete(markerAt).catch(() => undefined);
          throw error;
        }
        await markerWritten;
        const copyMs = Date.now() - copyStarted;
        const startedMs = record.startedAt ? Date.parse(record.startedAt) : undefined;
        const outcome: TargetSuccess = {
          target: plan.label, ok: true, cached: false, ...(reused ? { reused } : {}), buildKey, key, file: artifact.file, sha256: artifact.sha256, size: artifact.size,
          ...record.resolved,
          builder: record.builder, builderUrl: builder.url, buildId: id, provenance,
          durations: {
            ...(startedMs ? { queueMs: startedMs - Date.parse(record.createdAt) } : {}),
            ...(startedMs && record.finishedAt ? { buildMs: Date.parse(record.finishedAt) - startedMs } : {}),
            copyMs,
            totalMs: Date.now() - t0,
          },
        };
        emit({ type: 'target', target: plan.label, state: 'succeeded', detail: key });
        return outcome;
      } catch (error) {
        return fail(error);
      }
    }
  } finally {
    signal.removeEventListener('abort', onOuterAbort);
    // Interrupted or failing fast: every build still running is cancelled on its builder, and
    // what was staged for it is removed — a killed cron job leaves nothing running.
    if (creating.size > 0) await Promise.allSettled([...creating]);
    await Promise.all([...active.values()].map(async ({ client, id }) => {
      await client.cancelBuild(id, { signal: AbortSignal.timeout(CANCEL_TIMEOUT_MS) }).catch(() => undefined);
    }));
    // Every build is over: the staged results go now, while the manifest is written.
    cleanups.push(removeStaged(sourceStore, [...staged]));
    staged.clear();
  }

  const interrupted = signal.aborted;
  const targets = planned.map(({ plan, buildKey }) => outcomes.get(plan.label) ?? {
    target: plan.label, ok: false as const, buildKey, cancelled: true, error: { code: 'ERR_ABORTED', message: 'Not started: the run was stopped.' }, durations: { totalMs: 0 },
  });
  const result: DispatchResult = {
    runId,
    ok: targets.every((outcome) => outcome.ok),
    interrupted,
    package: { name, version },
    input: { spec: input.spec, kind: input.kind, sha256: input.sha256, ...(input.commit ? { commit: input.commit } : {}) },
    source: { key: srcKey, sha256: source.sha256, size: source.size, uploaded },
    lockfile: source.lockfile,
    targets,
    destination: destination.location,
    startedAt,
    durationMs: 0,
  };
  // 5. manifest.json last: what this run delivered (and failed), merged over earlier runs'
  // targets of the same version. Not written for an interrupted run.
  if (!interrupted) {
    emit({ type: 'phase', phase: 'manifest', state: 'started' });
    const previous = await (previousManifest ?? readJson<Manifest>(destination, manifestKey, signal).catch(() => undefined));
    // A run of cache hits that the manifest already lists as they are changes nothing: a cron
    // re-run on an unchanged input writes nothing at all.
    const unchanged = previous !== undefined && previous.source?.sha256 === result.source.sha256 && result.targets.every((outcome) => {
      const entry = previous.targets[outcome.target];
      return outcome.ok && outcome.cached && entry?.ok === true && entry.buildKey === outcome.buildKey && entry.key === outcome.key;
    });
    if (!unchanged) {
      const manifest = buildManifest(result, previous);
      await destination.put(manifestKey, `${JSON.stringify(manifest, null, 2)}\n`, { contentType: 'application/json', immutable: false, signal });
    }
    result.manifest = manifestKey;
    emit({ type: 'phase', phase: 'manifest', state: 'finished', detail: manifestKey });
  }
  await Promise.all(cleanups);
  result.durationMs = Date.now() - started;
  return result;
}

/** `manifest.json`: per target the bundle (or the failure), plus the input, lockfile and commit. */
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
  | { ok: true; key: string; file: string; sha256: string; size: number; node?: string; abi?: string; npm?: string; method?: BuildMethod; verification?: Verification; builder?: string; buildId?: string; provenance?: ProvenanceRef; buildKey: string; runId: string; cached: boolean; reused?: true; durations: TargetSuccess['durations'] }
  | { ok: false; error: { code: string; message: string }; builder?: string; buildId?: string; buildKey: string; runId: string };

function buildManifest(result: DispatchResult, previous: Manifest | undefined): Manifest {
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
        ...(outcome.method ? { method: outcome.method } : {}), ...(outcome.verification ? { verification: outcome.verification } : {}),
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
