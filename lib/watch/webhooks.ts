/**
 * The watcher's webhook listener (`watch --listen host:port`): push, tag and release webhooks
 * from GitHub (`X-Hub-Signature-256`, HMAC-SHA256 verified with @octokit/webhooks-methods),
 * Gitea/Forgejo (`X-Gitea-Signature`, the same HMAC without the prefix) and GitLab
 * (`X-Gitlab-Token`, compared in constant time), each with its own secret from the environment.
 *
 * A webhook never says what to build: it names a repository, and the entries that follow that
 * repository are checked at once, the watcher reading the refs from the git server itself. A
 * forged or replayed payload can at most cause a check. Answers 202 at once; deliveries are
 * deduplicated by their id; 401 on a bad or missing signature, 413 over the size limit, 404 for
 * a repository no entry follows. Also GET /healthz, and GET /status with the status token.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { verify } from '@octokit/webhooks-methods';

export const WEBHOOK_SECRET_ENV = { github: 'BUNDLE_DISPATCH_WEBHOOK_GITHUB_SECRET', gitlab: 'BUNDLE_DISPATCH_WEBHOOK_GITLAB_SECRET', gitea: 'BUNDLE_DISPATCH_WEBHOOK_GITEA_SECRET' } as const;
export const STATUS_TOKEN_ENV = 'BUNDLE_DISPATCH_WATCH_TOKEN';
type Host = keyof typeof WEBHOOK_SECRET_ENV;

/** Bodies over this are refused (GitHub caps payloads at 25 MB; a push rarely needs a few hundred KB). */
export const MAX_WEBHOOK_BYTES = 1024 * 1024;
/** Delivery ids remembered for deduplication. */
const REMEMBERED_DELIVERIES = 10_000;

export interface WebhookListener {
  url: string;
  close(): Promise<void>;
}

export interface WebhookOptions {
  host: string;
  port: number;
  env: NodeJS.ProcessEnv;
  /** The repository URLs the entries follow, normalized (normalizeRepository). */
  repositories: () => Set<string>;
  /** A verified, new delivery for a followed repository: check the entries of that repository now. */
  onPush: (repository: string, event: { host: Host; delivery: string; ref?: string }) => void;
  /** What GET /status answers (the watcher's state). */
  status: () => unknown;
  log?: (line: string) => void;
}

