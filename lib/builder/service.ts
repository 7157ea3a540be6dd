/**
 * The builder's core, without HTTP: accepts builds (source fetched and verified first),
 * queues them, runs the bundle workflow for each, keeps records and logs in memory for its
 * own builds and in the store as they happen, and lets listeners follow a build.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BundleError, toBundleError } from '../errors.js';
import { bundleFileName } from '../keys.js';
import { isTerminal, type BuildLinks, type BuildRecord, type BuildState, type CreateBuildRequest, type LogLine, type ReadinessCheck, type ReadinessResponse, type StepName } from '../protocol.js';
import { redact } from '../redact.js';
import { validateKey, type ObjectStore } from '../storage/index.js';
import { formatTarget, normalizeTarget, sameTarget, type Target } from '../target.js';
import { maybeGunzip } from '../workflow/tar-input.js';
import type { Scaffold } from '../workflow/scaffold.js';
import type { RunAs } from '../workflow/runtime-registry.js';
import type { BuildEvent, BuildOverrides } from '../workflow/types.js';
import { createHashingStream } from '../hash-stream.js';
import { downloadToFile, uploadFile } from './client.js';
import { createAddressGuard, type AddressGuard } from './network.js';
import { SlotQueue } from './queue.js';
import { RecordStore, keys, notFound } from './records.js';
import { UidPool, checkFreeDisk, claimUidRange, freeDiskBytes, killUidProcesses } from './resources.js';
import { findBlockingAncestor, unreachableError } from '../workflow/run-as.js';
import { signProvenance, type NodeHashes } from './provenance.js';
import type { SigningKey } from '../provenance/keys.js';
import { createParallelGzip } from '../workflow/parallel-gzip.js';
import type { BuildOutcome, MetricsRecorder, RefusalReason } from './metrics.js';

/** The few logger methods the service uses (fastify's pino logger fits). */
export interface ServiceLogger {
  info(object: Record<string, unknown>, message: string): void;
  warn(object: Record<string, unknown>, message: string): void;
  error(object: Record<string, unknown>, message: string): void;
}

export interface BuilderServiceOptions {
  store: ObjectStore;
  scaffold: Scaffold;
  /** This builder's name in records; replicas sharing a store need different ids. */
  builderId: string;
  slots: number;
  /** Targets served (matched on os, cpu and libc; the node range is the request's). */
  targets: Target[];
  /** The builder's own work area: per-build workdirs and the source/output spool. */
  workDir: string;
  buildTimeoutMs: number;
  maxSourceBytes: number;
  minFreeDisk: number;
  /** Uids for builds when running as root; undefined runs npm as this process's user. */
  uidRange?: { first: number; last: number };
  /** Where builders of this machine claim their uid ranges (default /run/bundle-dispatch/uid-claims). */
  uidClaimsDir?: string;
  heartbeatMs: number;
  /**
   * `builder.allowSources`: loopback/private CIDRs, addresses and host names source and output
   * URLs may point at (public addresses always may; link-local never). Default: none.
   */
  allowSources?: readonly string[];
  /** Replaces the guard made from `allowSources` (tests inject a resolver and a connect). */
  addressGuard?: AddressGuard;
  /**
   * The key the builder signs each bundle's provenance with (lib/provenance/keys.ts). Without
   * one, records carry no provenance, and dispatch refuses their results.
   */
  signingKey?: SigningKey;
  /** bundle-dispatch's version, named in provenance (`runDetails.builder.version`). */
  version?: string;
  /** Builder tokens and other secrets: redacted from every log line, error and record. */
  secrets: readonly string[];
  logger: ServiceLogger;
  /** builder.maxQueued: builds waiting for a slot beyond which POST /v1/builds answers 503 ERR_BUILDER_BUSY (0 or undefined: no limit). */
  maxQueued?: number;
  /** Told of acceptances, starts, ends and refusals (Prometheus, lib/builder/metrics.ts). */
  metrics?: MetricsRecorder;
}

/** What follows a build: log lines, record changes, and the end (then nothing more). */
export interface BuildListener {
  log(line: LogLine): void;
  status(record: BuildRecord): void;
  end(record: BuildRecord): void;
}

/** A source fetched into the spool and checked against the sha256 the request gave. */
interface FetchedSource {
  id: string;
  spool: string;
  sha256: string;
  size: number;
}

interface BuildEntry {
  record: BuildRecord;
  lines: LogLine[];
  listeners: Set<BuildListener>;
  request: CreateBuildRequest;
  spool: string;
  controller: AbortController;
  finished: Promise<void>;
  markFinished: () => void;
  /** A save of the record waiting for RECORD_SAVE_INTERVAL_MS (changes while the build runs). */
  saveTimer?: NodeJS.Timeout;
  /** The served target it matched, as metrics label it (`linux-x64`). */
  served: string;
}

/**
 * Environment names a request may not set: npm and the runtime step run as the builder's own
 * user with the build's env, so NODE_OPTIONS or LD_PRELOAD from a request would run code there.
 */
const RESERVED_ENV = /^(NODE_.*|NPM_.*|PATH|HOME|TMPDIR|TMP|TEMP|LD_.*|DYLD_.*|BASH_ENV|ENV|SHELL|IFS|UV_.*|OPENSSL_.*)$/i;

