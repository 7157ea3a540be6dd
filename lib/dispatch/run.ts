/**
 * `dispatch()`: one input to finished, verified bundles for every target in the destination.
 * A plain async function: stores, builder clients, the signal and the clock come in as
 * arguments; per-target outcomes come back as data; nothing here prints or exits.
 *
 * The run, phase by phase: the cache check (./cache.ts), the source upload, and for each target
 * to build: choose builders and trigger with failover (./trigger.ts), follow with a watchdog and
 * send a lost build again (./follow.ts), the verified copy (./deliver.ts); manifest.json last
 * (./manifest.ts).
 */
import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { BuilderClient } from '../builder/client.js';
import { BundleError, abortError, isBundleError, throwIfAborted, toBundleError } from '../errors.js';
import type { BuildRecord, CreateBuildRequest, RequestOverrides } from '../protocol.js';
import type { ObjectStore } from '../storage/index.js';
import { findCached, readJson } from './cache.js';
import type { PreparedInput } from './input.js';
import { buildKey as computeBuildKey, renderKey, sourceKey, stagingKey } from './keys.js';
import type { SourceTarball } from './lockfile.js';
import { writeManifest, type Manifest } from './manifest.js';
import type { DispatchEvent, DispatchResult, FailoverNote, TargetFailure, TargetOutcome, TargetSuccess } from './outcome.js';
import type { PlannedTarget, PoolBuilder } from './plan.js';
import type { CreatedBuild, Note } from './trigger.js';

/**
 * What only a build needs (choosing and triggering builders, following, delivering): loaded
 * with the first target that is not cached, so a run whose targets all are never loads them.
 */
const importBuildSteps = () => Promise.all([import('./trigger.js'), import('./follow.js'), import('./deliver.js')])
  .then(([trigger, follow, deliver]) => ({ ...trigger, ...follow, ...deliver }));
let loadedBuildSteps: ReturnType<typeof importBuildSteps> | undefined;
const buildSteps = () => (loadedBuildSteps ??= importBuildSteps());

export type { DispatchEvent, DispatchResult, FailoverNote, ProvenanceRef, TargetFailure, TargetOutcome, TargetState, TargetSuccess } from './outcome.js';
export { provenanceKey } from './outcome.js';
export { MANIFEST_VERSION, type Manifest, type ManifestTarget } from './manifest.js';

/** Targets dispatched at once when the caller does not say (changesets-style named constant). */
export const DEFAULT_CONCURRENCY = 8;
/** How long cancelling remote builds may take when the run is interrupted. */
const CANCEL_TIMEOUT_MS = 10_000;
/** Times a lost build is dispatched again before the target fails. */
const LOST_REDISPATCHES = 2;

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

/** One target of the run with its build key. */
interface PlannedBuild {
  plan: PlannedTarget;
  buildKey: string;
}

/** What every phase of one run shares. */
interface RunScope {
  runId: string;
  options: DispatchOptions;
  /** Aborted when the caller's signal is, or by --fail-fast: every request and wait listens to it. */
  signal: AbortSignal;
  stop: AbortController;
  emit: (event: DispatchEvent) => void;
  pkg: { name: string; version: string };
  vars: { name: string; version: string; sourceSha: string; commit?: string };
  srcKey: string;
  /** The source store is a local directory the builders share (the embedded default). */
  shared: boolean;
  /** Builds started and not seen to end: cancelled on interruption. */
  active: Map<string, { client: BuilderClient; id: string }>;
  /**
   * Staging keys of this run's results, removed together once every target is done (and every
   * build stopped): not one by one while other builders may still be uploading, because s3rver
   * removes a "directory" that a delete leaves empty, and a PUT racing that fails.
   */
  staged: Set<string>;
  /** Create requests in flight; a stopped run waits for them so that what they start is cancelled. */
  creating: Set<Promise<unknown>>;
  tmpDir: string;
}

/** One target's path through the builders: where it is, and the failovers on the way. */
class TargetTrail {
  builder: PoolBuilder | undefined;
  builderName: string | undefined;
  id: string | undefined;
  readonly failovers: FailoverNote[] = [];
  readonly started = Date.now();

  constructor(private readonly run: RunScope, readonly label: string) {}

  readonly note: Note = (note) => {
    const full: FailoverNote = { ...note, at: new Date().toISOString() };
    this.failovers.push(full);
    this.run.emit({ type: 'failover', target: this.label, note: full });
  };

  /** Where each created build is: registered for cancelling until it is seen to end. */
  readonly register = (builder: PoolBuilder, id: string) => {
    this.run.active.set(this.label, { client: builder.client, id });
  };

