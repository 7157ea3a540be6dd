import { createReadStream } from 'node:fs';
import { PassThrough, pipeline, type Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { BundleError } from '../errors.js';

const GZIP_MAGIC = [0x1f, 0x8b] as const;

/**
 * Returns the uncompressed bytes of `input`: when it starts with the gzip magic it is piped
 * through zlib's gunzip, otherwise the bytes pass through unchanged. Backpressure holds end to
 * end, so a gzip bomb inflates only as fast as the consumer reads. Destroying the returned
 * stream destroys `input`.
 *
 * Errors of the returned stream: a gzip header followed by garbage → `ERR_INPUT_NOT_TAR`;
 * gzip data that ends early → `ERR_INPUT_TRUNCATED`; errors of `input` itself pass through
 * unchanged. An empty input gives an empty stream (unpack then reports `ERR_INPUT_NOT_TAR`).
 * The stream may fail before its consumer attaches listeners, so it carries a no-op 'error'
 * listener: consume it with `pipeline()` or `for await`, which report a stored error.
 *
 * @example
 * const tar = maybeGunzip(response); // .tgz or plain .tar alike
 */
export function maybeGunzip(input: Readable): Readable {
  return gunzipIfNeeded(input, (error) => error);
}

/**
 * Opens a tarball (gzipped or plain) for {@link unpack}: the file's uncompressed tar bytes.
 *
 * Never throws: a missing file (`ERR_INPUT_NOT_FOUND`), a directory (`ERR_INPUT_NOT_TAR`) or
 * an unreadable file (`ERR_INPUT_UNREADABLE`) is emitted as the returned stream's error when
 * it is first read, so callers handle every input failure in one place — where they consume
 * the stream. Gzip errors are mapped as in {@link maybeGunzip}.
 *
 * @example
 * const result = await unpack(openInput('app-1.0.0.tgz'), dir, { signal });
 */
export function openInput(file: string): Readable {
  return gunzipIfNeeded(createReadStream(file), (error) => mapFileError(error, file));
}

function gunzipIfNeeded(input: Readable, mapSourceError: (error: unknown) => unknown): Readable {
  const output = new PassThrough();
  let started = false;

  const fail = (error: unknown): void => {
    output.destroy(toError(mapSourceError(error)));
  };
  const cleanup = (): void => {
    input.off('readable', start);
    input.off('end', start);
    input.off('error', fail);
    output.off('close', stopEarly);
  };
  const stopEarly = (): void => {
    if (started) return;
    cleanup();
    input.destroy();
  };
  function start(): void {
    if (started) return;
    const head = input.read(GZIP_MAGIC.length) as Buffer | null;
    if (head === null && !input.readableEnded) return; // fewer than two bytes so far
    started = true;
    cleanup();
    if (head === null) {
      output.end();
      return;
    }
    const gzipped = head.length >= 2 && head[0] === GZIP_MAGIC[0] && head[1] === GZIP_MAGIC[1];
    input.unshift(head);
    // Registered before pipeline's own listeners, so the output dies with the mapped error
    // rather than the raw one pipeline would pass along.
    input.on('error', fail);
    const gunzip = gzipped ? createGunzip() : undefined;
    gunzip?.on('error', (error: NodeJS.ErrnoException) => {
      output.destroy(isZlibError(error) ? mapGunzipError(error) : toError(mapSourceError(error)));
    });
    const done = (): void => {
      // Errors were mapped by the listeners above.
    };
    if (gunzip) pipeline(input, gunzip, output, done);
    else pipeline(input, output, done);
  }

  input.on('readable', start);
  input.on('end', start);
  input.on('error', fail);
  output.on('close', stopEarly);
  // A missing file fails before the consumer may have attached anything; an 'error' event with
  // no listener would crash the process. pipeline() and `for await` still see the stored error.
  output.on('error', () => undefined);
  return output;
}

function isZlibError(error: NodeJS.ErrnoException): boolean {
  return typeof error.code === 'string' && error.code.startsWith('Z_');
}

function mapGunzipError(error: NodeJS.ErrnoException): BundleError {
  if (error.code === 'Z_BUF_ERROR') {
    return new BundleError('ERR_INPUT_TRUNCATED',
      'The gzip-compressed input ends too early: it was cut short. Download or copy the tarball again, or re-create it with `npm pack`.',
      { cause: error });
  }
  return new BundleError('ERR_INPUT_NOT_TAR',
    `The input starts like gzip but is not a gzip file (${error.message}). Give a tarball made by \`npm pack\` (.tgz or plain .tar).`,
    { cause: error });
}

function mapFileError(error: unknown, file: string): unknown {
  if (error instanceof BundleError) return error;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  switch (code) {
    case 'ENOENT':
      return new BundleError('ERR_INPUT_NOT_FOUND', `The input file "${file}" does not exist. Check the path (it is relative to the current directory).`, { cause: error, details: { file } });
    case 'EISDIR':
      return new BundleError('ERR_INPUT_NOT_TAR', `The input "${file}" is a directory, not a tarball. Give the .tgz made by \`npm pack\`.`, { cause: error, details: { file } });
    case 'EACCES':
    case 'EPERM':
      return new BundleError('ERR_INPUT_UNREADABLE', `The input file "${file}" cannot be read (permission denied). Check its permissions.`, { cause: error, details: { file } });
    default:
      return new BundleError('ERR_INPUT_UNREADABLE', `The input file "${file}" cannot be read: ${error instanceof Error ? error.message : String(error)}.`, { cause: error, details: { file } });
  }
}

function toError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}
