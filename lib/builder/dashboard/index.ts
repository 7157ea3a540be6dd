/**
 * The builder's dashboard (`GET /`): login with a builder token → a session cookie the API
 * accepts in place of the bearer token; the build list, one build with its live log (SSE),
 * cancel. Server side here; the page's script and styles are plain files in `assets/`.
 *
 * Security: the cookie holds a random session id (HttpOnly, SameSite=Strict, Secure over
 * https), never the token; state-changing requests with the cookie also need the
 * `X-Dashboard-Request` header and a same-origin `Origin`/`Sec-Fetch-Site`; every response
 * carries `nosniff`, a same-origin referrer policy and a Content-Security-Policy without inline script.
 *
 * @example
 * const dashboard = createDashboard({ tokens });
 * await startBuilder({ …, authorize: dashboard.authorize, register: dashboard.register });
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { createAuthenticator, type Authenticator } from '../auth.js';
import { idParamsSchema } from '../schemas.js';
import { defaultAssetsDir, loadAssets, type AssetSet } from './assets.js';
import { loginPage, safeNext, shellPage } from './pages.js';
import { SESSION_COOKIE, SessionStore, sessionIdFrom } from './sessions.js';

/** Header the dashboard's script sends on every state-changing request (CSRF defence). */
export const CSRF_HEADER = 'x-dashboard-request';

/** CSP of the dashboard's pages: files from this origin only, no inline script or style. */
export const DASHBOARD_CSP = [
  'default-src \'none\'',
  'script-src \'self\'',
  'style-src \'self\'',
  'img-src \'self\'',
  'connect-src \'self\'',
  'form-action \'self\'',
  'base-uri \'none\'',
  'frame-ancestors \'none\'',
].join('; ');

/** CSP of every other response (JSON, NDJSON, artifacts): nothing may run or embed them. */
const API_CSP = 'default-src \'none\'; frame-ancestors \'none\'; sandbox';

const SECURITY_HEADERS = {
  'x-content-type-options': 'nosniff',
  // Not no-referrer: with it, browsers send `Origin: null` even on this origin's own form posts.
  'referrer-policy': 'same-origin',
  'x-frame-options': 'DENY',
  'cross-origin-opener-policy': 'same-origin',
};

export interface DashboardOptions {
  /** The builder's accepted tokens (the login form takes one of them). */
  tokens: readonly string[];
  /** The builder's token check, when it is shared (token rotation reaches the login form too). */
  auth?: Authenticator;
  /** Session lifetime from login, ms (default 12 h). */
  sessionTtlMs?: number;
  /** Live sessions at most (default 1000; the oldest goes first). */
  maxSessions?: number;
  /** Directory of `dashboard.js`/`dashboard.css` (default: this package's own). */
  assetsDir?: string;
}

export interface Dashboard {
  /** For `startBuilder({authorize})`: true when the request carries a live session (and passes the CSRF checks). */
  authorize(request: FastifyRequest): boolean;
  /** For `startBuilder({register})`: the pages, login/logout, assets, security headers. */
  register(app: FastifyInstance): Promise<void>;
  readonly sessions: SessionStore;
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * A browser's request from a page of this origin. `Sec-Fetch-Site` (set by the browser, not by
 * script) decides when it is sent; otherwise `Origin`, when sent, must name this host. Clients
 * that send neither (curl) are not browsers, so there is no cross-site request to forge.
 */
export function isSameOrigin(request: FastifyRequest): boolean {
  const site = request.headers['sec-fetch-site'];
  if (site !== undefined) return site === 'same-origin';
  const origin = request.headers.origin;
  if (origin === undefined) return true;
  try {
    return new URL(origin).host === request.headers.host;
  } catch {
    // "null" (an opaque origin) and garbage.
    return false;
  }
}

function isHttps(request: FastifyRequest): boolean {
  return request.protocol === 'https' || request.headers['x-forwarded-proto'] === 'https';
}

const LOGIN_FAILURE_DELAY_MS = 300;