/** `https://git.example.com/Team/App.git`, `git@git.example.com:team/app`, `git://…/app` → `git.example.com/team/app`. */
export function normalizeRepository(url: string): string {
  const scp = /^(?:[\w.-]+@)?([^:/]+):(?!\/\/)(.+)$/.exec(url);
  const withoutScheme = scp ? `${scp[1]}/${scp[2]}` : url.replace(/^[a-z+]+:\/\/(?:[^@/]+@)?/i, '');
  return withoutScheme.replace(/:\d+\//, '/').replace(/\.git$/i, '').replace(/\/+$/, '').toLowerCase();
}

const answer = (response: ServerResponse, status: number, body: unknown) => {
  response.writeHead(status, { 'content-type': 'application/json' }).end(`${JSON.stringify(body)}\n`);
};

async function readBody(request: IncomingMessage): Promise<Buffer | undefined> {
  const declared = Number(request.headers['content-length'] ?? 0);
  if (declared > MAX_WEBHOOK_BYTES) return undefined;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    size += (chunk as Buffer).length;
    if (size > MAX_WEBHOOK_BYTES) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

const sameSecret = (given: string, expected: string) => timingSafeEqual(createHash('sha256').update(given).digest(), createHash('sha256').update(expected).digest());

/** The repository URLs a payload names (clone, web and ssh forms of each host). */
function repositoriesOf(host: Host, payload: Record<string, any>): string[] { // eslint-disable-line @typescript-eslint/no-explicit-any
  const repository = host === 'gitlab' ? payload.project ?? payload.repository : payload.repository;
  return [repository?.clone_url, repository?.html_url, repository?.ssh_url, repository?.git_http_url, repository?.git_ssh_url, repository?.web_url, repository?.url]
    .filter((value): value is string => typeof value === 'string');
}

export async function startWebhookListener(options: WebhookOptions): Promise<WebhookListener> {
  const seen = new Set<string>();
  const handle = async (request: IncomingMessage, response: ServerResponse) => {
    const pathname = (request.url ?? '/').split('?')[0];
    if (request.method === 'GET' && pathname === '/healthz') return answer(response, 200, { ok: true });
    if (request.method === 'GET' && pathname === '/status') {
      const token = options.env[STATUS_TOKEN_ENV];
      const given = /^Bearer\s+(\S+)$/i.exec(request.headers.authorization ?? '')?.[1];
      if (!token || !given || !sameSecret(given, token)) return answer(response, 401, { error: { code: 'ERR_UNAUTHORIZED', message: `GET /status needs Authorization: Bearer <${STATUS_TOKEN_ENV}>.` } });
      return answer(response, 200, options.status());
    }
    const host = /^\/hooks\/(github|gitlab|gitea)$/.exec(pathname ?? '')?.[1] as Host | undefined;
    if (request.method !== 'POST' || !host) return answer(response, 404, { error: { code: 'ERR_REQUEST_INVALID', message: `No route ${request.method} ${pathname}: webhooks go to POST /hooks/github, /hooks/gitlab or /hooks/gitea.` } });
    const secret = options.env[WEBHOOK_SECRET_ENV[host]];
    if (!secret) return answer(response, 404, { error: { code: 'ERR_REQUEST_INVALID', message: `No ${host} webhooks here: ${WEBHOOK_SECRET_ENV[host]} is not set.` } });
    const body = await readBody(request);
    if (!body) return answer(response, 413, { error: { code: 'ERR_REQUEST_TOO_LARGE', message: `The body is over ${MAX_WEBHOOK_BYTES} bytes.` } });
    const text = body.toString('utf8');
    const header = (name: string) => {
      const value = request.headers[name];
      return typeof value === 'string' ? value : undefined;
    };
    let verified = false;
    if (host === 'github') verified = await verify(secret, text, header('x-hub-signature-256') ?? '').catch(() => false);
    if (host === 'gitea') verified = await verify(secret, text, `sha256=${header('x-gitea-signature') ?? ''}`).catch(() => false);
    if (host === 'gitlab') verified = sameSecret(header('x-gitlab-token') ?? '', secret);
    if (!verified) return answer(response, 401, { error: { code: 'ERR_UNAUTHORIZED', message: 'The signature does not match.' } });
    const delivery = header('x-github-delivery') ?? header('x-gitea-delivery') ?? header('x-gitlab-event-uuid') ?? header('idempotency-key') ?? createHash('sha256').update(body).digest('hex');
    let payload: Record<string, unknown>;
    try {
      payload = JSON.parse(text) as Record<string, unknown>;
    } catch {
      return answer(response, 400, { error: { code: 'ERR_REQUEST_INVALID', message: 'The body is not JSON (set the webhook\'s content type to application/json).' } });
    }
    const followed = options.repositories();
    const repository = repositoriesOf(host, payload).map(normalizeRepository).find((candidate) => followed.has(candidate));
    if (!repository) return answer(response, 404, { error: { code: 'ERR_REQUEST_INVALID', message: 'No watch entry follows this repository.' } });
    if (seen.has(`${host}:${delivery}`)) return answer(response, 202, { accepted: false, duplicate: true, delivery });
    seen.add(`${host}:${delivery}`);
    if (seen.size > REMEMBERED_DELIVERIES) seen.delete(seen.values().next().value as string);
    const ref = typeof payload.ref === 'string' ? payload.ref : undefined;
    answer(response, 202, { accepted: true, delivery, repository });
    options.log?.(`webhook ${host} ${delivery}: ${repository}${ref ? ` ${ref}` : ''}: checking its entries`);
    options.onPush(repository, { host, delivery, ...(ref ? { ref } : {}) });
  };
  const server: Server = createServer((request, response) => {
    handle(request, response).catch(() => {
      if (!response.headersSent) answer(response, 500, { error: { code: 'ERR_INTERNAL', message: 'The webhook could not be handled.' } });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${options.host.includes(':') ? `[${options.host}]` : options.host}:${port}`,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
