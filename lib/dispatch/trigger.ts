/**
 * Triggering a target's build: rank the pool by health and load, then create the build on the
 * first member that takes it. Every builder skipped, request retried or sent elsewhere is
 * reported as a FailoverNote, so a delivered bundle never hides what happened on the way.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import pRetry from 'p-retry';
import { BundleError, abortError, throwIfAborted, toBundleError } from '../errors.js';
import type { BuildRecord, CreateBuildRequest } from '../protocol.js';
import { formatTarget, type Target } from '../target.js';
import type { FailoverNote } from './outcome.js';
import type { PoolBuilder } from './plan.js';

/** How long a `/v1/health` probe may take before that builder counts as unhealthy. */
const HEALTH_TIMEOUT_MS = 5000;
/** Rounds over a pool whose builders could not be reached at all. */
const UNREACHABLE_ROUNDS = 3;
/** Retries of the same builder after a timeout or 5xx once the request was sent (same key). */
const SENT_RETRIES = 2;
/** How long a create request in flight may still answer after the run stopped (its build is then cancelled). */
const CREATE_GRACE_MS = 10_000;
/**
 * How long a target waits while every builder of its pool is draining (a rolling restart, a
 * SIGTERM'd replica): a draining builder is busy, not broken, so the run waits for one.
 */
export const DRAIN_WAIT_MS = 120_000;
/** Between two tries of a pool that is draining, unless a builder's Retry-After says otherwise. */
const DRAIN_RETRY_MS = 2000;

export type Note = (note: Omit<FailoverNote, 'at'>) => void;

export interface Ranking {
  /** Builders that take builds, least loaded first (equal loads keep the configured order). */
  healthy: PoolBuilder[];
  /** Builders that answered that they are draining: tried only when no other one is healthy. */
  draining: PoolBuilder[];
  /** Why each other builder was left out. */
  problems: Array<{ builder: PoolBuilder; problem: string }>;
}

/** A builder's sketch of how busy it is: (running + queued) per slot. */
export async function rankBuilders(builders: readonly PoolBuilder[], target: Target, signal: AbortSignal): Promise<Ranking> {
  // Nothing to choose between: the build request itself says whether that builder can take it.
  if (builders.length === 1) return { healthy: [...builders], draining: [], problems: [] };
  const draining: PoolBuilder[] = [];
  const problems: Ranking['problems'] = [];
  const platform = formatTarget(target, { withNode: false });
  const probes = await Promise.all(builders.map(async (builder) => {
    try {
      const health = await builder.client.health({ signal: AbortSignal.any([signal, AbortSignal.timeout(HEALTH_TIMEOUT_MS)]) });
      if (!health.ok || health.stopping) {
        draining.push(builder);
        problems.push({ builder, problem: 'draining (stopping: no new builds)' });
        return undefined;
      }
      if (health.targets.length > 0 && !health.targets.includes(platform)) {
        problems.push({ builder, problem: `does not serve ${platform} (serves ${health.targets.join(', ')})` });
        return undefined;
      }
      const { running, queued, capacity } = health.queue;
      return { builder, load: (running + queued) / Math.max(capacity, 1) };
    } catch (error) {
      if (signal.aborted) throw abortError(signal);
      problems.push({ builder, problem: toBundleError(error).message });
      return undefined;
    }
  }));
  const healthy = probes.filter((probe): probe is { builder: PoolBuilder; load: number } => probe !== undefined)
    .sort((a, b) => a.load - b.load)
    .map((probe) => probe.builder);
  return { healthy, draining: builders.filter((builder) => draining.includes(builder)), problems };
}

/**
 * The builders to try for a target, in order: the healthy ones, or (when none is) the draining
 * ones, which createWithFailover then waits for. Every member left out is noted.
 */
export async function chooseBuilders(builders: readonly PoolBuilder[], target: Target, label: string, signal: AbortSignal, note: Note): Promise<PoolBuilder[]> {
  const { healthy, draining, problems } = await rankBuilders(builders, target, signal);
  const ordered = healthy.length > 0 ? healthy : draining;
  if (ordered.length === 0) {
    throw new BundleError('ERR_BUILDER_UNREACHABLE', `No healthy builder for ${label}: ${problems.map(({ builder, problem }) => `${builder.url}: ${problem}`).join('; ')}.`, {
      details: { problems: problems.map(({ builder, problem }) => `${builder.url}: ${problem}`) },
    });
  }
  for (const { builder, problem } of problems) {
    if (!ordered.includes(builder)) note({ kind: 'skipped', builder: builder.url, message: `skipped: ${problem}` });
  }
  return ordered;
}

/** The request never reached the builder: another one may take it. */
function neverSent(error: BundleError): boolean {
  return error.code === 'ERR_BUILDER_UNREACHABLE' && error.details?.sent === false;
}

