/**
 * The builder's HTTP server (fastify): auth, validation, error mapping, request ids and
 * structured JSON logs around the routes of `routes.ts`.
 */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Writable } from 'node:stream';
import Fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyRequest } from 'fastify';
import { BundleError, toBundleError, type ErrorCode } from '../errors.js';
import type { BuildRecord, HealthResponse, KeysResponse } from '../protocol.js';
import { advertisedUrl, forwardCancel } from './replicas.js';
import { redact } from '../redact.js';
import { formatTarget } from '../target.js';
import { createAuthenticator, type Authenticator } from './auth.js';
import { openapiDocument } from './openapi.js';
import { ROUTES } from './routes.js';
import type { BuilderMetrics } from './metrics.js';
import { BuilderService, type BuilderServiceOptions } from './service.js';

export interface BuilderServerOptions extends Omit<BuilderServiceOptions, 'logger' | 'secrets'> {
  host: string;
  port: number;
  /** Accepted bearer tokens. At least one. */
  tokens: readonly string[];
  /** Other secrets this process knows (AWS credentials, registry tokens): scrubbed like the tokens. */
  redact?: readonly string[];
  /** The token check to use instead of one made from `tokens` (shared with the dashboard, re-read on rotation). */
  auth?: Authenticator;
  maxBodyBytes: number;
  /** Where JSON logs go (one object per line); nothing is logged without it. */
  logStream?: Writable;
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** Interval of SSE heartbeat comments, ms (default 15 s). */
  sseHeartbeatMs?: number;
  version: string;
  npmVersion: string;
  runtimes: string[];
  /**
   * Another way in besides the bearer token (the dashboard's session cookie, issue 7): called
   * for non-public routes without a valid token; true lets the request through.
   */
  authorize?: (request: FastifyRequest) => boolean;
  /**
   * Adds routes before the server listens (the dashboard). Routes with `config: { public: true }`
   * need no token.
   */
  register?: (app: FastifyInstance, service: BuilderService) => void | Promise<void>;
  /**
   * Where GET /metrics (Prometheus) is served: undefined = on the API port, without a token; a
   * number = on a listener of its own at `host:metricsPort` (0: any free port) and not on the API
   * port; `false` = nowhere.
   */
  metricsPort?: number | false;
  /** builder.advertiseUrl: where the other replicas of the pool reach this one (cancels are forwarded there). */
  advertiseUrl?: string;
  /** false: no replica entry in the store (the embedded default, which has no other replicas and writes nothing before a build). */
  registerReplica?: boolean;
}

export interface RunningBuilder {
  /** `http://host:port` */
  url: string;
  service: BuilderService;
  app: FastifyInstance;
  /** Graceful stop (SIGTERM): no new builds, running ones get `graceMs`, then the server closes. */
  stop(graceMs: number): Promise<void>;
  /** `http://host:port/metrics` when metrics have a listener of their own. */
  metricsUrl?: string;
  /** Ends a stop's grace period now (the second signal): running builds are cancelled and recorded. */
  hurry(): void;
}

const STATUS: Partial<Record<ErrorCode, number>> = {
  ERR_REQUEST_INVALID: 400,
  ERR_STORE_KEY: 400,
  ERR_UNAUTHORIZED: 401,
  ERR_SOURCE_REFUSED: 403,
  ERR_BUILD_NOT_FOUND: 404,
  ERR_REQUEST_TOO_LARGE: 413,
  ERR_TARGET_UNSUPPORTED: 422,
  ERR_SOURCE_FETCH: 422,
  ERR_INTEGRITY: 422,
  ERR_INPUT_TOO_LARGE: 422,
  ERR_STORE_NOT_FOUND: 422,
  ERR_BUILDER_STOPPING: 503,
  ERR_BUILDER_BUSY: 503,
};

/**
 * Seconds a 503 for a new build asks a client to wait before it asks this URL again: draining
 * (behind a balancer the retry lands elsewhere), or a full queue (builder.maxQueued: a slot
 * frees when a build ends, seconds to minutes away).
 */
const RETRY_AFTER_S: Record<string, number> = { draining: 1, queue_full: 5 };

/** A request id from `X-Request-Id` when it is sane, else a new one. */
function requestId(header: string | string[] | undefined): string {
  return typeof header === 'string' && /^[\w.:-]{1,100}$/.test(header) ? header : randomUUID();
}

/**
 * Starts a builder: recovers the builds a previous run left behind, then listens.
 *
 * @example
 * const builder = await startBuilder({ host: '127.0.0.1', port: 0, tokens: [token], store, scaffold, … });
 * console.log(builder.url);
 * await builder.stop(30_000);
 */
