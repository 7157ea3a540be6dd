/**
 * The builder's Prometheus metrics (prom-client), served at GET /metrics. Names follow
 * Prometheus' conventions: one `bundle_dispatch_builder_` prefix, base units (seconds, bytes),
 * `_total` on counters, and no per-build label (a build id per series would grow without end):
 * targets, outcomes and refusal reasons are small, fixed sets.
 *
 * Queue depth, running builds, slots and draining are read from the service when scraped;
 * counters and histograms are fed by the service as builds are accepted, start and end.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const PREFIX = 'bundle_dispatch_builder_';

/**
 * Seconds: builds last from a few seconds (a cached pure-JS app) to tens of minutes (native
 * addons cross-compiled and proven under an emulator); queue waits from nothing to as long.
 */
export const DURATION_BUCKETS = [1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600];

/** How a build ended, as the `outcome` label: the record's state. */
export type BuildOutcome = 'succeeded' | 'failed' | 'cancelled';

/** Why POST /v1/builds was refused, as the `reason` label. */
export type RefusalReason = 'draining' | 'queue_full' | 'unsupported_target' | 'invalid' | 'source_refused' | 'source_fetch' | 'integrity' | 'too_large';

/** What the service tells the metrics; every method is cheap and never throws. */
export interface MetricsRecorder {
  accepted(target: string, sourceBytes: number): void;
  started(target: string, queueWaitSeconds: number): void;
  finished(target: string, outcome: BuildOutcome, durationSeconds: number | undefined): void;
  refused(reason: RefusalReason): void;
}

/** What a scrape reads from the service. */
export interface MetricsSource {
  targets: readonly string[];
  slots: number;
  draining(): boolean;
  /** Builds queued and running now, by target. */
  load(): Map<string, { queued: number; running: number }>;
}

export interface BuilderMetrics extends MetricsRecorder {
  registry: Registry;
  /** Attaches the service the gauges read at each scrape (the service is made after the metrics). */
  attach(source: MetricsSource): void;
  /** The exposition text and its content type. */
  render(): Promise<{ contentType: string; body: string }>;
}

export function createBuilderMetrics(info: { version: string; builderId: string }): BuilderMetrics {
  const registry = new Registry();
  let source: MetricsSource | undefined;
  collectDefaultMetrics({ register: registry });
  // prom-client's three gauges named *_total break Prometheus' naming rule (promtool check
  // metrics says so); the same counts are in nodejs_active_handles, _requests and _resources.
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name);

  const perTarget = (pick: 'queued' | 'running') => function collect(this: Gauge<'target'>) {
    if (!source) return;
    const load = source.load();
    for (const target of source.targets) this.set({ target }, load.get(target)?.[pick] ?? 0);
  };
  new Gauge({ name: `${PREFIX}queued_builds`, help: 'Builds accepted and waiting for a slot, by target.', labelNames: ['target'], registers: [registry], collect: perTarget('queued') });
  new Gauge({ name: `${PREFIX}running_builds`, help: 'Builds running now, by target.', labelNames: ['target'], registers: [registry], collect: perTarget('running') });
  new Gauge({
    name: `${PREFIX}slots`, help: 'Builds this builder runs at once (builder.slots).', registers: [registry],
    collect() {
      if (source) this.set(source.slots);
    },
  });
  new Gauge({
    name: `${PREFIX}draining`, help: '1 while the builder drains (SIGTERM or POST /v1/drain) and takes no builds, else 0.', registers: [registry],
    collect() {
      if (source) this.set(source.draining() ? 1 : 0);
    },
  });
  const buildInfo = new Gauge({ name: `${PREFIX}info`, help: 'Always 1; the labels say which bundle-dispatch and Node this builder runs.', labelNames: ['version', 'node', 'builder'], registers: [registry] });
  buildInfo.set({ version: info.version, node: process.versions.node, builder: info.builderId }, 1);

  const builds = new Counter({ name: `${PREFIX}builds_total`, help: 'Builds that ended, by target and outcome (succeeded, failed, cancelled).', labelNames: ['target', 'outcome'], registers: [registry] });
  const refused = new Counter({ name: `${PREFIX}refused_requests_total`, help: 'POST /v1/builds refused, by reason (draining, queue_full, unsupported_target, invalid, source_refused, source_fetch, integrity, too_large).', labelNames: ['reason'], registers: [registry] });
  const sourceBytes = new Counter({ name: `${PREFIX}source_bytes_total`, help: 'Bytes of sources fetched and verified for accepted builds.', registers: [registry] });
  const duration = new Histogram({ name: `${PREFIX}build_duration_seconds`, help: 'From the start of a build to its end, by target (builds that started).', labelNames: ['target'], buckets: DURATION_BUCKETS, registers: [registry] });
  const queueWait = new Histogram({ name: `${PREFIX}queue_wait_seconds`, help: 'From a build\'s acceptance to its start, by target.', labelNames: ['target'], buckets: DURATION_BUCKETS, registers: [registry] });

  return {
    registry,
    attach(next) {
      source = next;
      // Every series of a served target exists from the first scrape, at 0: a query over a
      // target that never built yet does not meet a missing series.
      for (const target of next.targets) {
        for (const outcome of ['succeeded', 'failed', 'cancelled'] as const) builds.inc({ target, outcome }, 0);
        duration.zero({ target });
        queueWait.zero({ target });
      }
      for (const reason of ['draining', 'queue_full'] as const) refused.inc({ reason }, 0);
    },
    accepted(_target, bytes) {
      sourceBytes.inc(bytes);
    },
    started(target, waitSeconds) {
      queueWait.observe({ target }, Math.max(0, waitSeconds));
    },
    finished(target, outcome, durationSeconds) {
      builds.inc({ target, outcome });
      if (durationSeconds !== undefined) duration.observe({ target }, Math.max(0, durationSeconds));
    },
    refused(reason) {
      refused.inc({ reason });
    },
    async render() {
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
  };
}
