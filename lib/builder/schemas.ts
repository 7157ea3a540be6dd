/**
 * JSON schemas of the builder API: fastify validates every body, params and query against
 * them (and serializes responses with them), and `openapi.ts` builds `/v1/openapi.json` from
 * the same objects. The TypeScript shapes are in `lib/protocol.ts`; keep both in step.
 */

const OSES = ['linux', 'darwin', 'win32', 'freebsd', 'openbsd', 'sunos', 'aix'];
const CPUS = ['x64', 'arm64', 'arm', 'ia32', 'ppc64', 's390x', 'riscv64', 'loong64'];
const SHA256 = { type: 'string', pattern: '^[0-9a-fA-F]{64}$', description: 'lowercase or uppercase hex sha256' } as const;
const ISO_TIME = { type: 'string', format: 'date-time' } as const;
const STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
const STEP_NAMES = ['unpack', 'configure', 'runtime', 'install', 'bundle', 'verify', 'pack', 'output'];
const STRING_RECORD = { type: 'object', additionalProperties: { type: 'string', maxLength: 4096 }, maxProperties: 64 } as const;

export const targetSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['os', 'cpu'],
  properties: {
    os: { type: 'string', enum: OSES },
    cpu: { type: 'string', enum: CPUS },
    libc: { type: 'string', enum: ['glibc', 'musl'] },
    node: { type: 'string', minLength: 1, maxLength: 100, description: 'semver range for Node' },
  },
} as const;

export const createBuildBodySchema = {
  type: 'object',
  additionalProperties: false,
  required: ['source', 'target'],
  properties: {
    source: {
      type: 'object',
      additionalProperties: false,
      required: ['sha256'],
      properties: {
        url: { type: 'string', pattern: '^https?://', maxLength: 8192, description: 'http(s) URL (presigned or plain) the builder GETs when it accepts the build' },
        key: { type: 'string', minLength: 1, maxLength: 1024, description: 'a key in the builder\'s own store' },
        sha256: SHA256,
      },
      oneOf: [{ required: ['url'] }, { required: ['key'] }],
    },
    target: targetSchema,
    output: {
      type: 'object',
      additionalProperties: false,
      required: ['url'],
      properties: {
        url: { type: 'string', pattern: '^https?://', maxLength: 8192, description: 'URL the builder PUTs the .tgz to (presigned S3 PUT)' },
        headers: STRING_RECORD,
      },
    },
    overrides: {
      type: 'object',
      additionalProperties: false,
      properties: {
        registry: { type: 'string', pattern: '^https?://', maxLength: 2048 },
        scopes: STRING_RECORD,
        env: STRING_RECORD,
        sourceDateEpoch: { type: 'integer', minimum: 0 },
        gzipLevel: { type: 'integer', minimum: 1, maximum: 9, description: 'zlib level of the bundle\'s gzip, 1 (fastest) to 9 (smallest); default 6. Changes the .tgz bytes, not the tar inside.' },
      },
    },
    label: { type: 'string', maxLength: 200 },
    provenance: {
      type: 'object',
      additionalProperties: false,
      description: 'What the dispatcher states for the provenance (recorded as given in externalParameters).',
      properties: {
        runId: { type: 'string', maxLength: 200 },
        input: {
          type: 'object',
          additionalProperties: false,
          required: ['spec', 'kind', 'sha256'],
          properties: { spec: { type: 'string', maxLength: 4096 }, kind: { type: 'string', maxLength: 50 }, sha256: SHA256, commit: { type: 'string', maxLength: 100 } },
        },
      },
    },
  },
} as const;

export const envelopeSchema = {
  type: 'object',
  description: 'DSSE envelope (secure-systems-lab/dsse envelope.md) of an in-toto Statement v1 with an SLSA provenance v1 predicate, signed by the builder\'s key (GET /v1/keys).',
  required: ['payload', 'payloadType', 'signatures'],
  properties: {
    payload: { type: 'string', description: 'base64 of the statement' },
    payloadType: { type: 'string', enum: ['application/vnd.in-toto+json'] },
    signatures: { type: 'array', items: { type: 'object', required: ['sig'], properties: { keyid: { type: 'string' }, sig: { type: 'string' } } } },
  },
} as const;

