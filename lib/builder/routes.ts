/**
 * The routes of the builder API v1 as one table: fastify registers them (with their schemas
 * for validation and serialization) and `openapi.ts` describes them from the same entries.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { BundleError } from '../errors.js';
import type { BuildRecord, CreateBuildRequest, DrainResponse, HealthResponse, KeysResponse, LivenessResponse, LogLine } from '../protocol.js';
import type { BuilderService } from './service.js';
import {
  buildListSchema,
  buildRecordSchema,
  createBuildBodySchema,
  createBuildHeadersSchema,
  createBuildResponseSchema,
  drainQuerySchema,
  drainSchema,
  eventsHeadersSchema,
  healthSchema,
  idParamsSchema,
  keysSchema,
  livenessSchema,
  listQuerySchema,
  logQuerySchema,
  readinessSchema,
} from './schemas.js';
import { notFound } from './records.js';
import { FORWARDED_HEADER } from './replicas.js';

export interface RouteContext {
  service: BuilderService;
  health: () => HealthResponse;
  openapi: () => unknown;
  /** The public keys this builder signs provenance with. */
  keys: () => KeysResponse;
  /** Interval of SSE heartbeat comments, ms. */
  sseHeartbeatMs: number;
  /** Sends a cancel of another replica's build to that replica. */
  forwardCancel: (record: BuildRecord, request: FastifyRequest) => Promise<BuildRecord>;
  /** When the server started (ms since the epoch), for liveness. */
  startedAt: number;
}

export interface RouteDefinition {
  method: 'GET' | 'POST' | 'DELETE';
  url: string;
  summary: string;
  /** No token needed. */
  public?: boolean;
  schema: {
    body?: object;
    params?: object;
    querystring?: object;
    headers?: object;
    response?: Record<number, object>;
  };
  /** Content type of the success response when it is not JSON. */
  produces?: string;
  handler: (context: RouteContext, request: FastifyRequest, reply: FastifyReply) => Promise<unknown>;
}

type IdParams = { id: string };