export async function startBuilder(options: BuilderServerOptions): Promise<RunningBuilder> {
  if (options.tokens.length === 0) throw new BundleError('ERR_CONFIG', 'The builder needs at least one token.', { hint: 'Set BUNDLE_DISPATCH_BUILDER_TOKENS or builder.tokenFile.' });
  const auth = options.auth ?? createAuthenticator(options.tokens);
  auth.redactToo(options.redact ?? []);
  const app = Fastify({
    logger: options.logStream ? { level: options.logLevel ?? 'info', stream: options.logStream, redact: ['req.headers.authorization', 'req.headers.cookie'] } : false,
    bodyLimit: options.maxBodyBytes,
    // One line per request, written by our onResponse hook (status polls at debug).
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: (request) => requestId(request.headers['x-request-id']),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true, allErrors: false } },
    return503OnClosing: true,
  });
  const logger = app.log;
  // Every log line, error and record is scrubbed of these: every token ever accepted (the array
  // grows with rotation) and what the process knows.
  const secrets = auth.secrets;
  // prom-client loads only where metrics are served (not in the embedded default).
  const metrics = options.metricsPort === false ? undefined : (await import('./metrics.js')).createBuilderMetrics({ version: options.version, builderId: options.builderId });
  const service = new BuilderService({ ...options, secrets, ...(metrics ? { metrics } : {}), logger: {
    info: (object, message) => logger.info(object, message),
    warn: (object, message) => logger.warn(object, message),
    error: (object, message) => logger.error(object, message),
  } });
  metrics?.attach({ targets: service.targets, slots: service.slots, draining: () => service.stopping, load: () => service.load() });
  const { recovered } = await service.start();
  if (recovered.length > 0) logger.warn({ builds: recovered }, `${recovered.length} build(s) failed with ERR_BUILDER_RESTARTED`);

  // Probed once, as a build would run (as the first build user when the builder is root).
  const isolation = await options.scaffold.isolation(options.uidRange ? { uid: options.uidRange.first, gid: options.uidRange.first } : undefined);
  const methods = Object.fromEntries(options.targets.map((target) => [formatTarget(target), options.scaffold.buildMethod(target)]));
  const health = (): HealthResponse => ({
    ok: !service.stopping,
    version: options.version,
    builder: options.builderId,
    targets: service.targets,
    methods,
    runtimes: options.runtimes,
    node: process.versions.node,
    npm: options.npmVersion,
    queue: service.queueState,
    stopping: service.stopping,
    isolation,
  });
  const keys: KeysResponse = { keys: options.signingKey ? [{ keyid: options.signingKey.keyid, algorithm: options.signingKey.algorithm, publicKey: options.signingKey.publicKeyPem }] : [] };
  let openapi: Record<string, unknown> | undefined;
  const context = {
    service,
    health,
    openapi: () => (openapi ??= openapiDocument(ROUTES, { version: options.version, methods, keys: keys.keys, isolation })),
    keys: () => keys,
    sseHeartbeatMs: options.sseHeartbeatMs ?? 15_000,
    startedAt: Date.now(),
    forwardCancel: (record: BuildRecord, request: FastifyRequest) => {
      // The caller's token when it sent one (the pool's replicas share tokens), else one of ours
      // (a dashboard session has no bearer token).
      const given = request.headers.authorization;
      const authorization = given && /^Bearer\s/i.test(given) ? given : `Bearer ${auth.anyToken() ?? ''}`;
      logger.info({ reqId: request.id, buildId: record.id, owner: record.builder }, 'cancel forwarded to the replica that runs the build');
      return forwardCancel({ records: service.records, record, from: options.builderId, authorization, requestId: request.id });
    },
  };

  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
    // Which replica answered (behind a balancer, for operators and tests).
    reply.header('x-builder', options.builderId);
    const isPublic = (request.routeOptions.config as { public?: boolean } | undefined)?.public === true;
    if (!isPublic && !auth.check(request.headers.authorization) && !(options.authorize?.(request) ?? false)) {
      // No detail: a wrong token and a missing one look the same.
      await reply.code(401).header('www-authenticate', 'Bearer').send({ error: { code: 'ERR_UNAUTHORIZED', message: 'Unauthorized.' } });
    }
  });
  app.addHook('onResponse', async (request, reply) => {
    const entry = { reqId: request.id, method: request.method, url: redact(request.url, secrets), status: reply.statusCode, ms: Math.round(reply.elapsedTime) };
    // Status polling is the bulk of the traffic: it logs at debug.
    if (request.method === 'GET' && reply.statusCode < 400) logger.debug(entry, 'request');
    else logger.info(entry, 'request');
  });
  app.setErrorHandler((error: FastifyError, request, reply) => {
    let status: number;
    let body: { code: string; message: string; details?: Record<string, unknown> };
    if (error.validation) {
      status = 400;
      body = { code: 'ERR_REQUEST_INVALID', message: `Invalid request: ${error.message}` };
    } else if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      status = 413;
      body = { code: 'ERR_REQUEST_TOO_LARGE', message: `The request body is larger than ${options.maxBodyBytes} bytes.` };
    } else if (error.code?.startsWith('FST_ERR_CTP_') || (error.statusCode === 400 && !(error instanceof BundleError))) {
      status = error.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' ? 415 : 400;
      body = { code: 'ERR_REQUEST_INVALID', message: `Invalid request: ${error.message}` };
    } else {
      const failure = toBundleError(error);
      status = STATUS[failure.code] ?? (typeof failure.details?.status === 'number' ? failure.details.status : 500);
      body = {
        code: failure.code,
        message: redact(failure.message, secrets),
        ...(failure.details?.served ? { details: { served: failure.details.served } } : {}),
        ...(typeof failure.details?.reason === 'string' && RETRY_AFTER_S[failure.details.reason] ? { details: { reason: failure.details.reason } } : {}),
      };
      // Draining or full: this replica will not take the build now; a balancer sends the retry elsewhere.
      const retryAfter = typeof failure.details?.reason === 'string' ? RETRY_AFTER_S[failure.details.reason] : undefined;
      if (retryAfter) void reply.header('retry-after', String(retryAfter));
      if (status >= 500) logger.error({ reqId: request.id, err: { code: failure.code, message: body.message, stack: redact(failure.stack ?? '', secrets) } }, 'request failed');
    }
    void reply.code(status).send({ error: body });
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send({ error: { code: 'ERR_REQUEST_INVALID', message: `No route ${request.method} ${request.url.split('?')[0]}.` } });
  });

  for (const route of ROUTES) {
    app.route({
      method: route.method,
      url: route.url,
      schema: route.schema,
      config: { public: route.public === true },
      handler: (request, reply) => route.handler(context, request, reply),
    });
  }

  if (metrics && options.metricsPort === undefined) {
    app.get('/metrics', { config: { public: true } }, async (_request, reply) => {
      const { contentType, body } = await metrics.render();
      return reply.type(contentType).send(body);
    });
  }
  const metricsServer = metrics && typeof options.metricsPort === 'number' ? await listenMetrics(metrics, options.host, options.metricsPort) : undefined;

  await options.register?.(app, service);
  await app.listen({ host: options.host, port: options.port });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  const url = localUrl(options.host, port);
  // Other replicas of the pool forward cancels of this replica's builds to this address.
  const advertised = advertisedUrl({ host: options.host, port }, options.advertiseUrl);
  if (options.registerReplica !== false) await service.records.saveReplica({ builder: options.builderId, url: advertised, startedAt: new Date().toISOString() })
    .catch((error: unknown) => logger.warn({ err: { message: redact((error as Error).message, secrets) } }, 'could not write this replica\'s address to the store: cancels sent to other replicas will not reach its builds'));
  logger.info({ url, advertised, builder: options.builderId, targets: service.targets, slots: options.slots, store: options.store.location, ...(metricsServer ? { metrics: metricsServer.url } : {}) }, 'builder listening');

  let stopping: Promise<void> | undefined;
  return {
    url,
    service,
    app,
    ...(metricsServer ? { metricsUrl: metricsServer.url } : {}),
    stop(graceMs) {
      stopping ??= (async () => {
        logger.info({ graceMs }, 'stopping: no new builds');
        await service.stop(graceMs);
        // SSE streams are hijacked: close every connection so close() does not wait on them.
        app.server.closeAllConnections();
        await app.close();
        await metricsServer?.close();
        logger.info({}, 'stopped');
      })();
      return stopping;
    },
    hurry() {
      service.hurry();
    },
  };
}

/** `http://host:port` to reach a listener on this machine (a wildcard address as 127.0.0.1). */
function localUrl(host: string, port: number): string {
  const shown = host.includes(':') ? `[${host}]` : host;
  return `http://${shown === '0.0.0.0' || shown === '[::]' ? '127.0.0.1' : shown}:${port}`;
}

/** GET /metrics on a listener of its own (builder.metricsPort): nothing else is served there. */
async function listenMetrics(metrics: BuilderMetrics, host: string, port: number): Promise<{ url: string; close: () => Promise<void> }> {
  const server = createServer((request, response) => {
    if (request.method !== 'GET' || request.url?.split('?')[0] !== '/metrics') {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('Only GET /metrics is served here.\n');
      return;
    }
    metrics.render().then(({ contentType, body }) => response.writeHead(200, { 'content-type': contentType }).end(body), () => response.writeHead(500).end());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    url: `${localUrl(host, (server.address() as AddressInfo).port)}/metrics`,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