/** The builder answered that it is draining, or that its queue is full: it did not take the build, another one may (or it, later). */
export function isDraining(error: BundleError): boolean {
  return (error.code === 'ERR_BUILDER_STOPPING' || error.code === 'ERR_BUILDER_BUSY') && error.details?.status === 503;
}

function retryableAfterSend(error: unknown): boolean {
  return error instanceof BundleError && !isDraining(error) && error.details?.sent === true && error.details.retryable === true;
}

export interface CreatedBuild {
  builder: PoolBuilder;
  id: string;
  existing: boolean;
  state: BuildRecord['state'];
}

export interface CreateHooks {
  /** Each create request in flight; a stopped run waits for them so that what they start is cancelled. */
  onSent: (sent: Promise<unknown>) => void;
  /** A build was created (possibly after the run stopped: it is then cancelled). */
  onCreated: (builder: PoolBuilder, id: string) => void;
  note: Note;
}

/**
 * Creates the build on the first builder of `ordered` that takes it. A request that never
 * reached a builder, or that a draining builder turned away, goes to the next one; a timeout or
 * 5xx after it was sent is retried on the SAME builder with the same Idempotency-Key, so a
 * build never starts twice. A pool that cannot be reached is tried UNREACHABLE_ROUNDS times; a
 * pool that is draining is waited for up to DRAIN_WAIT_MS.
 */
export async function createWithFailover(ordered: readonly PoolBuilder[], request: CreateBuildRequest, idempotencyKey: string, signal: AbortSignal, hooks: CreateHooks): Promise<CreatedBuild> {
  // A create request in flight when the run stops is not cut off at once: the builder may have
  // started the build already, so the request gets CREATE_GRACE_MS to answer and whatever it
  // created is reported (onCreated) for cancelling.
  const send = (builder: PoolBuilder) => {
    const grace = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const stopLater = () => {
      timer = setTimeout(() => grace.abort(signal.reason), CREATE_GRACE_MS).unref();
    };
    signal.addEventListener('abort', stopLater, { once: true });
    const sent = builder.client.createBuild(request, { idempotencyKey, signal: grace.signal });
    const landed = sent.then((created) => hooks.onCreated(builder, created.id), () => undefined).finally(() => {
      signal.removeEventListener('abort', stopLater);
      clearTimeout(timer);
    });
    hooks.onSent(landed);
    return sent;
  };
  const createOn = (builder: PoolBuilder) => pRetry(() => send(builder), {
    retries: SENT_RETRIES,
    minTimeout: 500,
    signal,
    shouldRetry: ({ error }) => retryableAfterSend(error),
    onFailedAttempt: ({ error, retriesLeft }) => {
      if (retryableAfterSend(error) && retriesLeft > 0 && !signal.aborted) {
        hooks.note({ kind: 'retried', builder: builder.url, message: `${toBundleError(error).message}; sending the request again (same Idempotency-Key, ${retriesLeft} more at most)` });
      }
    },
  });
  const started = Date.now();
  for (let round = 1; ; round += 1) {
    let last: BundleError | undefined;
    let allDraining = true;
    let retryAfterMs = DRAIN_RETRY_MS;
    for (const [index, builder] of ordered.entries()) {
      throwIfAborted(signal);
      try {
        const created = await createOn(builder);
        return { builder, id: created.id, existing: created.existing, state: created.state };
      } catch (error) {
        if (signal.aborted) throw abortError(signal);
        const failure = toBundleError(error);
        const draining = isDraining(failure);
        if (!draining && !neverSent(failure)) throw failure;
        last = failure;
        if (!draining) allDraining = false;
        else if (typeof failure.details?.retryAfterMs === 'number') retryAfterMs = Math.max(retryAfterMs, failure.details.retryAfterMs);
        const next = ordered[index + 1];
        hooks.note({ kind: 'failed-over', builder: builder.url, message: `${draining ? (failure.code === 'ERR_BUILDER_BUSY' ? 'queue full' : 'draining') : 'not reached'}: ${failure.message}${next ? `; sending it to ${next.url}` : ''}` });
      }
    }
    const waitMs = allDraining ? Math.min(retryAfterMs, 10_000) : 500 * 2 ** (round - 1);
    const giveUp = allDraining ? Date.now() - started + waitMs > DRAIN_WAIT_MS : round >= UNREACHABLE_ROUNDS;
    if (giveUp || !last) throw last ?? new BundleError('ERR_BUILDER_UNREACHABLE', 'No builder of the pool could be reached.');
    hooks.note({
      kind: 'waiting', builder: ordered[0]?.url ?? '',
      message: allDraining ? `every builder of the pool is draining or has a full queue; trying again in ${Math.ceil(waitMs / 1000)} s (for up to ${DRAIN_WAIT_MS / 1000} s)` : `no builder of the pool could be reached; trying again in ${waitMs} ms (round ${round + 1} of ${UNREACHABLE_ROUNDS})`,
    });
    await sleep(waitMs, undefined, { signal }).catch(() => {
      throw abortError(signal);
    });
  }
}