/** Finished builds kept in memory (with their logs); older ones are served from the store. */
const MEMORY_KEEP = 200;
const CANCEL_WAIT_MS = 5000;
/** A readiness probe of the store is reused this long, and given up on after this long. */
const STORE_PROBE_TTL_MS = 5000;
const STORE_PROBE_TIMEOUT_MS = 3000;
/** How long a replica waits for the build another replica claimed an Idempotency-Key for, and how often it looks. */
const CLAIM_WAIT_MS = 120_000;
const CLAIM_POLL_MS = 250;
/**
 * While a build runs, its record is written to the store at most this often: each write is a
 * dozen file operations, and one per step change slowed the build's own file-heavy steps (bundle,
 * verify) by 10–30 ms. Followers on this builder hear of every change at once; other replicas
 * read the store, at most this far behind. The end of a build is written at once.
 */
const RECORD_SAVE_INTERVAL_MS = 1000;

/** Refusals of POST /v1/builds as the metrics count them, by error code. */
const REFUSAL_REASONS: Partial<Record<string, RefusalReason>> = {
  ERR_BUILDER_STOPPING: 'draining',
  ERR_BUILDER_BUSY: 'queue_full',
  ERR_TARGET_UNSUPPORTED: 'unsupported_target',
  ERR_REQUEST_INVALID: 'invalid',
  ERR_STORE_KEY: 'invalid',
  ERR_SOURCE_REFUSED: 'source_refused',
  ERR_SOURCE_FETCH: 'source_fetch',
  ERR_STORE_NOT_FOUND: 'source_fetch',
  ERR_INTEGRITY: 'integrity',
  ERR_INPUT_TOO_LARGE: 'too_large',
};

/** What POST /v1/builds answers while draining: 503, Retry-After, reason `draining`. */
function drainingError(): BundleError {
  return new BundleError('ERR_BUILDER_STOPPING', 'The builder is draining (shutting down or POST /v1/drain) and accepts no new builds; send the build to another builder.', { details: { reason: 'draining', status: 503 } });
}

export function newBuildId(now = Date.now()): string {
  return `${now.toString(36).padStart(9, '0')}${randomBytes(8).toString('hex')}`;
}

export function buildLinks(id: string, withArtifact = false): BuildLinks {
  const self = `/v1/builds/${id}`;
  return { self, events: `${self}/events`, log: `${self}/log`, ...(withArtifact ? { artifact: `${self}/artifact` } : {}) };
}