export const keysSchema = {
  type: 'object',
  required: ['keys'],
  properties: {
    keys: {
      type: 'array',
      items: {
        type: 'object',
        required: ['keyid', 'algorithm', 'publicKey'],
        properties: {
          keyid: { type: 'string', description: 'sha256 (hex) of the public key\'s SPKI DER' },
          algorithm: { type: 'string', enum: ['ed25519', 'ecdsa-p256'] },
          publicKey: { type: 'string', description: 'SPKI PEM' },
        },
      },
    },
  },
} as const;

export const idParamsSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['id'],
  properties: { id: { type: 'string', pattern: '^[0-9a-z]{6,64}$' } },
} as const;

export const createBuildHeadersSchema = {
  type: 'object',
  properties: { 'idempotency-key': { type: 'string', minLength: 1, maxLength: 200 } },
} as const;

export const logQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: { since: { type: 'integer', minimum: 0, default: 0, description: 'only lines with seq > since' } },
} as const;

export const eventsHeadersSchema = {
  type: 'object',
  properties: { 'last-event-id': { type: 'string', pattern: '^[0-9]*$' } },
} as const;

export const listQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    limit: { type: 'integer', minimum: 1, maximum: 100, default: 20 },
    cursor: { type: 'string', maxLength: 2048 },
    state: { type: 'string', enum: STATES },
  },
} as const;

export const linksSchema = {
  type: 'object',
  required: ['self', 'events', 'log'],
  properties: { self: { type: 'string' }, events: { type: 'string' }, log: { type: 'string' }, artifact: { type: 'string' } },
} as const;

export const buildRecordSchema = {
  type: 'object',
  required: ['id', 'builder', 'state', 'target', 'source', 'steps', 'createdAt', 'lastSeq', 'links'],
  properties: {
    id: { type: 'string' },
    builder: { type: 'string' },
    state: { type: 'string', enum: STATES },
    label: { type: 'string' },
    idempotencyKey: { type: 'string' },
    target: targetSchema,
    source: {
      type: 'object',
      required: ['sha256', 'size'],
      properties: { sha256: { type: 'string' }, size: { type: 'integer' }, key: { type: 'string' }, url: { type: 'string' } },
    },
    queuePosition: { type: 'integer' },
    steps: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'state', 'startedAt'],
        properties: {
          name: { type: 'string', enum: STEP_NAMES },
          state: { type: 'string', enum: ['running', 'finished', 'failed'] },
          startedAt: ISO_TIME,
          finishedAt: ISO_TIME,
          durationMs: { type: 'integer' },
        },
      },
    },
    package: { type: 'object', required: ['name', 'version'], properties: { name: { type: 'string' }, version: { type: 'string' } } },
    resolved: {
      type: 'object',
      required: ['node', 'abi', 'npm'],
      properties: {
        node: { type: 'string' },
        abi: { type: 'string' },
        npm: { type: 'string' },
        method: { type: 'string', enum: ['native', 'cross-compiled', 'cross'] },
        verification: { type: 'string', enum: ['loaded', 'emulated', 'wine', 'wine-node-api', 'structure', 'headers', 'none'] },
        isolation: { type: 'string', enum: ['bubblewrap', 'bubblewrap+build-user', 'build-user', 'none'] },
        prebuilt: {
          type: 'array',
          description: 'Packages whose install-time build a prebuild they ship did instead (cross targets).',
          items: { type: 'object', required: ['name', 'path', 'file'], properties: { name: { type: 'string' }, path: { type: 'string' }, file: { type: 'string' } } },
        },
      },
    },
    artifact: {
      type: 'object',
      required: ['sha256', 'size', 'file'],
      properties: { url: { type: 'string' }, key: { type: 'string' }, sha256: { type: 'string' }, size: { type: 'integer' }, file: { type: 'string' } },
    },
    provenance: envelopeSchema,
    error: { type: 'object', required: ['code', 'message'], properties: { code: { type: 'string' }, message: { type: 'string' } } },
    heartbeatAt: ISO_TIME,
    peakMemory: { type: 'integer' },
    freeDisk: { type: 'integer' },
    createdAt: ISO_TIME,
    startedAt: ISO_TIME,
    finishedAt: ISO_TIME,
    lastSeq: { type: 'integer' },
    links: linksSchema,
  },
} as const;

