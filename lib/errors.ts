/**
 * The one error type of bundle-dispatch. Every expected failure becomes a BundleError with a
 * stable `code` that callers, tests and the CLI's advice table branch on; `cause` keeps the
 * original error for `--verbose`.
 */
export type ErrorCode =
  // input
  | 'ERR_INPUT_NOT_FOUND'
  | 'ERR_INPUT_NOT_TAR'
  | 'ERR_INPUT_TRUNCATED'
  | 'ERR_UNSAFE_PATH'
  | 'ERR_UNSAFE_ENTRY'
  | 'ERR_INPUT_TOO_LARGE'
  | 'ERR_INPUT_UNREADABLE'
  | 'ERR_NO_PACKAGE_JSON'
  | 'ERR_BAD_PACKAGE_JSON'
  | 'ERR_PACKAGE_INVALID'
  // workflow
  | 'ERR_HOOK_FAILED'
  | 'ERR_HOOK_UNKNOWN'
  | 'ERR_HOOK_MODULE'
  | 'ERR_ENGINES_UNSATISFIED'
  | 'ERR_RUNTIME_FETCH'
  | 'ERR_RUNTIME_UNAVAILABLE'
  | 'ERR_NPM_FAILED'
  | 'ERR_NPM_PACKAGE_NOT_FOUND'
  | 'ERR_LOCKFILE_OUT_OF_SYNC'
  | 'ERR_NATIVE_NEEDS_TARGET'
  | 'ERR_NATIVE_VERIFY'
  | 'ERR_NATIVE_BUILD'
  | 'ERR_SANDBOX_UNAVAILABLE'
  | 'ERR_PLATFORM_PACKAGE_MISSING'
  | 'ERR_PACK_FAILED'
  | 'ERR_ABORTED'
  | 'ERR_BUILD_TIMEOUT'
  // storage
  | 'ERR_STORE_KEY'
  | 'ERR_STORE_AUTH'
  | 'ERR_STORE_NOT_FOUND'
  | 'ERR_STORE_EXISTS'
  | 'ERR_STORE_IO'
  | 'ERR_STORE_URL'
  | 'ERR_INTEGRITY'
  // config / usage
  | 'ERR_USAGE'
  | 'ERR_CONFIG'
  | 'ERR_OUTPUT'
  // builder / dispatch
  | 'ERR_BUILDER_RESTARTED'
  | 'ERR_REQUEST_INVALID'
  | 'ERR_REQUEST_TOO_LARGE'
  | 'ERR_UNAUTHORIZED'
  | 'ERR_BUILD_NOT_FOUND'
  | 'ERR_BUILDER_STOPPING'
  | 'ERR_BUILD_HANDED_BACK'
  | 'ERR_BUILDER_BUSY'
  | 'ERR_BUILDER_UNREACHABLE'
  | 'ERR_BUILDER_REJECTED'
  | 'ERR_TARGET_UNSUPPORTED'
  | 'ERR_SOURCE_FETCH'
  | 'ERR_SOURCE_REFUSED'
  | 'ERR_DISK_FULL'
  | 'ERR_LOCKED'
  | 'ERR_BUILD_LOST'
  | 'ERR_CANCEL_TIMEOUT'
  // provenance (lib/provenance/)
  | 'ERR_PROVENANCE_MISSING'
  | 'ERR_PROVENANCE_MALFORMED'
  | 'ERR_PROVENANCE_PAYLOAD_TYPE'
  | 'ERR_PROVENANCE_UNSIGNED'
  | 'ERR_PROVENANCE_UNTRUSTED_KEY'
  | 'ERR_PROVENANCE_SIGNATURE'
  | 'ERR_PROVENANCE_PREDICATE'
  | 'ERR_PROVENANCE_SUBJECT'
  | 'ERR_PROVENANCE_DIGEST'
  | 'ERR_PROVENANCE_SOURCE'
  | 'ERR_PROVENANCE_TARGET'
  | 'ERR_PROVENANCE_BUILDER'
  | 'ERR_INTERNAL';

export interface BundleErrorOptions {
  cause?: unknown;
  /** What the user can do about it; the CLI prints it under the message. */
  hint?: string;
  /** Extra machine-readable facts (package names, paths) for --json and build records. */
  details?: Record<string, unknown>;
}

export class BundleError extends Error {
  override readonly name = 'BundleError';
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: BundleErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.hint = options.hint;
    this.details = options.details;
  }

  toJSON(): { code: ErrorCode; message: string; hint?: string; details?: Record<string, unknown> } {
    return {
      code: this.code,
      message: this.message,
      ...(this.hint ? { hint: this.hint } : {}),
      ...(this.details ? { details: this.details } : {}),
    };
  }
}

export function isBundleError(error: unknown, code?: ErrorCode): error is BundleError {
  return error instanceof BundleError && (code === undefined || error.code === code);
}

/**
 * Turns whatever was thrown into a BundleError. Aborts keep their meaning (timeout vs cancel,
 * told apart by the signal's reason as got does); anything unknown becomes ERR_INTERNAL.
 */
export function toBundleError(error: unknown, signal?: AbortSignal): BundleError {
  if (error instanceof BundleError) return error;
  if (signal?.aborted) return abortError(signal);
  if (error instanceof Error && error.name === 'AbortError') {
    return new BundleError('ERR_ABORTED', 'The build was cancelled.', { cause: error });
  }
  const message = error instanceof Error ? error.message : String(error);
  return new BundleError('ERR_INTERNAL', message, { cause: error });
}

/** The error that an aborted signal stands for: a timeout reason keeps its code. */
export function abortError(signal: AbortSignal): BundleError {
  const reason: unknown = signal.reason;
  if (reason instanceof BundleError) return reason;
  if (reason instanceof Error && reason.name === 'TimeoutError') {
    return new BundleError('ERR_BUILD_TIMEOUT', 'The build took longer than its time limit.', { cause: reason });
  }
  return new BundleError('ERR_ABORTED', 'The build was cancelled.', { cause: reason });
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}
