/**
 * The builder client: every HTTP request bundle-dispatch makes goes through here (the only
 * importer of got). Dispatch uses {@link createBuilderClient}; the builder itself uses
 * {@link downloadToFile} and {@link uploadFile} to fetch sources and PUT results.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import got, { HTTPError, RequestError, type Got } from 'got';
import { BundleError, type ErrorCode } from '../errors.js';
import { redact } from '../redact.js';
import { REFUSED_HINT, refusalReason, refusedClass, type AddressGuard } from './network.js';
import {
  IDEMPOTENCY_HEADER,
  isTerminal,
  type BuildList,
  type BuildRecord,
  type BuildState,
  type CreateBuildRequest,
  type CreateBuildResponse,
  type HealthResponse,
  type LogLine,
} from '../protocol.js';

export interface BuilderClientOptions {
  /** The builder's base URL, `http://host:port`. */
  url: string;
  /** Bearer token. */
  token?: string;
  /** Per-request timeout for ordinary requests (not the event stream), ms. Default 30 s. */
  timeoutMs?: number;
  /** Retries of a request that failed on the network or with a 5xx (same Idempotency-Key). Default 2. */
  retries?: number;
}

export interface RequestOptions {
  signal?: AbortSignal;
}

export interface FollowOptions extends RequestOptions {
  /** Resume after this log sequence number (Last-Event-ID). */
  since?: number;
  onLog?: (line: LogLine) => void;
  onStatus?: (record: BuildRecord) => void;
  /** Silence on the event stream longer than this (no heartbeat either) → reconnect. Default 45 s. */
  idleTimeoutMs?: number;
  /** Event-stream failures in a row before switching to polling. Default 3. */
  maxStreamFailures?: number;
  /** Polling interval once the stream is given up. Default 1 s, growing to 5 s. */
  pollIntervalMs?: number;
}

/**
 * @example
 * const builder = createBuilderClient({ url: 'http://10.0.0.7:7420', token: process.env.POOL_TOKEN });
 * const { id } = await builder.createBuild(request, { idempotencyKey: buildKey });
 * const record = await builder.followBuild(id, { onLog: (line) => console.log(line.message) });
 */
export interface BuilderClient {
  readonly url: string;
  /** POST /v1/builds. The same `idempotencyKey` returns the existing build (`existing: true`). */
  createBuild(request: CreateBuildRequest, options: RequestOptions & { idempotencyKey: string }): Promise<CreateBuildResponse>;
  /** GET /v1/builds/:id */
  getBuild(id: string, options?: RequestOptions): Promise<BuildRecord>;
  /** GET /v1/builds, newest first. */
  listBuilds(options?: RequestOptions & { limit?: number; cursor?: string; state?: BuildState }): Promise<BuildList>;
  /** GET /v1/builds/:id/log?since=N */
  getLog(id: string, options?: RequestOptions & { since?: number }): Promise<LogLine[]>;
  /** DELETE /v1/builds/:id: resolves with the record once the build has stopped (or after ~5 s). */
  cancelBuild(id: string, options?: RequestOptions): Promise<BuildRecord>;
  /** GET /v1/health (no token needed). */
  health(options?: RequestOptions): Promise<HealthResponse>;
  /** GET /v1/builds/:id/artifact as a file; resolves to its sha256 and size. */
  downloadArtifact(id: string, file: string, options?: RequestOptions): Promise<{ sha256: string; size: number }>;
  /**
   * Follows a build until it ends: SSE with Last-Event-ID resume on reconnect, polling with
   * backoff when the stream keeps failing. Resolves with the final record.
   */
  followBuild(id: string, options?: FollowOptions): Promise<BuildRecord>;
}

const KNOWN_CODES: ReadonlySet<string> = new Set([
  'ERR_REQUEST_INVALID', 'ERR_REQUEST_TOO_LARGE', 'ERR_UNAUTHORIZED', 'ERR_BUILD_NOT_FOUND', 'ERR_BUILDER_STOPPING', 'ERR_BUILDER_BUSY',
  'ERR_TARGET_UNSUPPORTED', 'ERR_SOURCE_FETCH', 'ERR_SOURCE_REFUSED', 'ERR_INTEGRITY', 'ERR_INPUT_TOO_LARGE', 'ERR_STORE_KEY', 'ERR_STORE_NOT_FOUND',
]);

/**
 * Turns a got failure into a BundleError. `details.sent` tells whether the request may have
 * reached the builder (false: safe to fail over to another builder of the pool); `details.status`
 * is the HTTP status when there was a response.
 */
