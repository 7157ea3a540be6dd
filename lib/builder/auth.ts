/**
 * Bearer-token authentication of the builder API. Tokens are compared in constant time
 * (sha256 of both sides, then `timingSafeEqual`, against every token without stopping early),
 * never logged, and a failure answers 401 without saying why.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { BundleError } from '../errors.js';

export interface Authenticator {
  /** True when the request carries an accepted token (`Authorization: Bearer …`). */
  check(authorization: string | undefined): boolean;
  /**
   * Every token ever accepted, for redaction of every log line and record: a token rotated out
   * stays redacted. The same array grows in place, so whoever holds it sees the new ones.
   */
  readonly secrets: readonly string[];
  /** Accept exactly these tokens from now on (token rotation). */
  replace(tokens: readonly string[]): void;
  /** Other secrets of the process (AWS credentials, registry tokens) to redact like the tokens. */
  redactToo(values: readonly string[]): void;
  /** One accepted token, for a request this builder sends to another replica of its pool. */
  anyToken(): string | undefined;
}

const digest = (text: string) => createHash('sha256').update(text).digest();

export function createAuthenticator(tokens: readonly string[]): Authenticator {
  let accepted = tokens.map(digest);
  let current = [...tokens];
  const secrets = [...tokens];
  const remember = (values: readonly string[]) => {
    for (const value of values) if (!secrets.includes(value)) secrets.push(value);
    // Longest first: a secret that contains another is scrubbed whole.
    secrets.sort((a, b) => b.length - a.length);
  };
  return {
    secrets,
    replace(next) {
      accepted = next.map(digest);
      current = [...next];
      remember(next);
    },
    anyToken: () => current[0],
    redactToo: remember,
    check(authorization) {
      const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
      if (!match?.[1]) return false;
      const given = digest(match[1]);
      let ok = false;
      for (const token of accepted) ok = timingSafeEqual(token, given) || ok;
      return ok;
    },
  };
}

/**
 * Tokens from `BUNDLE_DISPATCH_BUILDER_TOKENS` (comma-separated) and the token file (one per
 * line, `#` comments). Warns when the file is readable by group or others.
 */
export async function readTokens(options: { envValue?: string; tokenFile?: string }): Promise<{ tokens: string[]; warnings: string[] }> {
  const warnings: string[] = [];
  const tokens = (options.envValue ?? '').split(',').map((token) => token.trim()).filter(Boolean);
  if (options.tokenFile) {
    let text: string;
    try {
      text = await readFile(options.tokenFile, 'utf8');
    } catch (error) {
      throw new BundleError('ERR_CONFIG', `builder.tokenFile: cannot read ${options.tokenFile}: ${(error as Error).message}`, { cause: error });
    }
    const mode = (await stat(options.tokenFile)).mode;
    if (process.platform !== 'win32' && (mode & 0o077) !== 0) {
      warnings.push(`builder.tokenFile ${options.tokenFile} is readable by group or others (mode ${(mode & 0o777).toString(8)}); chmod 600 it.`);
    }
    tokens.push(...text.split(/\r?\n/).map((line) => line.trim()).filter((line) => line && !line.startsWith('#')));
  }
  const short = tokens.filter((token) => token.length < 16);
  if (short.length > 0) throw new BundleError('ERR_CONFIG', `${short.length} builder token(s) shorter than 16 characters.`, { hint: 'Use long random tokens, e.g. `openssl rand -hex 32`.' });
  return { tokens: [...new Set(tokens)], warnings };
}

/** How often the token file is looked at for a change (a Kubernetes Secret update, an edit). */
export const TOKEN_FILE_POLL_MS = 2000;

/**
 * Re-reads the token file when it changes (polled: a Kubernetes Secret volume swaps a symlink,
 * which file watchers miss) and when `reload()` is called (SIGHUP). A file that cannot be read
 * or holds a bad token keeps the tokens in use, with a warning: a half-written file must not
 * lock every client out.
 */
export function watchTokenFile(options: {
  tokenFile: string;
  envValue?: string;
  auth: Authenticator;
  intervalMs?: number;
  onReload: (event: { ok: true; tokens: number } | { ok: false; message: string }) => void;
  onWarning?: (message: string) => void;
}): { reload: () => Promise<void>; stop: () => void } {
  const fingerprint = async () => {
    const info = await stat(options.tokenFile).catch(() => undefined);
    return info ? `${info.ino}:${info.size}:${info.mtimeMs}` : 'missing';
  };
  let seen: Promise<string> = fingerprint();
  let reading: Promise<void> = Promise.resolve();
  const reload = () => (reading = reading.then(async () => {
    try {
      const { tokens, warnings } = await readTokens({ tokenFile: options.tokenFile, ...(options.envValue !== undefined ? { envValue: options.envValue } : {}) });
      for (const warning of warnings) options.onWarning?.(warning);
      if (tokens.length === 0) throw new BundleError('ERR_CONFIG', `builder.tokenFile ${options.tokenFile} holds no token.`);
      options.auth.replace(tokens);
      options.onReload({ ok: true, tokens: tokens.length });
    } catch (error) {
      options.onReload({ ok: false, message: `${(error as Error).message} Keeping the tokens in use.` });
    }
  }));
  const timer = setInterval(() => {
    void (async () => {
      const [before, now] = [await seen, await fingerprint()];
      if (before === now) return;
      seen = Promise.resolve(now);
      await reload();
    })();
  }, options.intervalMs ?? TOKEN_FILE_POLL_MS);
  timer.unref();
  return { reload, stop: () => clearInterval(timer) };
}
