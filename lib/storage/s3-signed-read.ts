/**
 * HEAD and GET of one S3 object, signed here (SigV4 by aws4) and sent with node:http(s): part of
 * the S3 store (lib/storage/s3-store.ts, its only user), for when the store's region and
 * credentials are known without the AWS SDK — given to the store, or the SDK's own first choice,
 * the environment's AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY. A cached re-run reads a few small
 * keys and so never loads the SDK (~80 ms of its ~0.3 s). Anything else (a profile, SSO, an
 * instance role, FIPS or dual-stack endpoints, every write) goes through the SDK. Failures come
 * back in the SDK's shape (`name` = S3's error code, `$metadata.httpStatusCode`), so the store
 * maps and retries them exactly as it does the SDK's.
 */
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import aws4 from 'aws4';

export interface SignedReadSettings {
  /** Where requests go: the bucket's virtual host, or the endpoint with the bucket in the path. */
  base: URL;
  pathStyle: boolean;
  region: string;
  credentials: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
}

/** The SDK's settings that change where or how it sends a request: with any of them, the SDK decides. */
const SDK_ONLY_ENV = ['AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3', 'AWS_USE_FIPS_ENDPOINT', 'AWS_USE_DUALSTACK_ENDPOINT', 'AWS_S3_USE_ARN_REGION', 'AWS_S3_DISABLE_MULTIREGION_ACCESS_POINTS'];

/**
 * The settings of the signed path, or undefined when the SDK must resolve something itself.
 * Mirrors the SDK's choices: given credentials, else the environment's (the first provider of
 * its chain); the given region, else AWS_REGION; path style when asked for or when the bucket
 * name cannot be a TLS host name (dots).
 */
export function signedReadSettings(options: { bucket: string; endpoint?: string; region?: string; forcePathStyle?: boolean; credentials?: unknown }, env: NodeJS.ProcessEnv): SignedReadSettings | undefined {
  if (SDK_ONLY_ENV.some((name) => env[name] !== undefined && env[name] !== '')) return undefined;
  const given = options.credentials as { accessKeyId?: unknown; secretAccessKey?: unknown; sessionToken?: unknown } | undefined;
  let credentials: SignedReadSettings['credentials'] | undefined;
  if (given !== undefined) {
    // A provider function (a role, a refresh) is the SDK's to call.
    if (typeof given !== 'object' || typeof given.accessKeyId !== 'string' || typeof given.secretAccessKey !== 'string') return undefined;
    credentials = { accessKeyId: given.accessKeyId, secretAccessKey: given.secretAccessKey, ...(typeof given.sessionToken === 'string' ? { sessionToken: given.sessionToken } : {}) };
  } else if (env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY && !env.AWS_PROFILE) {
    // With AWS_PROFILE set the SDK takes the profile over these, so it must choose.
    credentials = { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY, ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}) };
  }
  const region = options.region ?? (env.AWS_REGION || undefined);
  if (!credentials || !region) return undefined;
  let base: URL;
  let pathStyle: boolean;
  if (options.endpoint) {
    base = new URL(options.endpoint);
    // A virtual host on an endpoint of the user's (bucket.minio.local) is the SDK's to build.
    if (!options.forcePathStyle || base.search || base.hash) return undefined;
    pathStyle = true;
  } else {
    pathStyle = options.forcePathStyle === true || options.bucket.includes('.');
    base = new URL(pathStyle ? `https://s3.${region}.amazonaws.com` : `https://${options.bucket}.s3.${region}.amazonaws.com`);
  }
  return { base, pathStyle, region, credentials };
}

/** A response's metadata in the SDK's field names. */
export interface SignedReadOutput {
  ContentLength?: number;
  Metadata: Record<string, string>;
  ContentType?: string;
  ETag?: string;
  LastModified?: Date;
  ContentRange?: string;
}

/** An error in the SDK's shape: S3's code as the name, the HTTP status in $metadata. */
export class SignedReadError extends Error {
  readonly $metadata: { httpStatusCode: number };
  constructor(name: string, message: string, status: number) {
    super(message);
    this.name = name;
    this.$metadata = { httpStatusCode: status };
  }
}