export const createBuildResponseSchema = {
  type: 'object',
  required: ['id', 'state', 'existing', 'links'],
  properties: { id: { type: 'string' }, state: { type: 'string', enum: STATES }, existing: { type: 'boolean' }, links: linksSchema },
} as const;

export const buildListSchema = {
  type: 'object',
  required: ['builds'],
  properties: { builds: { type: 'array', items: buildRecordSchema }, cursor: { type: 'string' } },
} as const;

export const healthSchema = {
  type: 'object',
  required: ['ok', 'version', 'builder', 'targets', 'methods', 'runtimes', 'node', 'npm', 'queue', 'stopping', 'isolation'],
  properties: {
    ok: { type: 'boolean' },
    version: { type: 'string' },
    builder: { type: 'string' },
    targets: { type: 'array', items: { type: 'string' } },
    methods: {
      type: 'object',
      description: 'How each served target is built: native (this machine), cross-compiled (cross toolchain + emulated load), cross (only when nothing compiles).',
      additionalProperties: { type: 'string', enum: ['native', 'cross-compiled', 'cross'] },
    },
    runtimes: { type: 'array', items: { type: 'string' } },
    node: { type: 'string' },
    npm: { type: 'string' },
    queue: {
      type: 'object',
      required: ['running', 'queued', 'capacity'],
      properties: { running: { type: 'integer' }, queued: { type: 'integer' }, capacity: { type: 'integer' } },
    },
    stopping: { type: 'boolean' },
    isolation: {
      type: 'string',
      enum: ['bubblewrap', 'bubblewrap+build-user', 'build-user', 'none'],
      description: 'What isolates a build\'s npm and install scripts: a bubblewrap sandbox, a build user of its own, both, or none (docs/sandbox.md).',
    },
  },
} as const;

export const readinessSchema = {
  type: 'object',
  required: ['ready', 'builder', 'checks'],
  properties: {
    ready: { type: 'boolean' },
    builder: { type: 'string' },
    checks: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'ok', 'message'],
        properties: { name: { type: 'string', enum: ['draining', 'disk', 'store'] }, ok: { type: 'boolean' }, message: { type: 'string' } },
      },
    },
  },
} as const;

export const livenessSchema = {
  type: 'object',
  required: ['live', 'builder', 'uptimeSeconds'],
  properties: { live: { type: 'boolean', const: true }, builder: { type: 'string' }, uptimeSeconds: { type: 'number' } },
} as const;

export const drainQuerySchema = {
  type: 'object',
  properties: { wait: { type: 'boolean', default: false, description: 'Answer once no build runs.' } },
  additionalProperties: false,
} as const;

export const drainSchema = {
  type: 'object',
  required: ['draining', 'since', 'handedBack', 'running'],
  properties: {
    draining: { type: 'boolean', const: true },
    since: { type: 'string' },
    handedBack: { type: 'array', items: { type: 'string' } },
    running: { type: 'integer' },
  },
} as const;

export const logLineSchema = {
  type: 'object',
  required: ['seq', 'time', 'step', 'stream', 'message'],
  properties: {
    seq: { type: 'integer' },
    time: ISO_TIME,
    step: { type: 'string' },
    stream: { type: 'string', enum: ['stdout', 'stderr', 'status'] },
    message: { type: 'string' },
    data: { type: 'object', additionalProperties: true },
  },
} as const;

export const errorSchema = {
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: { code: { type: 'string' }, message: { type: 'string' }, details: { type: 'object', additionalProperties: true } },
    },
  },
} as const;