export function createDashboard(options: DashboardOptions): Dashboard {
  const auth = options.auth ?? createAuthenticator(options.tokens);
  const sessions = new SessionStore({ ttlMs: options.sessionTtlMs ?? 12 * 3600_000, maxSessions: options.maxSessions ?? 1000 });
  const loggedIn = (request: FastifyRequest) => sessions.valid(sessionIdFrom(request.headers.cookie));

  const authorize = (request: FastifyRequest): boolean => {
    if (!loggedIn(request)) return false;
    if (SAFE_METHODS.has(request.method)) return true;
    // SameSite=Strict already keeps the cookie off cross-site requests; the custom header
    // (which forces a CORS preflight nobody answers) and the origin check cover same-site
    // hosts and old browsers.
    return request.headers[CSRF_HEADER] === '1' && isSameOrigin(request);
  };

  const register = async (app: FastifyInstance): Promise<void> => {
    const assets: AssetSet = await loadAssets(options.assetsDir ?? (await defaultAssetsDir()));
    const shell = shellPage(assets);

    app.addHook('onSend', async (_request, reply, payload) => {
      reply.headers(SECURITY_HEADERS);
      if (!reply.hasHeader('content-security-policy')) reply.header('content-security-policy', API_CSP);
      return payload;
    });

    const html = (reply: FastifyReply, status: number, body: string) =>
      reply.code(status).header('content-type', 'text/html; charset=utf-8').header('cache-control', 'no-store')
        .header('content-security-policy', DASHBOARD_CSP).send(body);
    const page = (request: FastifyRequest, reply: FastifyReply) => {
      if (loggedIn(request)) return html(reply, 200, shell);
      // No session: the login form, with a 401 (no build data without a session).
      return html(reply.header('www-authenticate', 'Bearer'), 401, loginPage(assets, { next: request.url }));
    };
    const cookie = (request: FastifyRequest, value: string, maxAgeSeconds: number) =>
      `${SESSION_COOKIE}=${value}; Path=/; Max-Age=${maxAgeSeconds}; HttpOnly; SameSite=Strict${isHttps(request) ? '; Secure' : ''}`;

    app.get('/', { config: { public: true } }, async (request, reply) => page(request, reply));
    app.get('/builds/:id', {
      config: { public: true },
      schema: { params: idParamsSchema },
    }, async (request, reply) => page(request, reply));
    app.get('/login', { config: { public: true } }, async (_request, reply) => reply.redirect('/', 303));

    await app.register(async (scope) => {
      scope.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 8192 }, (_request, body, done) => {
        done(null, Object.fromEntries(new URLSearchParams(body as string)));
      });
      scope.post('/login', {
        config: { public: true },
        schema: {
          body: {
            type: 'object',
            required: ['token'],
            properties: { token: { type: 'string', maxLength: 4096 }, next: { type: 'string', maxLength: 2048 } },
          },
        },
      }, async (request, reply) => {
        const { token, next } = request.body as { token: string; next?: string };
        if (!isSameOrigin(request)) return html(reply, 403, loginPage(assets, { next: '/', error: 'Cross-site login refused.' }));
        if (!auth.check(`Bearer ${token.trim()}`)) {
          // Tokens are long and random; the pause only makes guessing pointless noise.
          request.log.warn({ reqId: request.id, ip: request.ip }, 'dashboard login with a wrong token');
          await new Promise((resolve) => setTimeout(resolve, LOGIN_FAILURE_DELAY_MS));
          return html(reply, 401, loginPage(assets, { next: safeNext(next), error: 'That token is not accepted by this builder.' }));
        }
        // A fresh id on every login (no fixation); a session this browser had before ends.
        sessions.delete(sessionIdFrom(request.headers.cookie));
        const session = sessions.create();
        return reply.header('set-cookie', cookie(request, session.id, session.maxAgeSeconds)).header('cache-control', 'no-store').redirect(safeNext(next), 303);
      });
    });

    app.post('/logout', { config: { public: true } }, async (request, reply) => {
      if (request.headers[CSRF_HEADER] !== '1' || !isSameOrigin(request)) {
        return reply.code(403).send({ error: { code: 'ERR_UNAUTHORIZED', message: 'Forbidden.' } });
      }
      sessions.delete(sessionIdFrom(request.headers.cookie));
      return reply.code(204).header('set-cookie', cookie(request, '', 0)).send();
    });

    app.get('/assets/:name', { config: { public: true } }, async (request, reply) => {
      const asset = assets.byName.get((request.params as { name: string }).name);
      if (!asset) return reply.code(404).send({ error: { code: 'ERR_REQUEST_INVALID', message: 'No such asset.' } });
      reply.header('content-type', asset.type).header('etag', asset.etag).header('vary', 'accept-encoding')
        .header('cache-control', 'public, max-age=31536000, immutable');
      if (request.headers['if-none-match'] === asset.etag) return reply.code(304).send();
      if (/\bgzip\b/.test(request.headers['accept-encoding'] ?? '')) return reply.header('content-encoding', 'gzip').send(asset.gzip);
      return reply.send(asset.body);
    });
    app.get('/favicon.ico', { config: { public: true } }, async (_request, reply) => reply.code(204).header('cache-control', 'public, max-age=86400').send());
  };

  return { authorize, register, sessions };
}