export function builderError(error: unknown, url: string, secrets: readonly string[] = []): BundleError {
  if (error instanceof BundleError) return error;
  if (error instanceof HTTPError) {
    const body = parseBody(error.response.body);
    const code = body?.error?.code && KNOWN_CODES.has(body.error.code) ? (body.error.code as ErrorCode) : 'ERR_BUILDER_REJECTED';
    const message = body?.error?.message ?? `HTTP ${error.response.statusCode}`;
    const retryAfterMs = retryAfter(error.response.headers['retry-after']);
    return new BundleError(code, `Builder ${url}: ${redact(message, secrets)}`, {
      cause: error,
      details: {
        status: error.response.statusCode, sent: true, retryable: error.response.statusCode >= 500,
        ...(retryAfterMs !== undefined ? { retryAfterMs } : {}), ...(body?.error?.details ?? {}),
      },
    });
  }
  if (error instanceof RequestError) {
    if (error.name === 'AbortError' || error.code === 'ERR_ABORTED') return new BundleError('ERR_ABORTED', 'Cancelled.', { cause: error });
    const neverSent = ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH'].includes(error.code);
    return new BundleError('ERR_BUILDER_UNREACHABLE', `Builder ${url}: ${error.code} ${redact(error.message, secrets)}`, {
      cause: error,
      details: { sent: !neverSent, retryable: true, code: error.code },
    });
  }
  if (error instanceof Error && error.name === 'AbortError') return new BundleError('ERR_ABORTED', 'Cancelled.', { cause: error });
  return new BundleError('ERR_BUILDER_UNREACHABLE', `Builder ${url}: ${error instanceof Error ? error.message : String(error)}`, { cause: error, details: { sent: true } });
}

/** A Retry-After header (seconds, or an HTTP date) in ms. */
function retryAfter(header: string | string[] | undefined): number | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

/** A 503 from a builder that is draining or whose queue is full: asking it again at once would only repeat the answer. */
function drainingAnswer(error: unknown): boolean {
  return error instanceof HTTPError && error.response.statusCode === 503 && ['ERR_BUILDER_STOPPING', 'ERR_BUILDER_BUSY'].includes(parseBody(error.response.body)?.error?.code ?? '');
}

function parseBody(body: unknown): { error?: { code?: string; message?: string; details?: Record<string, unknown> } } | undefined {
  try {
    const text = Buffer.isBuffer(body) ? body.toString('utf8') : typeof body === 'string' ? body : JSON.stringify(body);
    return JSON.parse(text) as { error?: { code?: string; message?: string } };
  } catch {
    return undefined;
  }
}

export function createBuilderClient(options: BuilderClientOptions): BuilderClient {
  const base = options.url.replace(/\/+$/, '');
  const secrets = options.token ? [options.token] : [];
  const http: Got = got.extend({
    prefixUrl: base,
    headers: options.token ? { authorization: `Bearer ${options.token}` } : {},
    timeout: { request: options.timeoutMs ?? 30_000 },
    retry: {
      limit: options.retries ?? 2,
      // POST is safe to retry: the Idempotency-Key makes a second attempt return the first build.
      methods: ['GET', 'POST', 'DELETE'],
      statusCodes: [502, 503, 504],
      backoffLimit: 2000,
      // A draining builder is not asked again: dispatch sends the build to another one.
      calculateDelay: ({ error, computedValue }) => (drainingAnswer(error) ? 0 : computedValue),
    },
    responseType: 'json',
  });
  const call = async <T>(run: () => Promise<T>): Promise<T> => {
    try {
      return await run();
    } catch (error) {
      throw builderError(error, base, secrets);
    }
  };
  const signalOf = (o?: RequestOptions) => (o?.signal ? { signal: o.signal } : {});

  const client: BuilderClient = {
    url: base,
    createBuild: (request, o) => call(async () => (await http.post('v1/builds', { json: request, headers: { [IDEMPOTENCY_HEADER]: o.idempotencyKey }, ...signalOf(o) }).json<CreateBuildResponse>())),
    getBuild: (id, o) => call(() => http.get(`v1/builds/${encodeURIComponent(id)}`, signalOf(o)).json<BuildRecord>()),
    listBuilds: (o = {}) => call(() => http.get('v1/builds', {
      searchParams: { ...(o.limit ? { limit: o.limit } : {}), ...(o.cursor ? { cursor: o.cursor } : {}), ...(o.state ? { state: o.state } : {}) },
      ...signalOf(o),
    }).json<BuildList>()),
    getLog: (id, o = {}) => call(async () => {
      const text = await http.get(`v1/builds/${encodeURIComponent(id)}/log`, { searchParams: { since: o.since ?? 0 }, responseType: 'text', ...signalOf(o) }).text();
      return text.split('\n').filter(Boolean).map((line) => JSON.parse(line) as LogLine);
    }),
    cancelBuild: (id, o) => call(() => http.delete(`v1/builds/${encodeURIComponent(id)}`, signalOf(o)).json<BuildRecord>()),
    // A probe answers now or not at all: a dead builder is skipped, not waited for with retries.
    health: (o) => call(() => http.get('v1/health', { ...signalOf(o), retry: { limit: 0 } }).json<HealthResponse>()),
    downloadArtifact: (id, file, o = {}) => call(() => downloadToFile(`${base}/v1/builds/${encodeURIComponent(id)}/artifact`, file, {
      ...signalOf(o),
      headers: options.token ? { authorization: `Bearer ${options.token}` } : {},
    })),
    followBuild: (id, o = {}) => followBuild(client, http, base, id, o, secrets),
  };
  return client;
}