  at(created: { builder: PoolBuilder; id: string }): void {
    this.builder = created.builder;
    this.id = created.id;
    this.register(created.builder, created.id);
  }

  failure(error: unknown, buildKey: string): TargetFailure {
    const { signal } = this.run;
    const failure = signal.aborted && !(error instanceof BundleError && error.code !== 'ERR_ABORTED') ? abortError(signal) : toBundleError(error);
    const cancelled = failure.code === 'ERR_ABORTED';
    this.run.emit({ type: 'target', target: this.label, state: cancelled ? 'cancelled' : 'failed', detail: `${failure.code}: ${failure.message}` });
    return {
      target: this.label, ok: false, buildKey, cancelled, error: { code: failure.code, message: failure.message },
      ...(this.builderName ? { builder: this.builderName } : {}), ...(this.builder ? { builderUrl: this.builder.url } : {}), ...(this.id ? { buildId: this.id } : {}),
      ...(this.failovers.length > 0 ? { failovers: this.failovers } : {}),
      durations: { totalMs: Date.now() - this.started },
    };
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
  const runId = options.runId ?? newRunId(new Date(started));
  const { input, source, sourceStore, destination, signal } = options;
  const pkg = { name: input.packageJson.name, version: input.packageJson.version };
  // Failing fast or being interrupted both stop every target through this one signal.
  const stop = new AbortController();
  const onOuterAbort = () => stop.abort(signal.reason);
  if (signal.aborted) onOuterAbort();
  else signal.addEventListener('abort', onOuterAbort, { once: true });
  // Every request, stream and wait of every target listens to it: not a leak.
  setMaxListeners(0, stop.signal);
  const run: RunScope = {
    runId, options, signal: stop.signal, stop, pkg,
    emit: (event) => {
      try {
        options.onEvent?.(event);
      } catch {
        // a listener cannot stop the run
      }
    },
    vars: { ...pkg, sourceSha: source.sha256, ...(input.commit ? { commit: input.commit } : {}) },
    srcKey: sourceKey(source.sha256),
    shared: sourceStore.kind === 'dir',
    active: new Map(), staged: new Set(), creating: new Set(),
    tmpDir: options.tmpDir ?? tmpdir(),
  };
  const planned: PlannedBuild[] = options.targets.map((plan) => ({ plan, buildKey: computeBuildKey({ sourceSha256: source.sha256, target: plan.target, ...(options.overrides ? { overrides: options.overrides } : {}) }) }));
  const outcomes = new Map<string, TargetOutcome>();
  const manifestKey = renderKey(options.manifestTemplate, run.vars);
  let previousManifest: Promise<Manifest | undefined> | undefined;
  let uploaded = false;
  let removingStaged: Promise<void> = Promise.resolve();
  try {
    // Whether the source is already uploaded, and the manifest this run will merge into, are
    // asked while the cache is checked (one round trip, not three, for a run of cache hits); the
    // lock per destination and input keeps another run of this input from changing the manifest.
    const sourcePresent = sourceStore.exists(run.srcKey, { signal: run.signal });
    sourcePresent.catch(() => undefined);
    previousManifest = readJson<Manifest>(destination, manifestKey, signal).catch(() => undefined);
    const toBuild = await checkCache(run, planned, outcomes);
    if (toBuild.length > 0) uploaded = await uploadSource(run, sourcePresent);
    await buildAll(run, toBuild, outcomes);
  } finally {
    signal.removeEventListener('abort', onOuterAbort);
    removingStaged = stopBuilds(run);
  }

  const interrupted = signal.aborted;
  const targets = planned.map(({ plan, buildKey }) => outcomes.get(plan.label) ?? {
    target: plan.label, ok: false as const, buildKey, cancelled: true, error: { code: 'ERR_ABORTED', message: 'Not started: the run was stopped.' }, durations: { totalMs: 0 },
  });
  const result: DispatchResult = {
    runId,
    ok: targets.every((outcome) => outcome.ok),
    interrupted,
    package: pkg,
    input: { spec: input.spec, kind: input.kind, sha256: input.sha256, ...(input.commit ? { commit: input.commit } : {}) },
    source: { key: run.srcKey, sha256: source.sha256, size: source.size, uploaded },
    lockfile: source.lockfile,
    targets,
    destination: destination.location,
    startedAt: new Date(started).toISOString(),
    durationMs: 0,
  };
  // manifest.json last: not written for an interrupted run.
  if (!interrupted) {
    run.emit({ type: 'phase', phase: 'manifest', state: 'started' });
    const previous = await (previousManifest ?? readJson<Manifest>(destination, manifestKey, signal).catch(() => undefined));
    // A manifest lists bundles: with none delivered and none from an earlier run, there is nothing to list.
    if (previous || targets.some((outcome) => outcome.ok)) {
      await writeManifest(destination, manifestKey, result, previous, signal);
      result.manifest = manifestKey;
      run.emit({ type: 'phase', phase: 'manifest', state: 'finished', detail: manifestKey });
    } else {
      run.emit({ type: 'phase', phase: 'manifest', state: 'finished', detail: 'not written: no bundle was delivered' });
    }
  }
  await removingStaged;
  result.durationMs = Date.now() - started;
  return result;
}

/** Phase 1: targets the destination already holds are done; the rest are returned to build. */
async function checkCache(run: RunScope, planned: readonly PlannedBuild[], outcomes: Map<string, TargetOutcome>): Promise<PlannedBuild[]> {
  run.emit({ type: 'phase', phase: 'cache', state: 'started' });
  const toBuild: PlannedBuild[] = [];
  await Promise.all(planned.map(async (item) => {
    const hit = run.options.force ? undefined : await findCached(run.options.destination, run.pkg, item.plan.label, item.buildKey, run.signal);
    if (hit) {
      outcomes.set(item.plan.label, hit);
      run.emit({ type: 'target', target: item.plan.label, state: 'cached', detail: hit.key });
    } else {
      toBuild.push(item);
      run.emit({ type: 'target', target: item.plan.label, state: 'planned' });
    }
  }));
  run.emit({ type: 'phase', phase: 'cache', state: 'finished', detail: `${outcomes.size} cached, ${toBuild.length} to build` });
  return toBuild;
}

/** Phase 2: the source, once, content-addressed (skipped when present). Resolves to whether it uploaded. */
async function uploadSource(run: RunScope, present: Promise<boolean>): Promise<boolean> {
  const { source, sourceStore } = run.options;
  run.emit({ type: 'phase', phase: 'upload', state: 'started', detail: run.srcKey });
  const uploaded = !(await present);
  if (uploaded) await sourceStore.put(run.srcKey, createReadStream(source.file), { sha256: source.sha256, size: source.size, contentType: 'application/gzip', signal: run.signal });
  run.emit({ type: 'phase', phase: 'upload', state: 'finished', detail: uploaded ? 'uploaded' : 'already present' });
  return uploaded;
}

/** Phase 3: every target to build, `concurrency` at once; --fail-fast stops the others. */
async function buildAll(run: RunScope, toBuild: readonly PlannedBuild[], outcomes: Map<string, TargetOutcome>): Promise<void> {
  const tmp = await mkdtemp(path.join(run.tmpDir, 'bd-dispatch-'));
  try {
    await limitConcurrency(toBuild, run.options.concurrency ?? DEFAULT_CONCURRENCY, async ({ plan, buildKey }) => {
      const outcome = await buildTarget({ ...run, tmpDir: tmp }, plan, buildKey);
      outcomes.set(plan.label, outcome);
      if (!outcome.ok && !outcome.cancelled && run.options.failFast && !run.signal.aborted) {
        run.stop.abort(new BundleError('ERR_ABORTED', `Cancelled: ${plan.label} failed and --fail-fast is set.`));
      }
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** One target, top to bottom: choose, trigger, follow, copy verified. */
async function buildTarget(run: RunScope, plan: PlannedTarget, buildKey: string): Promise<TargetOutcome> {
  const trail = new TargetTrail(run, plan.label);
  try {
    throwIfAborted(run.signal);
    const { chooseBuilders, deliverBundle } = await buildSteps();
    const ordered = await chooseBuilders(plan.builders, plan.target, plan.label, run.signal, trail.note);
    const { request, stageKey } = await buildRequest(run, plan, buildKey);
    const reused = await triggerBuild(run, trail, ordered, request, buildKey, stageKey);
    const record = reused ?? await followToEnd(run, trail, plan, request, buildKey);
    run.active.delete(plan.label);
    trail.builderName = record.builder;
    if (!reused) run.emit({ type: 'record', target: plan.label, record });
    const builder = trail.builder as PoolBuilder;
    const delivered = await deliverBundle({
      record, builder, label: plan.label, target: plan.target, buildKey, stageKey, sourceSha256: run.options.source.sha256,
      sourceStore: run.options.sourceStore, destination: run.options.destination, shared: run.shared, keyTemplate: run.options.keyTemplate,
      vars: run.vars, overwrite: Boolean(run.options.overwrite), tmpDir: run.tmpDir, signal: run.signal,
      onCopy: () => run.emit({ type: 'target', target: plan.label, state: 'copying' }),
    });
    run.emit({ type: 'target', target: plan.label, state: 'succeeded', detail: delivered.key });
    return successOf(record, trail, { buildKey, reused: reused !== undefined, ...delivered });
  } catch (error) {
    return trail.failure(explainSharedSource(run, error), buildKey);
  }
}

/**
 * A builder that does not share a directory source store cannot find the source by its key:
 * said as the configuration problem it is (exit 2), not as the builder's "no object".
 */
function explainSharedSource(run: RunScope, error: unknown): unknown {
  if (!run.shared || !isBundleError(error, 'ERR_STORE_NOT_FOUND') || !error.message.includes(run.srcKey)) return error;
  return new BundleError('ERR_CONFIG', `${error.message} The source store ${run.options.sourceStore.location} is a directory, which a builder can read only when it shares that directory; this one does not. Set dispatch.source (or --source) to an s3:// location: builders then fetch the source through a presigned URL.`, { cause: error });
}

/** The create request: presigned URLs of the source (and of the result's staging key) unless the store is shared. */
async function buildRequest(run: RunScope, plan: PlannedTarget, buildKey: string): Promise<{ request: CreateBuildRequest; stageKey: string }> {
  const { options, shared, srcKey, signal } = run;
  const { input, source, sourceStore } = options;
  const stageKey = stagingKey(buildKey);
  // Both URLs are signed at once (no request is sent: signing is local).
  const [get, put] = shared ? [] : await Promise.all([
    sourceStore.presignGet(srcKey, { expiresIn: options.presignExpiry, signal }),
    sourceStore.presignPut(stageKey, { expiresIn: options.presignExpiry, contentType: 'application/gzip', signal }),
  ]);
  const request: CreateBuildRequest = {
    source: get ? { url: get.url, sha256: source.sha256 } : { key: srcKey, sha256: source.sha256 },
    target: { os: plan.target.os, cpu: plan.target.cpu, ...(plan.target.libc ? { libc: plan.target.libc } : {}), ...(plan.target.node ? { node: plan.target.node } : {}) },
    ...(options.overrides ? { overrides: options.overrides } : {}),
    label: options.label ?? `dispatch ${run.runId} ${run.pkg.name}@${run.pkg.version}`,
    provenance: { runId: run.runId, input: { spec: input.spec, kind: input.kind, sha256: input.sha256, ...(input.commit ? { commit: input.commit } : {}) } },
  };
  if (put) {
    request.output = { url: put.url, ...(Object.keys(put.headers).length > 0 ? { headers: put.headers } : {}) };
    run.staged.add(stageKey);
  }
  return { request, stageKey };
}

function createHooks(run: RunScope, trail: TargetTrail) {
  return {
    onSent: (sent: Promise<unknown>) => {
      run.creating.add(sent);
      void sent.finally(() => run.creating.delete(sent));
    },
    onCreated: trail.register,
    note: trail.note,
  };
}

/**
 * Creates the build under the build key as Idempotency-Key: a retry, a second run or a
 * re-attached run finds the same build instead of starting another. A build that already ended
 * badly, whose result is gone, or any finished one under --force, is not reused: this run's own
 * key then. Resolves to the final record of a reused finished build (not followed: its log would
 * only repeat an earlier run), or undefined when the build is to be followed.
 */
async function triggerBuild(run: RunScope, trail: TargetTrail, ordered: readonly PoolBuilder[], request: CreateBuildRequest, buildKey: string, stageKey: string): Promise<BuildRecord | undefined> {
  const { createWithFailover } = await buildSteps();
  const hooks = createHooks(run, trail);
  let created: CreatedBuild = await createWithFailover(ordered, request, buildKey, run.signal, hooks);
  const reusable = !created.existing
    || created.state === 'queued' || created.state === 'running'
    // A finished build's result must still be there: in the builder's store, or staged.
    || (created.state === 'succeeded' && !run.options.force && (run.shared || (await run.options.sourceStore.exists(stageKey, { signal: run.signal }))));
  if (!reusable) {
    created = await createWithFailover([created.builder, ...ordered.filter((other) => other !== created.builder)], request, `${buildKey}:${run.runId}`, run.signal, hooks);
  }
  trail.at(created);
  if (!(created.existing && created.state === 'succeeded')) return undefined;
  const record = await created.builder.client.getBuild(created.id, { signal: run.signal });
  run.emit({ type: 'target', target: trail.label, state: 'reused', builder: created.builder.url, buildId: created.id, detail: `built ${record.finishedAt ?? 'earlier'} for an earlier run` });
  return record;
}

/**
 * Follows the build to its end. A build whose builder dies (or whose record stops heartbeating)
 * is lost: it is sent to a healthy builder of the pool under a key of its own, so the lost one
 * can never come back as a second build of the same request.
 */
async function followToEnd(run: RunScope, trail: TargetTrail, plan: PlannedTarget, request: CreateBuildRequest, buildKey: string): Promise<BuildRecord> {
  const { createWithFailover, followWithWatchdog, isLost, rankBuilders } = await buildSteps();
  for (let attempt = 0; ; attempt += 1) {
    const builder = trail.builder as PoolBuilder;
    const id = trail.id as string;
    run.emit({ type: 'target', target: plan.label, state: 'queued', builder: builder.url, buildId: id });
    let running = false;
    try {
      return await followWithWatchdog(builder, id, run.signal, {
        onLog: (line) => run.emit({ type: 'log', target: plan.label, line }),
        onStatus: (status) => {
          if (status.state === 'running' && !running) {
            running = true;
            run.emit({ type: 'target', target: plan.label, state: 'running', builder: builder.url, buildId: status.id });
          }
          run.emit({ type: 'record', target: plan.label, record: status });
        },
      });
    } catch (error) {
      if (run.signal.aborted || !isLost(error) || attempt >= LOST_REDISPATCHES) throw error;
      await builder.client.cancelBuild(id, { signal: AbortSignal.any([run.signal, AbortSignal.timeout(2000)]) }).catch(() => undefined);
      const others = plan.builders.length > 1 ? plan.builders.filter((other) => other !== builder) : plan.builders;
      const { healthy } = await rankBuilders(others, plan.target, run.signal);
      if (healthy.length === 0) throw error;
      const again = await createWithFailover(healthy, request, `${buildKey}:${run.runId}:lost${attempt + 1}`, run.signal, createHooks(run, trail));
      trail.note({ kind: 'redispatched', builder: builder.url, message: `${error.message} Sent again to ${again.builder.url} as build ${again.id}.` });
      trail.at(again);
    }
  }
}

function successOf(record: BuildRecord, trail: TargetTrail, delivered: { buildKey: string; reused: boolean; key: string; provenance: TargetSuccess['provenance'] & object; copyMs: number }): TargetSuccess {
  const artifact = record.artifact as NonNullable<BuildRecord['artifact']>;
  const startedMs = record.startedAt ? Date.parse(record.startedAt) : undefined;
  return {
    target: trail.label, ok: true, cached: false, ...(delivered.reused ? { reused: true as const } : {}), buildKey: delivered.buildKey,
    key: delivered.key, file: artifact.file, sha256: artifact.sha256, size: artifact.size,
    ...record.resolved,
    builder: record.builder, builderUrl: trail.builder?.url, buildId: record.id, provenance: delivered.provenance,
    ...(trail.failovers.length > 0 ? { failovers: trail.failovers } : {}),
    durations: {
      ...(startedMs ? { queueMs: startedMs - Date.parse(record.createdAt) } : {}),
      ...(startedMs && record.finishedAt ? { buildMs: Date.parse(record.finishedAt) - startedMs } : {}),
      copyMs: delivered.copyMs,
      totalMs: Date.now() - trail.started,
    },
  };
}

/**
 * The run is over (done, interrupted or failing fast): every build still running is cancelled
 * on its builder — a killed cron job leaves nothing running — and the staged results are
 * removed (returned, so the manifest is written meanwhile).
 */
async function stopBuilds(run: RunScope): Promise<void> {
  if (run.creating.size > 0) await Promise.allSettled([...run.creating]);
  await Promise.all([...run.active.values()].map(async ({ client, id }) => {
    await client.cancelBuild(id, { signal: AbortSignal.timeout(CANCEL_TIMEOUT_MS) }).catch(() => undefined);
  }));
  const keys = [...run.staged];
  run.staged.clear();
  return removeStaged(run.options.sourceStore, keys);
}

/**
 * Removes staged results, best effort: all but one at once, then the last. A store that keeps
 * directories (s3rver) removes one when a delete leaves it empty, and two deletes doing that at
 * once fail there; the one left keeps the directory until the others are gone.
 */
async function removeStaged(store: ObjectStore, keys: readonly string[]): Promise<void> {
  const remove = (key: string) => store.delete(key).catch(() => undefined);
  const [last, ...others] = keys;
  await Promise.all(others.map(remove));
  if (last !== undefined) await remove(last);
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