/** The SDK's names for an error response without a body (HEAD): by status. */
const STATUS_NAMES: Record<number, string> = { 400: 'BadRequest', 403: 'Forbidden', 404: 'NotFound', 412: 'PreconditionFailed', 301: 'MovedPermanently' };

/** RFC 3986 encoding of one key segment, as S3's canonical request wants it. */
function encodeSegment(segment: string): string {
  return encodeURIComponent(segment).replace(/[!'()*]/g, (char) => `%${char.charCodeAt(0).toString(16).toUpperCase()}`);
}

export class SignedReader {
  readonly #settings: SignedReadSettings;
  readonly #bucket: string;
  readonly #agent: http.Agent;

  constructor(settings: SignedReadSettings, bucket: string) {
    this.#settings = settings;
    this.#bucket = bucket;
    // Several reads per run: one connection, kept between them (free sockets never hold the process).
    this.#agent = settings.base.protocol === 'https:' ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
  }

  /**
   * One signed request; resolves with the metadata and, for GET, the body (the caller consumes
   * or destroys it). A non-2xx answer rejects with a {@link SignedReadError}, its body read.
   */
  async request(method: 'HEAD' | 'GET', fullKey: string, options: { range?: string; signal?: AbortSignal } = {}): Promise<{ output: SignedReadOutput; body: IncomingMessage }> {
    const { base, pathStyle, region, credentials } = this.#settings;
    const basePath = base.pathname.replace(/\/+$/, '');
    const keyPath = fullKey.split('/').map(encodeSegment).join('/');
    const request: aws4.Request & { path: string; headers: Record<string, string> } = {
      method,
      host: base.host,
      path: `${basePath}${pathStyle ? `/${encodeSegment(this.#bucket)}` : ''}/${keyPath}`,
      service: 's3',
      region,
      headers: { ...(options.range ? { Range: options.range } : {}) },
    };
    aws4.sign(request, credentials);
    const send = base.protocol === 'https:' ? https.request : http.request;
    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      const outgoing = send({
        protocol: base.protocol,
        hostname: base.hostname,
        port: base.port || undefined,
        method,
        path: request.path,
        headers: request.headers,
        agent: this.#agent,
        ...(options.signal ? { signal: options.signal } : {}),
      }, resolve);
      outgoing.on('error', reject);
      outgoing.end();
    });
    const status = response.statusCode ?? 0;
    if (status < 200 || status >= 300) throw await responseError(response, status);
    return { output: outputOf(response), body: response };
  }

  close(): void {
    this.#agent.destroy();
  }
}

function outputOf(response: IncomingMessage): SignedReadOutput {
  const header = (name: string) => {
    const value = response.headers[name];
    return Array.isArray(value) ? value[0] : value;
  };
  const metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(response.headers)) {
    if (name.startsWith('x-amz-meta-') && value !== undefined) metadata[name.slice('x-amz-meta-'.length)] = Array.isArray(value) ? value.join(',') : value;
  }
  const length = header('content-length');
  const modified = header('last-modified');
  const contentType = header('content-type');
  const etag = header('etag');
  const range = header('content-range');
  return {
    ...(length !== undefined ? { ContentLength: Number(length) } : {}),
    Metadata: metadata,
    ...(contentType ? { ContentType: contentType } : {}),
    ...(etag ? { ETag: etag } : {}),
    ...(modified ? { LastModified: new Date(modified) } : {}),
    ...(range ? { ContentRange: range } : {}),
  };
}

/** S3's XML error (`<Code>NoSuchKey</Code>`), or the status's name when there is no body. */
async function responseError(response: IncomingMessage, status: number): Promise<SignedReadError> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of response) {
    // An error document is small; more is not read.
    if (size < 64 * 1024) chunks.push(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  const text = Buffer.concat(chunks).toString('utf8');
  const code = /<Code>([^<]+)<\/Code>/.exec(text)?.[1];
  const message = /<Message>([^<]*)<\/Message>/.exec(text)?.[1];
  const name = code ?? STATUS_NAMES[status] ?? (status >= 500 ? 'InternalError' : `Http${status}`);
  return new SignedReadError(name, message || `HTTP ${status}`, status);
}