/** Parses `text/event-stream` chunks into events (WHATWG rules, enough for our server). */
export function createSseParser(onEvent: (event: { event: string; id?: string; data: string }) => void): (chunk: string) => void {
  let buffer = '';
  let event = 'message';
  let id: string | undefined;
  let data: string[] = [];
  return (chunk) => {
    buffer += chunk;
    let newline: number;
    while ((newline = buffer.search(/\r?\n/)) !== -1) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer[newline] === '\r' ? 2 : 1));
      if (line === '') {
        if (data.length > 0) onEvent({ event, ...(id === undefined ? {} : { id }), data: data.join('\n') });
        event = 'message';
        data = [];
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id') id = value;
    }
  };
}

async function followBuild(client: BuilderClient, http: Got, base: string, id: string, options: FollowOptions, secrets: readonly string[]): Promise<BuildRecord> {
  let lastSeq = options.since ?? 0;
  let failures = 0;
  const maxFailures = options.maxStreamFailures ?? 3;
  const idleMs = options.idleTimeoutMs ?? 45_000;
  const onLog = (line: LogLine) => {
    if (line.seq <= lastSeq) return;
    lastSeq = line.seq;
    options.onLog?.(line);
  };

  while (failures < maxFailures) {
    if (options.signal?.aborted) throw new BundleError('ERR_ABORTED', 'Cancelled.', { cause: options.signal.reason });
    let final: BuildRecord | undefined;
    let latest: BuildRecord | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        const stream = http.stream(`v1/builds/${encodeURIComponent(id)}/events`, {
          headers: { accept: 'text/event-stream', ...(lastSeq > 0 ? { 'last-event-id': String(lastSeq) } : {}) },
          timeout: { request: undefined, response: 10_000 } as never,
          retry: { limit: 0 },
          ...(options.signal ? { signal: options.signal } : {}),
        });
        let idle: NodeJS.Timeout | undefined;
        const arm = () => {
          clearTimeout(idle);
          idle = setTimeout(() => stream.destroy(new Error('event stream idle')), idleMs);
        };
        arm();
        const parse = createSseParser((event) => {
          if (event.event === 'log') onLog(JSON.parse(event.data) as LogLine);
          else if (event.event === 'status') {
            latest = JSON.parse(event.data) as BuildRecord;
            options.onStatus?.(latest);
          } else if (event.event === 'end') {
            final = JSON.parse(event.data) as BuildRecord;
          }
        });
        stream.setEncoding('utf8');
        stream.on('data', (chunk: string) => {
          arm();
          failures = 0;
          parse(chunk);
        });
        stream.on('end', () => {
          clearTimeout(idle);
          resolve();
        });
        stream.on('error', (error: unknown) => {
          clearTimeout(idle);
          reject(error);
        });
      });
      if (final) return final;
      if (latest && isTerminal(latest.state)) return latest;
      failures += 1;
    } catch (error) {
      const failure = builderError(error, base, secrets);
      if (failure.code === 'ERR_ABORTED' || failure.code === 'ERR_BUILD_NOT_FOUND' || failure.code === 'ERR_UNAUTHORIZED') throw failure;
      if (final) return final;
      failures += 1;
    }
    await sleep(Math.min(250 * 2 ** failures, 2000), options.signal);
  }

  // Polling fallback: the record and the log since the last line seen, with backoff.
  let interval = options.pollIntervalMs ?? 1000;
  for (;;) {
    const record = await client.getBuild(id, options);
    if (record.lastSeq > lastSeq) for (const line of await client.getLog(id, { since: lastSeq, ...(options.signal ? { signal: options.signal } : {}) })) onLog(line);
    options.onStatus?.(record);
    if (isTerminal(record.state)) return record;
    await sleep(interval, options.signal);
    interval = Math.min(interval * 1.5, 5000);
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new BundleError('ERR_ABORTED', 'Cancelled.', { cause: signal.reason }));
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new BundleError('ERR_ABORTED', 'Cancelled.', { cause: signal?.reason }));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function hashingCounter(maxBytes: number | undefined, onTooLarge: () => Error) {
  const hash = createHash('sha256');
  let size = 0;
  const stream = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      size += chunk.length;
      if (maxBytes !== undefined && size > maxBytes) return callback(onTooLarge());
      hash.update(chunk);
      callback(null, chunk);
    },
  });
  return { stream, result: () => ({ sha256: hash.digest('hex'), size }) };
}

