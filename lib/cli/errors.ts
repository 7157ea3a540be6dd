import type { BundleError} from '../errors.js';
import { toBundleError, type ErrorCode } from '../errors.js';
import { redact } from '../redact.js';

/**
 * Exit codes: 0 all ok · 1 a build/target failed · 2 usage, config or bad input · 8 still running
 * (`status --exit-status --no-follow`, as gh's pending checks) · 75 another run
 * holds the lock (EX_TEMPFAIL of sysexits.h: try again later) · 130 interrupted.
 */
export const EXIT = { ok: 0, failed: 1, usage: 2, running: 8, locked: 75, interrupted: 130 } as const;

const USAGE_CODES: ReadonlySet<ErrorCode> = new Set(['ERR_USAGE', 'ERR_CONFIG', 'ERR_HOOK_MODULE', 'ERR_HOOK_UNKNOWN', 'ERR_INPUT_NOT_FOUND', 'ERR_TARGET_UNSUPPORTED', 'ERR_STORE_URL', 'ERR_PACKAGE_INVALID', 'ERR_RUNTIME_UNAVAILABLE',
  // Bad input: the same input fails the same way on every run and every builder; retrying
  // does not help, changing the input or the request does.
  'ERR_INPUT_NOT_TAR', 'ERR_INPUT_TRUNCATED', 'ERR_UNSAFE_PATH', 'ERR_UNSAFE_ENTRY', 'ERR_INPUT_TOO_LARGE', 'ERR_NO_PACKAGE_JSON', 'ERR_BAD_PACKAGE_JSON',
  'ERR_ENGINES_UNSATISFIED', 'ERR_NPM_PACKAGE_NOT_FOUND', 'ERR_NATIVE_NEEDS_TARGET', 'ERR_LOCKFILE_OUT_OF_SYNC', 'ERR_SOURCE_REFUSED',
  // A machine without the sandbox that `sandbox: required` demands: install it, then retry.
  'ERR_SANDBOX_UNAVAILABLE']);

export function exitCodeFor(error: BundleError): number {
  if (error.code === 'ERR_ABORTED') return EXIT.interrupted;
  if (error.code === 'ERR_LOCKED') return EXIT.locked;
  return isUsageCode(error.code) ? EXIT.usage : EXIT.failed;
}

/** True for a usage, configuration or bad-input code (exit 2). */
export function isUsageCode(code: string): boolean {
  return USAGE_CODES.has(code as ErrorCode);
}

/** What to do next, per code, where the error itself has no hint (npm's error-message.js). */
const ADVICE: Partial<Record<ErrorCode, string>> = {
  ERR_INPUT_NOT_TAR: 'Give the .tgz that `npm pack` writes.',
  ERR_INPUT_TRUNCATED: 'The file is cut short: pack it again (`npm pack`) or download it again.',
  ERR_UNSAFE_PATH: 'The tarball tries to write outside its package; re-create it with `npm pack`.',
  ERR_UNSAFE_ENTRY: 'npm packages contain regular files only; re-create the tarball with `npm pack`.',
  ERR_INPUT_TOO_LARGE: 'Raise limits.maxBytes / limits.maxEntries in .bundlerc if this input is legitimate.',
  ERR_NO_PACKAGE_JSON: 'The input must be an npm package tarball with package/package.json.',
  ERR_BAD_PACKAGE_JSON: 'Fix package.json (valid JSON with "name" and "version") and pack again.',
  ERR_ENGINES_UNSATISFIED: 'Pick a Node range that exists (--node) or install a runtime and list it under "runtimes".',
  ERR_NATIVE_NEEDS_TARGET: 'Build this target on a builder of that platform (bundle-dispatch --targets with a builder pool).',
  ERR_SOURCE_REFUSED: 'The builder refuses sources and outputs on link-local, loopback and private addresses; the builder\'s operator can allow a range or host name in builder.allowSources.',
  ERR_INTERNAL: 'This is a bug in bundle-dispatch. Please report it with the output of --verbose.',
};

/** The lines printed for a failure: message, hint, and the stack only with --verbose or for bugs. */
export function formatError(error: unknown, options: { verbose: boolean; secrets?: readonly string[] }): string {
  const failure = toBundleError(error);
  const lines = [`✖ ${failure.code}: ${redact(failure.message, options.secrets)}`];
  const hint = failure.hint ?? ADVICE[failure.code];
  if (hint) lines.push(`  → ${hint}`);
  if (options.verbose || failure.code === 'ERR_INTERNAL') {
    const stack = failure.code === 'ERR_INTERNAL' && failure.cause instanceof Error ? failure.cause.stack : failure.stack;
    if (stack) lines.push(redact(stack, options.secrets));
    if (options.verbose && failure.cause instanceof Error && failure.cause !== error) lines.push(`cause: ${redact(failure.cause.stack ?? failure.cause.message, options.secrets)}`);
  }
  return `${lines.join('\n')}\n`;
}

export function errorJson(error: unknown, secrets?: readonly string[]): { error: { code: string; message: string; hint?: string } } {
  const failure = toBundleError(error);
  const hint = failure.hint ?? ADVICE[failure.code];
  return { error: { code: failure.code, message: redact(failure.message, secrets), ...(hint ? { hint } : {}) } };
}
