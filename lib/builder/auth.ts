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
  /** The accepted tokens, for redaction of every log line and record. */
  readonly secrets: readonly string[];
}

const digest = (text: string) => createHash('sha256').update(text).digest();

export function createAuthenticator(tokens: readonly string[]): Authenticator {
  const accepted = tokens.map(digest);
  return {
    secrets: [...tokens],
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