/** A URL without its query string (a presigned URL's signature stays out of records). */
function withoutQuery(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.origin}${parsed.pathname}`;
  } catch {
    return '';
  }
}


export class BuilderService {
  readonly records: RecordStore;
  private readonly builds = new Map<string, BuildEntry>();
  private readonly idempotent = new Map<string, string>();
  private readonly accepting = new Map<string, Promise<{ record: BuildRecord; existing: boolean }>>();
  private readonly queue: SlotQueue;
  private readonly pool: UidPool | undefined;
  private readonly spoolDir: string;
  private readonly workRoot: string;
  /** Every source download and output upload connects through it (SSRF guard). */
  private readonly guard: AddressGuard;
  /** When the drain began (ISO time); undefined while the builder takes builds. */
  private drainingSince: string | undefined;
  private hurried = false;
  private endGrace: (() => void) | undefined;
  private storeProbe: { at: number; result: Promise<ReadinessCheck> } | undefined;
  private releaseUids: (() => Promise<void>) | undefined;
  /** sha256 of host Node binaries named in provenance, by path, size and mtime (hashing one takes ~0.3 s). */
  private readonly nodeHashes: NodeHashes = new Map();

  constructor(private readonly options: BuilderServiceOptions) {
    this.records = new RecordStore({ store: options.store, onWriteError: (error, what) => options.logger.error({ err: this.safe(error) }, `store write failed: ${what}`) });
    this.queue = new SlotQueue(options.slots, (id) => this.run(id));
    this.pool = options.uidRange ? new UidPool(options.uidRange.first, options.uidRange.last) : undefined;
    if (this.pool && this.pool.size < options.slots) {
      throw new BundleError('ERR_CONFIG', `builder.slots (${options.slots}) is larger than the uid range builder.runAsUids (${this.pool.size} uids).`);
    }
    this.spoolDir = path.join(options.workDir, 'spool');
    this.workRoot = path.join(options.workDir, 'builds');
    this.guard = options.addressGuard ?? createAddressGuard({ allow: options.allowSources ?? [] });
    for (const warning of this.guard.warnings) options.logger.warn({}, warning);
  }

  get builderId(): string {
    return this.options.builderId;
  }

  get stopping(): boolean {
    return this.drainingSince !== undefined;
  }

  get queueState(): { running: number; queued: number; capacity: number } {
    return { running: this.queue.running, queued: this.queue.queued, capacity: this.options.slots };
  }

  /** Builds queued and running now, by served target (what the metrics' gauges show). */
  load(): Map<string, { queued: number; running: number }> {
    const load = new Map<string, { queued: number; running: number }>();
    for (const entry of this.builds.values()) {
      const state = entry.record.state;
      if (state !== 'queued' && state !== 'running') continue;
      const counts = load.get(entry.served) ?? { queued: 0, running: 0 };
      counts[state] += 1;
      load.set(entry.served, counts);
    }
    return load;
  }

  get slots(): number {
    return this.options.slots;
  }

  get targets(): string[] {
    return this.options.targets.map((target) => formatTarget(target));
  }

  /**
   * Prepares the work area and marks builds this builder left queued or running when it died
   * as failed with ERR_BUILDER_RESTARTED. Call once, before accepting requests.
   */
  async start(): Promise<{ recovered: string[] }> {
    await mkdir(this.options.workDir, { recursive: true });
    if (this.options.uidRange) {
      const blocking = await findBlockingAncestor(path.dirname(this.options.workDir));
      if (blocking) throw await unreachableError('workDir', this.options.workDir, blocking, 'the build users (builder.runAsUids)', 'workDir /var/tmp/bundle-dispatch');
    }
    // Build users pass through the work dir (x) but cannot list it; the spool stays root's.
    await chmod(this.options.workDir, 0o711);
    await mkdir(this.spoolDir, { recursive: true, mode: 0o700 });
    await chmod(this.spoolDir, 0o700);
    await mkdir(this.workRoot, { recursive: true });
    for (const dir of [this.spoolDir, this.workRoot]) {
      for (const name of await readdir(dir)) await rm(path.join(dir, name), { recursive: true, force: true });
    }
    if (this.options.uidRange) {
      // First: no other builder on this machine uses these uids (the sweep below would kill its builds).
      this.releaseUids = await claimUidRange(this.options.uidRange, this.options.builderId, this.options.uidClaimsDir);
      const killed = await killUidProcesses(this.options.uidRange.first, this.options.uidRange.last);
      if (killed.length > 0) this.options.logger.warn({ pids: killed }, 'killed processes left behind by builds of a previous run');
    }
    const recovered: string[] = [];
    for (const id of await this.records.listActive(this.options.builderId)) {
      const record = await this.records.readRecord(id);
      if (record && !isTerminal(record.state)) {
        const now = new Date().toISOString();
        const was = record.state;
        record.state = 'failed';
        record.error = { code: 'ERR_BUILDER_RESTARTED', message: `The builder restarted while this build was ${was}; dispatch it again.` };
        record.finishedAt = now;
        for (const step of record.steps) {
          if (step.state === 'running') Object.assign(step, { state: 'failed', finishedAt: now, durationMs: Date.parse(now) - Date.parse(step.startedAt) });
        }
        // The record is written at most once a second and on heartbeats, the log every 500 ms: the log knows the last line.
        const logged = await this.records.readLog(id, record.lastSeq);
        record.lastSeq = Math.max(record.lastSeq, ...logged.map((line) => line.seq)) + 1;
        this.records.appendLog(id, { seq: record.lastSeq, time: now, step: 'builder', stream: 'status', message: record.error.message });
        await this.records.closeLog(id);
        await this.records.saveRecord(record);
        recovered.push(id);
        this.options.logger.warn({ buildId: id, was }, 'build failed: the builder restarted');
      }
      await this.records.clearActive(this.options.builderId, id);
    }
    return { recovered };
  }

  /** Accepts a build: checks the target, fetches and verifies the source, queues it. */
  async submit(request: CreateBuildRequest, idempotencyKey?: string): Promise<{ record: BuildRecord; existing: boolean }> {
    try {
      return await this.submitOnce(request, idempotencyKey);
    } catch (error) {
      const reason = REFUSAL_REASONS[toBundleError(error).code];
      if (reason) this.options.metrics?.refused(reason);
      throw error;
    }
  }

  private async submitOnce(request: CreateBuildRequest, idempotencyKey?: string): Promise<{ record: BuildRecord; existing: boolean }> {
    this.refuseNewBuild();
    const target = normalizeTarget(request.target);
    if (!this.options.targets.some((served) => sameTarget(served, target))) {
      throw new BundleError('ERR_TARGET_UNSUPPORTED', `This builder does not serve ${formatTarget(target)}; it serves ${this.targets.join(', ')}.`, { details: { served: this.targets } });
    }
    if (request.source.key !== undefined) validateKey(request.source.key);
    const refused = Object.keys(request.overrides?.env ?? {}).filter((name) => RESERVED_ENV.test(name));
    if (refused.length > 0) {
      throw new BundleError('ERR_REQUEST_INVALID', `overrides.env may not set ${refused.join(', ')}: the builder sets these itself (and some would reach processes it runs as itself).`);
    }
    if (idempotencyKey === undefined) return this.accept(request, target, await this.fetchSource(request));

    const known = this.idempotent.get(idempotencyKey);
    if (known) {
      const record = await this.get(known);
      if (record) return { record, existing: true };
    }
    const inFlight = this.accepting.get(idempotencyKey);
    if (inFlight) return { record: (await inFlight).record, existing: true };
    const attempt = (async () => {
      // The source is fetched while the key is looked up: a new build (the usual case) does not
      // wait for one before the other; a known key cancels the fetch.
      const id = newBuildId();
      const cancelFetch = new AbortController();
      const fetching = this.fetchSource(request, cancelFetch.signal, id);
      fetching.catch(() => undefined);
      const dropFetch = () => {
        cancelFetch.abort();
        void fetching.then((fetched) => rm(fetched.spool, { force: true }), () => undefined);
      };
      let existing: BuildRecord | undefined;
      try {
        existing = await this.claimIdempotent(idempotencyKey, id);
      } catch (error) {
        dropFetch();
        throw error;
      }
      if (existing) {
        dropFetch();
        this.idempotent.set(idempotencyKey, existing.id);
        return { record: existing, existing: true };
      }
      let fetched: FetchedSource;
      try {
        fetched = await fetching;
      } catch (error) {
        // The claim goes, so that a replica waiting on it builds instead.
        await this.records.releaseIdempotent(idempotencyKey, id).catch(() => undefined);
        throw error;
      }
      return this.accept(request, target, fetched, idempotencyKey);
    })();
    this.accepting.set(idempotencyKey, attempt);
    try {
      return await attempt;
    } finally {
      this.accepting.delete(idempotencyKey);
    }
  }

  /**
   * Looks the Idempotency-Key up in the store and, when nobody holds it, claims it for `id`
   * before the source is downloaded: a replica that gets the same key during the download
   * finds the claim and waits for that build instead of starting a second one. A claim whose
   * build does not appear (its replica failed the download, or died) is waited for at most
   * CLAIM_WAIT_MS. Claims are plain writes read back (S3 has no compare-and-set that every
   * S3-compatible server honours): two lookups that both miss within one store round trip can
   * still both build (docs/builder.md, *Replicas behind one URL*).
   */
  private async claimIdempotent(key: string, id: string): Promise<BuildRecord | undefined> {
    const deadline = Date.now() + CLAIM_WAIT_MS;
    for (;;) {
      const holder = await this.records.findIdempotent(key);
      if (holder === undefined || holder === id) {
        await this.records.claimIdempotent(key, id);
        const after = await this.records.findIdempotent(key);
        // Another replica's claim landed after ours: its build is the one.
        if (after === id || after === undefined) return undefined;
        continue;
      }
      const record = await this.get(holder);
      if (record) return record;
      if (Date.now() >= deadline) {
        this.options.logger.warn({ key: holder }, 'an Idempotency-Key claim did not become a build in time: building here');
        await this.records.claimIdempotent(key, id);
        return undefined;
      }
      await new Promise((resolve) => setTimeout(resolve, CLAIM_POLL_MS));
    }
  }

  /** 503s for a new build: draining, or a full queue (builder.maxQueued; 0: no limit). */
  private refuseNewBuild(): void {
    if (this.stopping) throw drainingError();
    const limit = this.options.maxQueued ?? 0;
    if (limit > 0 && this.queue.queued >= limit) {
      throw new BundleError('ERR_BUILDER_BUSY', `The builder's queue is full (${this.queue.queued} builds waiting, builder.maxQueued ${limit}); send the build to another builder or try again later.`, { details: { reason: 'queue_full', status: 503 } });
    }
  }

  /** Downloads the source into the spool under a new build id and checks its sha256. */
  private async fetchSource(request: CreateBuildRequest, signal?: AbortSignal, id = newBuildId()): Promise<FetchedSource> {
    const spool = path.join(this.spoolDir, `${id}.tgz`);
    const expected = request.source.sha256.toLowerCase();
    // The output URL is checked now too (resolved, not connected to): refused before the build
    // runs, not after. Its upload connects through the guard again (the name may resolve anew);
    // a name that does not resolve yet fails there, as ERR_OUTPUT.
    if (request.output) {
      await this.guard.check(request.output.url, 'output').catch((error: unknown) => {
        if (error instanceof BundleError && error.code === 'ERR_SOURCE_REFUSED') throw error;
      });
    }
    let fetched: { sha256: string; size: number };
    if (request.source.url !== undefined) {
      fetched = await downloadToFile(request.source.url, spool, { maxBytes: this.options.maxSourceBytes, timeoutMs: 5 * 60_000, guard: this.guard, ...(signal ? { signal } : {}) })
        .catch((error: unknown) => {
          throw this.withheld(error, 'source fetch failed');
        });
    } else {
      fetched = await this.copyFromStore(request.source.key as string, spool);
    }
    if (fetched.sha256 !== expected) {
      await rm(spool, { force: true });
      // What the URL answered (its sha256 too) stays in the builder's log: a token holder must not
      // learn what a URL on the builder's network serves.
      this.options.logger.warn({ url: redact(withoutQuery(request.source.url ?? ''), this.options.secrets), key: request.source.key, expected, actual: fetched.sha256 }, 'source sha256 mismatch');
      throw new BundleError('ERR_INTEGRITY', `The source's sha256 is not ${expected} as the request says.`, { details: { expected } });
    }
    return { id, spool, sha256: expected, size: fetched.size };
  }

  private async accept(request: CreateBuildRequest, target: Target, source: FetchedSource, idempotencyKey?: string): Promise<{ record: BuildRecord; existing: boolean }> {
    const { id, spool } = source;
    // Asked again: the drain may have begun, or the queue filled, while the source downloaded.
    try {
      this.refuseNewBuild();
    } catch (error) {
      await rm(spool, { force: true });
      throw error;
    }
    let markFinished = () => undefined as void;
    const finished = new Promise<void>((resolve) => {
      markFinished = resolve;
    });
    const record: BuildRecord = {
      id,
      builder: this.options.builderId,
      state: 'queued',
      ...(request.label ? { label: request.label } : {}),
      ...(idempotencyKey ? { idempotencyKey } : {}),
      target,
      source: {
        sha256: source.sha256,
        size: source.size,
        ...(request.source.key !== undefined ? { key: request.source.key } : { url: withoutQuery(request.source.url as string) }),
      },
      steps: [],
      createdAt: new Date().toISOString(),
      lastSeq: 0,
      links: buildLinks(id),
    };
    const served = formatTarget(this.options.targets.find((candidate) => sameTarget(candidate, target)) ?? target);
    const entry: BuildEntry = { record, lines: [], listeners: new Set(), request, spool, controller: new AbortController(), finished, markFinished, served };
    this.options.metrics?.accepted(served, source.size);
    this.builds.set(id, entry);
    if (idempotencyKey) this.idempotent.set(idempotencyKey, id);
    const persisted = Promise.all([
      this.records.saveRecord(record),
      this.records.addToIndex(record),
      this.records.markActive(this.options.builderId, id),
      idempotencyKey ? this.records.saveIdempotent(idempotencyKey, id) : undefined,
    ]);
    // Queued while its records are written: the build may start now, and the client hears of
    // it once they are stored. A crash in between loses a build nobody was told about; the
    // client's retry with the same Idempotency-Key starts it again.
    this.options.logger.info({ buildId: id, target: formatTarget(target), label: request.label, sourceSize: source.size }, 'build accepted');
    this.queue.push(id);
    this.evict();
    await persisted;
    return { record: this.view(entry), existing: false };
  }

  private async copyFromStore(key: string, file: string): Promise<{ sha256: string; size: number }> {
    const { body, info } = await this.options.store.get(key);
    if (info.size > this.options.maxSourceBytes) {
      body.destroy();
      throw new BundleError('ERR_INPUT_TOO_LARGE', `The source is ${info.size} bytes, over builder.maxSourceBytes (${this.options.maxSourceBytes}).`);
    }
    const hash = createHashingStream();
    try {
      await pipeline(body, hash.stream, createWriteStream(file, { mode: 0o600 }));
    } catch (error) {
      await rm(file, { force: true });
      throw new BundleError('ERR_SOURCE_FETCH', `Could not read the source ${key} from the builder's store: ${(error as Error).message}`, { cause: error });
    }
    return hash.result();
  }

  /** The record as served: own builds from memory (with the live queue position), others from the store. */
  async get(id: string): Promise<BuildRecord | undefined> {
    const entry = this.builds.get(id);
    if (entry) return this.view(entry);
    return this.records.readRecord(id);
  }

  /** The record of an own build from memory, synchronously (the fast path of GET /v1/builds/:id). */
  getOwn(id: string): BuildRecord | undefined {
    const entry = this.builds.get(id);
    return entry ? this.view(entry) : undefined;
  }

  /** Streams a result from the builder's store. */
  artifact(key: string): ReturnType<ObjectStore['get']> {
    return this.options.store.get(key);
  }

  async log(id: string, since: number): Promise<LogLine[]> {
    const entry = this.builds.get(id);
    if (entry) return entry.lines.filter((line) => line.seq > since);
    if (!(await this.records.readRecord(id))) throw notFound(id);
    return this.records.readLog(id, since);
  }

  /**
   * Follows a build: log lines after `since`, then the current record, then live changes until
   * it ends. Builds of other replicas are followed by polling the store. Returns an unsubscribe.
   */
  async subscribe(id: string, since: number, listener: BuildListener): Promise<() => void> {
    const entry = this.builds.get(id);
    if (entry) {
      for (const line of entry.lines) if (line.seq > since) listener.log(line);
      const record = this.view(entry);
      listener.status(record);
      if (isTerminal(record.state)) {
        listener.end(record);
        return () => undefined;
      }
      entry.listeners.add(listener);
      return () => entry.listeners.delete(listener);
    }
    let record = await this.records.readRecord(id);
    if (!record) throw notFound(id);
    let last = since;
    const replay = async () => {
      for (const line of await this.records.readLog(id, last)) {
        listener.log(line);
        last = line.seq;
      }
    };
    await replay();
    listener.status(record);
    if (isTerminal(record.state)) {
      listener.end(record);
      return () => undefined;
    }
    let stopped = false;
    void (async () => {
      while (!stopped) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        if (stopped) break;
        const next = await this.records.readRecord(id).catch(() => undefined);
        if (!next) continue;
        // The stored record's lastSeq lags behind the log (written every 500 ms): always look.
        await replay().catch(() => undefined);
        if (stopped) break;
        if (JSON.stringify(next) !== JSON.stringify(record)) listener.status(next);
        record = next;
        if (isTerminal(next.state)) {
          listener.end(next);
          break;
        }
      }
    })();
    return () => {
      stopped = true;
    };
  }

  /**
   * Cancels a build: a queued one leaves the queue; a running one has npm's process group
   * killed. Resolves with the record once the build has stopped (or after 5 s).
   */
  async cancel(id: string, reason = 'Cancelled by DELETE /v1/builds/:id.', options: { remote?: (record: BuildRecord) => Promise<BuildRecord> } = {}): Promise<BuildRecord> {
    const entry = this.builds.get(id);
    if (!entry) {
      const record = await this.records.readRecord(id);
      if (!record) throw notFound(id);
      if (isTerminal(record.state)) return record;
      // Another replica's build: it goes to that replica (lib/builder/replicas.ts), once.
      if (options.remote && record.builder !== this.options.builderId) return options.remote(record);
      throw new BundleError('ERR_BUILDER_REJECTED', `Build ${id} runs on builder ${record.builder}; cancel it there.`, { details: { builder: record.builder, status: 409 } });
    }
    if (isTerminal(entry.record.state)) return this.view(entry);
    if (this.queue.remove(id)) {
      await this.finish(entry, new BundleError('ERR_ABORTED', `${reason} (while queued)`));
      return this.view(entry);
    }
    entry.controller.abort(new BundleError('ERR_ABORTED', reason));
    // The wait must not outlive the build: a pending timer would hold the process (the embedded
    // default's dispatch) open for its full 5 s after the build ended.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([entry.finished, new Promise((resolve) => { timer = setTimeout(resolve, CANCEL_WAIT_MS); })]);
    clearTimeout(timer);
    return this.view(entry);
  }

  /** History, newest first: ids from the store's index, records from memory or the store. */
  async list(options: { limit: number; cursor?: string; state?: BuildState }): Promise<{ builds: BuildRecord[]; cursor?: string }> {
    const page = await this.records.listIndex(options);
    const records = await Promise.all(page.ids.map((id) => this.get(id).catch(() => undefined)));
    const builds = records.filter((record): record is BuildRecord => record !== undefined && (options.state === undefined || record.state === options.state));
    return { builds, ...(page.cursor ? { cursor: page.cursor } : {}) };
  }

  /**
   * Stops taking builds (POST /v1/drain, or the first step of a SIGTERM): readiness turns false,
   * new builds are refused with 503, reads go on, running builds go on. Builds still queued are
   * handed back at once (`cancelled`, ERR_BUILD_HANDED_BACK): dispatch sends them to another
   * builder without waiting. Calling it again hands back nothing more and changes nothing.
   */
  async drain(why: string): Promise<string[]> {
    if (!this.drainingSince) {
      this.drainingSince = new Date().toISOString();
      this.options.logger.info({ why }, 'draining: no new builds');
    }
    const handedBack = this.queue.drainWaiting();
    for (const id of handedBack) {
      const entry = this.builds.get(id);
      if (entry) await this.finish(entry, new BundleError('ERR_BUILD_HANDED_BACK', `The builder ${this.options.builderId} is draining (${why}) and had not started this build; it goes back to dispatch, which sends it to another builder.`));
    }
    return handedBack;
  }

  /**
   * GET /v1/health/ready: false while draining, while the work disk has less than
   * builder.minFreeDisk free (every build would fail ERR_DISK_FULL), or while the store cannot
   * be reached (its probe is cached STORE_PROBE_TTL_MS, so probes do not become store traffic).
   */
  async readiness(): Promise<ReadinessResponse> {
    const [disk, store] = await Promise.all([this.diskCheck(), this.storeCheck()]);
    const draining: ReadinessCheck = this.drainingSince
      ? { name: 'draining', ok: false, message: `draining since ${this.drainingSince}: no new builds` }
      : { name: 'draining', ok: true, message: 'accepting builds' };
    const checks = [draining, disk, store];
    return { ready: checks.every((check) => check.ok), builder: this.options.builderId, checks };
  }

  private async diskCheck(): Promise<ReadinessCheck> {
    try {
      const free = await freeDiskBytes(this.options.workDir);
      const ok = free >= this.options.minFreeDisk;
      return { name: 'disk', ok, message: `${free} bytes free under ${this.options.workDir}; builds need ${this.options.minFreeDisk} (builder.minFreeDisk)` };
    } catch (error) {
      return { name: 'disk', ok: false, message: `cannot read the free space under ${this.options.workDir}: ${(error as Error).message}` };
    }
  }

  private storeCheck(): Promise<ReadinessCheck> {
    const now = Date.now();
    if (!this.storeProbe || now - this.storeProbe.at >= STORE_PROBE_TTL_MS) {
      const result = this.options.store.exists(keys.probe(), { signal: AbortSignal.timeout(STORE_PROBE_TIMEOUT_MS) }).then(
        (): ReadinessCheck => ({ name: 'store', ok: true, message: `${this.options.store.location} answers` }),
        (error: unknown): ReadinessCheck => ({ name: 'store', ok: false, message: `${this.options.store.location} cannot be reached: ${this.safe(error).message}` }),
      );
      this.storeProbe = { at: now, result };
    }
    return this.storeProbe.result;
  }

  /** When the drain began (ISO time); undefined while accepting builds. */
  get drainStarted(): string | undefined {
    return this.drainingSince;
  }

  /**
   * SIGTERM: drain, give running builds `graceMs` to finish (a second signal, `hurry()`, ends
   * the wait at once), then cancel the rest with ERR_BUILDER_STOPPING and wait for every
   * record to be written: no record is left `running` by a builder that exits.
   */
  async stop(graceMs: number): Promise<void> {
    await this.drain('shutting down');
    const running = () => this.runningEntries();
    const all = Promise.all(running().map((entry) => entry.finished));
    let timer: NodeJS.Timeout | undefined;
    const hurried = new Promise<void>((resolve) => {
      this.endGrace = resolve;
      if (this.hurried) resolve();
    });
    await Promise.race([all, hurried, new Promise((resolve) => { timer = setTimeout(resolve, graceMs); })]);
    clearTimeout(timer);
    for (const entry of running()) {
      const message = this.hurried
        ? 'The builder was stopped at once (a second SIGTERM/SIGINT); the build was cancelled.'
        : `The builder shut down; the build was cancelled after the ${Math.round(graceMs / 1000)} s grace period (builder.shutdownGrace).`;
      entry.controller.abort(new BundleError('ERR_BUILDER_STOPPING', message));
    }
    await Promise.all(running().map((entry) => entry.finished));
    await this.records.drain();
    await this.releaseUids?.();
  }

  /** Resolves once no build runs (after a drain nothing new starts, so this is the end of the work). */
  async idle(): Promise<void> {
    await Promise.all(this.runningEntries().map((entry) => entry.finished));
  }

  private runningEntries(): BuildEntry[] {
    return [...this.builds.values()].filter((entry) => entry.record.state === 'running');
  }

  /** Ends the grace period of a stop now (the second signal): running builds are cancelled and recorded. */
  hurry(): void {
    this.hurried = true;
    this.endGrace?.();
  }

  private view(entry: BuildEntry): BuildRecord {
    const position = entry.record.state === 'queued' ? this.queue.position(entry.record.id) : undefined;
    return position === undefined ? entry.record : { ...entry.record, queuePosition: position };
  }

  /**
   * A failed source download or output upload without what the far end answered (status,
   * network error): that goes to the builder's log only, so a token holder cannot probe what
   * a URL on the builder's network serves. Refusals, size limits and cancels pass unchanged.
   */
  private withheld(error: unknown, what: string, buildId?: string): BundleError {
    const failure = toBundleError(error);
    if (failure.code !== 'ERR_SOURCE_FETCH' && failure.code !== 'ERR_OUTPUT') return failure;
    const url = typeof failure.details?.url === 'string' ? withoutQuery(failure.details.url) || 'the URL' : 'the URL';
    this.options.logger.warn({ ...(buildId ? { buildId } : {}), err: this.safe(failure) }, what);
    const message = failure.code === 'ERR_OUTPUT' ? `Could not upload the bundle to ${url} (the builder's log has the reason).` : `Could not download ${url} (the builder's log has the reason).`;
    return new BundleError(failure.code, message, { cause: failure, details: { url } });
  }

  private safe(error: unknown): { code?: string; message: string } {
    const failure = toBundleError(error);
    return { code: failure.code, message: redact(failure.message, this.options.secrets) };
  }

  private notifyStatus(entry: BuildEntry): void {
    const record = this.view(entry);
    for (const listener of entry.listeners) listener.status(record);
  }

  private addLine(entry: BuildEntry, step: LogLine['step'], stream: LogLine['stream'], message: string, data?: Record<string, unknown>): void {
    const seq = entry.record.lastSeq + 1;
    entry.record.lastSeq = seq;
    let cleanData: Record<string, unknown> | undefined;
    if (data) {
      try {
        cleanData = JSON.parse(redact(JSON.stringify(data), this.options.secrets)) as Record<string, unknown>;
      } catch {
        cleanData = undefined;
      }
    }
    const line: LogLine = { seq, time: new Date().toISOString(), step, stream, message: redact(message, this.options.secrets), ...(cleanData ? { data: cleanData } : {}) };
    entry.lines.push(line);
    this.records.appendLog(entry.record.id, line);
    for (const listener of entry.listeners) listener.log(line);
  }

  private changed(entry: BuildEntry): void {
    if (!entry.saveTimer) {
      entry.saveTimer = setTimeout(() => {
        entry.saveTimer = undefined;
        void this.records.saveRecord(entry.record);
      }, RECORD_SAVE_INTERVAL_MS);
      entry.saveTimer.unref();
    }
    this.notifyStatus(entry);
  }

  /** Writes the record now (heartbeat, end): a throttled save still waiting would only repeat it. */
  private saveRecordNow(entry: BuildEntry): Promise<void> {
    clearTimeout(entry.saveTimer);
    entry.saveTimer = undefined;
    return this.records.saveRecord(entry.record);
  }

  private stepStarted(entry: BuildEntry, name: StepName, at: number): void {
    entry.record.steps.push({ name, state: 'running', startedAt: new Date(at).toISOString() });
    this.changed(entry);
  }

  private stepEnded(entry: BuildEntry, name: StepName, state: 'finished' | 'failed', at: number, durationMs?: number): void {
    const step = entry.record.steps.findLast((candidate) => candidate.name === name && candidate.state === 'running');
    if (!step) return;
    step.state = state;
    step.finishedAt = new Date(at).toISOString();
    step.durationMs = durationMs ?? at - Date.parse(step.startedAt);
    this.changed(entry);
  }

  private onEvent(entry: BuildEntry, event: BuildEvent): void {
    switch (event.type) {
      case 'step':
        if (event.state === 'started') this.stepStarted(entry, event.step, event.at);
        else this.stepEnded(entry, event.step, event.state, event.at, event.durationMs);
        break;
      case 'log':
        this.addLine(entry, event.step, event.stream, event.message, event.data);
        break;
      case 'memory':
        entry.record.peakMemory = Math.max(entry.record.peakMemory ?? 0, event.peak);
        break;
      case 'package':
        entry.record.package = { name: event.name, version: event.version };
        this.changed(entry);
        break;
      case 'complete':
        entry.record.resolved = { node: event.summary.runtime.version, abi: event.summary.runtime.abi, npm: event.summary.npmVersion, method: event.summary.method, verification: event.summary.verification, isolation: event.summary.isolation,
          ...(event.summary.prebuilt.length > 0 ? { prebuilt: event.summary.prebuilt } : {}) };
        entry.record.package = { name: event.summary.name, version: event.summary.version };
        entry.record.peakMemory = Math.max(entry.record.peakMemory ?? 0, event.summary.peakMemory);
        this.changed(entry);
        break;
      case 'error':
        break;
    }
  }

  private overrides(entry: BuildEntry): BuildOverrides {
    const requested = entry.request.overrides ?? {};
    return {
      target: normalizeTarget(entry.request.target),
      ...(requested.registry ? { registry: requested.registry } : {}),
      ...(requested.scopes ? { scopes: requested.scopes } : {}),
      ...(requested.env ? { env: requested.env } : {}),
      ...(requested.sourceDateEpoch !== undefined ? { sourceDateEpoch: requested.sourceDateEpoch } : {}),
    };
  }

  /** Runs one build in its slot. Never throws: every outcome ends in the record. */
  private async run(id: string): Promise<void> {
    const entry = this.builds.get(id);
    if (!entry || isTerminal(entry.record.state)) return;
    const { record, controller } = entry;
    const signal = controller.signal;
    record.state = 'running';
    record.startedAt = new Date().toISOString();
    this.options.metrics?.started(entry.served, (Date.parse(record.startedAt) - Date.parse(record.createdAt)) / 1000);
    record.heartbeatAt = record.startedAt;
    this.changed(entry);
    const heartbeat = setInterval(() => {
      record.heartbeatAt = new Date().toISOString();
      void this.saveRecordNow(entry);
    }, this.options.heartbeatMs);
    const timeout = setTimeout(() => controller.abort(new BundleError('ERR_BUILD_TIMEOUT', `The build took longer than ${Math.round(this.options.buildTimeoutMs / 1000)} s (builder.buildTimeout).`)), this.options.buildTimeoutMs);
    let user: RunAs | undefined;
    const outFile = `${entry.spool}.out`;
    let failure: BundleError | undefined;
    try {
      record.freeDisk = await checkFreeDisk(this.options.workDir, this.options.minFreeDisk);
      user = this.pool?.acquire();
      this.addLine(entry, 'builder', 'status', `build ${id} started on ${this.options.builderId}${user ? ` as uid ${user.uid}` : ''}`, { freeDisk: record.freeDisk });
      const result = await this.options.scaffold.run(maybeGunzip(createReadStream(entry.spool)), this.overrides(entry), {
        signal,
        onEvent: (event) => this.onEvent(entry, event),
        ...(user ? { runAs: user } : {}),
      });
      const gz = createHashingStream();
      // Deflated on every core, the same bytes whatever their number (lib/workflow/parallel-gzip.ts).
      await pipeline(result.output as Readable, createParallelGzip({ level: entry.request.overrides?.gzipLevel }), gz.stream, createWriteStream(outFile, { mode: 0o600 }), { signal });
      await result.settled;
      const { sha256, size } = gz.result();
      const file = bundleFileName({ name: result.summary.name, version: result.summary.version, target: result.summary.target, nodeVersion: result.summary.runtime.version });
      const started = Date.now();
      this.stepStarted(entry, 'output', started);
      try {
        if (entry.request.output) {
          await uploadFile(entry.request.output.url, outFile, { size, guard: this.guard, ...(entry.request.output.headers ? { headers: entry.request.output.headers } : {}), signal })
            .catch((error: unknown) => {
              throw this.withheld(error, 'output upload failed', id);
            });
          record.artifact = { url: withoutQuery(entry.request.output.url), sha256, size, file };
        } else {
          const key = keys.artifact(id, file);
          await this.options.store.put(key, createReadStream(outFile), { sha256, size, contentType: 'application/gzip', signal });
          record.artifact = { key, sha256, size, file };
          record.links = buildLinks(id, true);
        }
        this.stepEnded(entry, 'output', 'finished', Date.now());
        if (this.options.signingKey) {
          record.provenance = await signProvenance({
            key: this.options.signingKey, record, request: entry.request, summary: result.summary, artifact: { file, sha256 },
            builderId: this.options.builderId, ...(this.options.version ? { version: this.options.version } : {}), nodeHashes: this.nodeHashes,
          });
        }
      } catch (error) {
        this.stepEnded(entry, 'output', 'failed', Date.now());
        throw error;
      }
      this.addLine(entry, 'builder', 'status', `bundle ${file}: ${size} bytes, sha256 ${sha256}`);
    } catch (error) {
      failure = toBundleError(signal.aborted ? signal.reason : error);
    } finally {
      clearInterval(heartbeat);
      clearTimeout(timeout);
      if (user) {
        await killUidProcesses(user.uid, user.uid);
        this.pool?.release(user);
      }
      await rm(outFile, { force: true });
    }
    await this.finish(entry, failure);
  }

  /** Ends a build: state, error, running steps closed, everything persisted, listeners told. */
  private async finish(entry: BuildEntry, failure: BundleError | undefined): Promise<void> {
    const { record } = entry;
    const now = Date.now();
    for (const step of record.steps) {
      if (step.state === 'running') Object.assign(step, { state: 'failed', finishedAt: new Date(now).toISOString(), durationMs: now - Date.parse(step.startedAt) });
    }
    if (failure) {
      const cancelled = failure.code === 'ERR_ABORTED' || failure.code === 'ERR_BUILDER_STOPPING' || failure.code === 'ERR_BUILD_HANDED_BACK';
      record.state = cancelled ? 'cancelled' : 'failed';
      record.error = { code: failure.code, message: redact(failure.message, this.options.secrets) };
      this.addLine(entry, 'builder', 'status', `${cancelled ? 'cancelled' : 'failed'}: ${failure.code}: ${record.error.message}`);
    } else {
      record.state = 'succeeded';
    }
    record.finishedAt = new Date(now).toISOString();
    record.heartbeatAt = record.finishedAt;
    this.options.metrics?.finished(entry.served, record.state as BuildOutcome, record.startedAt ? (now - Date.parse(record.startedAt)) / 1000 : undefined);
    // Durable first: a follower that saw the end must find the same end after a crash.
    await Promise.all([this.records.closeLog(record.id), this.saveRecordNow(entry)]);
    const final = this.view(entry);
    for (const listener of entry.listeners) listener.end(final);
    entry.listeners.clear();
    await Promise.all([rm(entry.spool, { force: true }), this.records.clearActive(this.options.builderId, record.id)]);
    this.options.logger.info({ buildId: record.id, state: record.state, error: record.error?.code, ms: record.startedAt ? now - Date.parse(record.startedAt) : 0 }, 'build finished');
    entry.markFinished();
  }

  private evict(): void {
    if (this.builds.size <= MEMORY_KEEP) return;
    for (const [id, entry] of this.builds) {
      if (this.builds.size <= MEMORY_KEEP) break;
      if (isTerminal(entry.record.state)) this.builds.delete(id);
    }
  }
}