export const ROUTES: RouteDefinition[] = [
  {
    method: 'POST',
    url: '/v1/builds',
    summary: 'Start a build. The source is fetched and its sha256 verified before the build is queued. The same Idempotency-Key returns the existing build (200) instead of a new one (202).',
    schema: { body: createBuildBodySchema, headers: createBuildHeadersSchema, response: { 200: createBuildResponseSchema, 202: createBuildResponseSchema } },
    async handler({ service }, request, reply) {
      const key = request.headers['idempotency-key'];
      const { record, existing } = await service.submit(request.body as CreateBuildRequest, typeof key === 'string' ? key : undefined);
      reply.code(existing ? 200 : 202).header('location', record.links.self);
      return { id: record.id, state: record.state, existing, links: record.links };
    },
  },
  {
    method: 'GET',
    url: '/v1/builds',
    summary: 'Build history, newest first, paginated with `cursor`.',
    schema: { querystring: listQuerySchema, response: { 200: buildListSchema } },
    async handler({ service }, request) {
      const query = request.query as { limit: number; cursor?: string; state?: BuildRecord['state'] };
      return service.list(query);
    },
  },
  {
    method: 'GET',
    url: '/v1/builds/:id',
    summary: 'A build\'s record: state, queue position, steps with timings, resolved runtime, artifact, error, heartbeat, peak memory.',
    schema: { params: idParamsSchema, response: { 200: buildRecordSchema } },
    async handler({ service }, request) {
      const { id } = request.params as IdParams;
      const record = service.getOwn(id) ?? (await service.get(id));
      if (!record) throw notFound(id);
      return record;
    },
  },
  {
    method: 'DELETE',
    url: '/v1/builds/:id',
    summary: 'Cancel a build: a queued one leaves the queue, a running one has npm\'s process group killed. Answers once it has stopped (at most ~5 s). A build another replica runs is cancelled there: the request is forwarded to the address that replica wrote to the shared store.',
    schema: { params: idParamsSchema, response: { 200: buildRecordSchema } },
    async handler({ service, forwardCancel }, request) {
      const { id } = request.params as IdParams;
      const forwardedFrom = request.headers[FORWARDED_HEADER];
      if (typeof forwardedFrom === 'string') return service.cancel(id, `Cancelled by DELETE /v1/builds/:id (forwarded by replica ${forwardedFrom.slice(0, 100)}).`);
      return service.cancel(id, undefined, { remote: (record) => forwardCancel(record, request) });
    },
  },
  {
    method: 'GET',
    url: '/v1/builds/:id/log',
    summary: 'The build\'s log as NDJSON, one LogLine per line; `?since=N` gives the lines after sequence number N.',
    produces: 'application/x-ndjson',
    schema: { params: idParamsSchema, querystring: logQuerySchema },
    async handler({ service }, request, reply) {
      const lines: LogLine[] = await service.log((request.params as IdParams).id, (request.query as { since: number }).since);
      reply.type('application/x-ndjson');
      return lines.map((line) => `${JSON.stringify(line)}\n`).join('');
    },
  },
  {
    method: 'GET',
    url: '/v1/builds/:id/events',
    summary: 'Server-Sent Events: `log` (a LogLine, id = its seq), `status` (the record), `end` (the final record; the stream then closes). Resumable with Last-Event-ID; `: heartbeat` comments keep it alive.',
    produces: 'text/event-stream',
    schema: { params: idParamsSchema, headers: eventsHeadersSchema },
    handler: streamEvents,
  },
  {
    method: 'GET',
    url: '/v1/builds/:id/artifact',
    summary: 'The bundle (.tgz) of a succeeded build that went to the builder\'s store (builds with an output URL have none here).',
    produces: 'application/gzip',
    schema: { params: idParamsSchema },
    async handler({ service }, request, reply) {
      const { id } = request.params as IdParams;
      const record = await service.get(id);
      if (!record) throw notFound(id);
      if (!record.artifact?.key) throw new BundleError('ERR_BUILD_NOT_FOUND', `Build ${id} has no artifact in the builder's store.`);
      const { body, info } = await service.artifact(record.artifact.key);
      reply.header('content-type', 'application/gzip').header('content-length', String(info.size))
        .header('content-disposition', `attachment; filename="${record.artifact.file}"`).header('x-sha256', record.artifact.sha256);
      return reply.send(body);
    },
  },
  {
    method: 'GET',
    url: '/v1/health',
    summary: 'Version, targets served, runtimes, npm version, queue {running, queued, capacity}. Public.',
    public: true,
    schema: { response: { 200: healthSchema } },
    async handler({ health }) {
      return health();
    },
  },
  {
    method: 'GET',
    url: '/v1/health/live',
    summary: 'Liveness: 200 while the process serves requests, draining or not (a Kubernetes livenessProbe). Public.',
    public: true,
    schema: { response: { 200: livenessSchema } },
    async handler({ service, startedAt }): Promise<LivenessResponse> {
      return { live: true, builder: service.builderId, uptimeSeconds: Math.round((Date.now() - startedAt) / 1000) };
    },
  },
  {
    method: 'GET',
    url: '/v1/health/ready',
    summary: 'Readiness: 200 when the builder takes builds; 503 while draining, while the work disk is below builder.minFreeDisk, or while the store cannot be reached. `checks` says which. For a load balancer\'s health check and a Kubernetes readinessProbe. Public.',
    public: true,
    schema: { response: { 200: readinessSchema, 503: readinessSchema } },
    async handler({ service }, _request, reply) {
      const readiness = await service.readiness();
      reply.code(readiness.ready ? 200 : 503).header('cache-control', 'no-store');
      return readiness;
    },
  },
  {
    method: 'POST',
    url: '/v1/drain',
    summary: 'Stop taking builds (as the first step of SIGTERM does): readiness turns 503, POST /v1/builds answers 503 `draining`, queued builds are handed back to dispatch (ERR_BUILD_HANDED_BACK), running builds and reads go on. `?wait=true` answers once no build runs (for a Kubernetes preStop hook). There is no undrain: restart the builder.',
    schema: { querystring: drainQuerySchema, response: { 200: drainSchema } },
    async handler({ service }, request): Promise<DrainResponse> {
      const handedBack = await service.drain('POST /v1/drain');
      if ((request.query as { wait: boolean }).wait) await service.idle();
      return { draining: true, since: service.drainStarted ?? new Date().toISOString(), handedBack, running: service.queueState.running };
    },
  },
  {
    method: 'GET',
    url: '/v1/keys',
    summary: 'The public keys (SPKI PEM) and key ids (sha256 of the SPKI DER, hex) this builder signs provenance with. Pin them in dispatch.pools[…].publicKey; consumers verify bundles with them (docs/provenance.md). Public.',
    public: true,
    schema: { response: { 200: keysSchema } },
    async handler({ keys }) {
      return keys();
    },
  },
  {
    method: 'GET',
    url: '/v1/openapi.json',
    summary: 'This API\'s OpenAPI 3.1 description. Public.',
    public: true,
    schema: {},
    async handler({ openapi }) {
      return openapi();
    },
  },
];

async function streamEvents(context: RouteContext, request: FastifyRequest, reply: FastifyReply): Promise<void> {
  const { id } = request.params as IdParams;
  const header = request.headers['last-event-id'];
  const since = typeof header === 'string' && header !== '' ? Number(header) : 0;
  const raw = reply.raw;
  let open = true;
  let heartbeat: NodeJS.Timeout | undefined;
  const subscription: { stop?: () => void } = {};
  const close = () => {
    if (!open) return;
    open = false;
    clearInterval(heartbeat);
    subscription.stop?.();
    raw.end();
  };
  const send = (event: string, eventId: number, data: unknown) => {
    if (open) raw.write(`event: ${event}\nid: ${eventId}\ndata: ${JSON.stringify(data)}\n\n`);
  };
  let started = false;
  const start = () => {
    if (started) return;
    started = true;
    reply.hijack();
    raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
      'x-request-id': request.id,
      'x-builder': context.service.builderId,
    });
    raw.write('retry: 1000\n\n');
    heartbeat = setInterval(() => {
      if (open) raw.write(': heartbeat\n\n');
    }, context.sseHeartbeatMs);
    // The response's close is the connection's (the request's fires once its body is read).
    raw.on('close', close);
  };
  // subscribe() throws ERR_BUILD_NOT_FOUND before anything is sent: that becomes a 404.
  subscription.stop = await context.service.subscribe(id, since, {
    log: (line) => {
      start();
      send('log', line.seq, line);
    },
    status: (record) => {
      start();
      send('status', record.lastSeq, record);
    },
    end: (record) => {
      start();
      send('end', record.lastSeq, record);
      close();
    },
  });
  if (!open) subscription.stop();
}
