/**
 * Following a build to its end, with a watchdog: a build whose builder dies, or whose record
 * stops heartbeating, is ERR_BUILD_LOST (dispatch then sends it to another builder).
 */
import { BundleError } from '../errors.js';
import type { BuildRecord, LogLine } from '../protocol.js';
import type { PoolBuilder } from './plan.js';

/** How often a followed build's record is read to see that it is alive. */
const WATCHDOG_MS = 15_000;
/** A running build without a heartbeat (or a builder without an answer) this long is lost. */
const LOST_AFTER_MS = 60_000;

/** Build errors that are the builder's, not the build's: such a build is dispatched again. */
const REDISPATCHED_CODES: ReadonlySet<string> = new Set(['ERR_BUILDER_STOPPING', 'ERR_BUILDER_RESTARTED', 'ERR_BUILD_HANDED_BACK']);

export function lostBuild(id: string, builder: PoolBuilder, why: string): BundleError {
  return new BundleError('ERR_BUILD_LOST', `Build ${id} on ${builder.url} is lost: ${why}.`, { details: { buildId: id, builder: builder.url } });
}

export function isLost(error: unknown): error is BundleError {
  return error instanceof BundleError && error.code === 'ERR_BUILD_LOST';
}

export interface FollowHooks {
  onLog: (line: LogLine) => void;
  onStatus: (record: BuildRecord) => void;
}

/**
 * Resolves with the build's final record. Every WATCHDOG_MS the record is read: a running build
 * whose heartbeat is older than LOST_AFTER_MS, or a builder that cannot be reached for that
 * long, makes it ERR_BUILD_LOST; so does a builder that stopped or restarted under it.
 */
export async function followWithWatchdog(builder: PoolBuilder, id: string, runSignal: AbortSignal, hooks: FollowHooks): Promise<BuildRecord> {
  const watch = new AbortController();
  const signal = AbortSignal.any([runSignal, watch.signal]);
  let lastSign = Date.now();
  // Heartbeats are compared with each other, never with our clock: the builder's may differ.
  let heartbeat: { value: string | undefined; seenAt: number } = { value: undefined, seenAt: Date.now() };
  const timer = setInterval(() => {
    void builder.client.getBuild(id, { signal }).then((current) => {
      lastSign = Date.now();
      if (current.state !== 'running' || current.heartbeatAt !== heartbeat.value) {
        heartbeat = { value: current.heartbeatAt, seenAt: Date.now() };
      } else if (Date.now() - heartbeat.seenAt >= LOST_AFTER_MS) {
        watch.abort(lostBuild(id, builder, `its heartbeat has stayed at ${current.heartbeatAt} for ${Math.round((Date.now() - heartbeat.seenAt) / 1000)} s`));
      }
    }, () => {
      if (Date.now() - lastSign >= LOST_AFTER_MS) watch.abort(lostBuild(id, builder, `the builder has not answered for ${Math.round((Date.now() - lastSign) / 1000)} s`));
    });
  }, WATCHDOG_MS);
  try {
    const record = await builder.client.followBuild(id, {
      signal,
      onLog: (line) => {
        lastSign = Date.now();
        hooks.onLog(line);
      },
      onStatus: (status) => {
        lastSign = Date.now();
        hooks.onStatus(status);
      },
    });
    // A builder that shut down or restarted under the build did not fail it: the build failed
    // the builder. Another builder of the pool gets it.
    if ((record.state === 'failed' || record.state === 'cancelled') && REDISPATCHED_CODES.has(record.error?.code ?? '') && !runSignal.aborted) {
      throw lostBuild(id, builder, `${record.error?.code}: ${record.error?.message}`);
    }
    return record;
  } catch (error) {
    if (isLost(error)) throw error;
    if (watch.signal.aborted && !runSignal.aborted) throw watch.signal.reason;
    // The builder went away while we followed: the same verdict, without waiting.
    if (!runSignal.aborted && error instanceof BundleError && error.code === 'ERR_BUILDER_UNREACHABLE') throw lostBuild(id, builder, error.message);
    throw error;
  } finally {
    clearInterval(timer);
  }
}