/**
 * GETs a URL into a file, hashing on the way; removes the file on failure. Failures are
 * ERR_SOURCE_FETCH (network, HTTP status), ERR_INPUT_TOO_LARGE (over `maxBytes`) or, with a
 * `guard`, ERR_SOURCE_REFUSED (the URL or a redirect from it points at a refused address; no
 * connection was made to it).
 */
export async function downloadToFile(url: string, file: string, options: { signal?: AbortSignal; maxBytes?: number; timeoutMs?: number; headers?: Record<string, string>; guard?: AddressGuard } = {}): Promise<{ sha256: string; size: number }> {
  const counter = hashingCounter(options.maxBytes, () => new BundleError('ERR_INPUT_TOO_LARGE', `The download is larger than ${options.maxBytes} bytes.`));
  const shown = redact(url);
  try {
    await pipeline(
      got.stream(url, {
        timeout: { connect: 10_000, response: 30_000, request: options.timeoutMs ?? 10 * 60_000 },
        retry: { limit: 2 },
        headers: options.headers ?? {},
        // Redirects are followed; each hop is a new connection through the guard's agents.
        ...(options.guard ? { agent: options.guard.agents } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
      }),
      counter.stream,
      createWriteStream(file, { mode: 0o600 }),
    );
    return counter.result();
  } catch (error) {
    await rm(file, { force: true });
    throw transferError(error, options.signal, 'ERR_SOURCE_FETCH', `Could not download ${shown}`, `Refused to download ${shown}`, shown);
  }
}

/** A failed download or upload as a BundleError (the guard's refusal keeps its own code). */
function transferError(error: unknown, signal: AbortSignal | undefined, code: ErrorCode, failed: string, refused: string, shown: string): BundleError {
  const refusal = refusedClass(error);
  if (refusal) return new BundleError('ERR_SOURCE_REFUSED', `${refused}: it or a redirect from it points at ${refusalReason(refusal)}.`, { cause: error, hint: REFUSED_HINT, details: { url: shown, class: refusal } });
  if (error instanceof BundleError) return error;
  if (signal?.aborted) return new BundleError('ERR_ABORTED', 'Cancelled.', { cause: error });
  const detail = error instanceof HTTPError ? `HTTP ${error.response.statusCode}` : error instanceof RequestError ? `${error.code} ${error.message}` : String(error);
  return new BundleError(code, `${failed}: ${redact(detail)}`, { cause: error, details: { url: shown } });
}

/** PUTs a file to a URL (a presigned S3 PUT: exact Content-Length, the signed headers as given). */
export async function uploadFile(url: string, file: string, options: { size: number; headers?: Record<string, string>; signal?: AbortSignal; timeoutMs?: number; guard?: AddressGuard }): Promise<void> {
  try {
    await got.put(url, {
      body: createReadStream(file),
      headers: { 'content-type': 'application/gzip', ...options.headers, 'content-length': String(options.size) },
      timeout: { request: options.timeoutMs ?? 10 * 60_000 },
      retry: { limit: 0 },
      ...(options.guard ? { agent: options.guard.agents } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
  } catch (error) {
    throw transferError(error, options.signal, 'ERR_OUTPUT', `Could not upload the bundle to ${redact(url)}`, `Refused to upload the bundle to ${redact(url)}`, redact(url));
  }
}
