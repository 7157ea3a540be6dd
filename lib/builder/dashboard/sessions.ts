/**
 * Dashboard sessions: a random id in an HttpOnly cookie, the server-side map of live sessions
 * keyed by the id's sha256 (the map never holds a usable cookie value), with an absolute
 * expiry. The builder token itself is never stored in the cookie or here.
 */
import { createHash, randomBytes } from 'node:crypto';

/** Name of the session cookie. */
export const SESSION_COOKIE = 'bd_session';

/** Session ids: 32 random bytes, base64url. */
const ID_PATTERN = /^[A-Za-z0-9_-]{43}$/;

export interface SessionStoreOptions {
  /** Lifetime of a session from login, ms. */
  ttlMs: number;
  /** Sessions kept at most; the oldest goes when a login would exceed it. */
  maxSessions: number;
  /** Clock, for tests. */
  now?: () => number;
}

const digest = (id: string) => createHash('sha256').update(id).digest('hex');

export class SessionStore {
  /** sha256(id) → expiry time (ms); insertion order = age. */
  private readonly sessions = new Map<string, number>();
  private readonly now: () => number;

  constructor(private readonly options: SessionStoreOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Starts a session; the returned id goes into the cookie and nowhere else. */
  create(): { id: string; maxAgeSeconds: number } {
    this.sweep();
    while (this.sessions.size >= this.options.maxSessions) {
      const oldest = this.sessions.keys().next().value;
      if (oldest === undefined) break;
      this.sessions.delete(oldest);
    }
    const id = randomBytes(32).toString('base64url');
    this.sessions.set(digest(id), this.now() + this.options.ttlMs);
    return { id, maxAgeSeconds: Math.floor(this.options.ttlMs / 1000) };
  }

  /** True for a live session; an expired one is forgotten. */
  valid(id: string | undefined): boolean {
    if (!id || !ID_PATTERN.test(id)) return false;
    const key = digest(id);
    const expires = this.sessions.get(key);
    if (expires === undefined) return false;
    if (expires <= this.now()) {
      this.sessions.delete(key);
      return false;
    }
    return true;
  }

  /** Ends a session (logout). */
  delete(id: string | undefined): void {
    if (id && ID_PATTERN.test(id)) this.sessions.delete(digest(id));
  }

  get size(): number {
    return this.sessions.size;
  }

  private sweep(): void {
    const now = this.now();
    for (const [key, expires] of this.sessions) if (expires <= now) this.sessions.delete(key);
  }
}

/** The session id from a `Cookie` header, if there is one. */
export function sessionIdFrom(cookieHeader: string | undefined): string | undefined {
  if (!cookieHeader) return undefined;
  for (const part of cookieHeader.split(';')) {
    const index = part.indexOf('=');
    if (index > 0 && part.slice(0, index).trim() === SESSION_COOKIE) return part.slice(index + 1).trim();
  }
  return undefined;
}
