import { close, closeSync, fstatSync, openSync, read, readSync, type Dirent, type Stats } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pack as createPack, type Header, type Pack } from 'tar-stream';
import { abortError, BundleError, throwIfAborted } from '../../errors.js';

/** The fixed mtime npm pack writes (npm's birthday), used when no SOURCE_DATE_EPOCH is given. */
export const NPM_EPOCH = new Date('1985-10-26T08:15:00.000Z');

export interface PackOptions {
  /** Modification time of every entry; default {@link NPM_EPOCH}. The caller maps SOURCE_DATE_EPOCH here. */
  mtime?: Date;
  signal?: AbortSignal;
  /**
   * Return false to leave a file out; for a directory, its whole subtree. `relativePath` is
   * relative to `dir` with `/` separators and no `package/` prefix; `stats` are lstat's.
   */
  filter?: (relativePath: string, stats: Stats) => boolean;
  /** Told about every entry that is not a regular file or directory and is therefore left out. */
  onSkip?: (relativePath: string, reason: string) => void;
  /**
   * Told how far the pack is, at most once per `progressIntervalMs` (default 1000): the files
   * handed to the tar so far and their bytes (contents, not tar headers), of `totalFiles`. File contents flow only as fast as the
   * consumer reads (gzip), so this is the pace of the whole pack. A pack shorter than the
   * interval is never told.
   */
  onProgress?: (progress: { files: number; bytes: number; totalFiles: number }) => void;
  progressIntervalMs?: number;
}

/** Bytes read from a large file per chunk; each chunk is handed to the tar stream, never the whole file. */
const READ_CHUNK = 256 * 1024;
/** Files up to this size are read whole, synchronously (see openFile). */
const SMALL_FILE = 128 * 1024;
/** Longest run of synchronous reads before pack yields to the event loop. */
const MAX_SYNC_MS = 10;

/**
 * Packs `dir` into an uncompressed tar under `package/`, byte-identical for identical trees.
 *
 * Like `npm pack`: regular files only, no directory entries. Entries are sorted by their path
 * in UTF-8 byte order; every entry has the same mtime (`options.mtime`, default
 * {@link NPM_EPOCH}), uid/gid 0, empty uname/gname, and mode 0o755 when the file has any
 * executable bit, else 0o644 — so neither the absolute path of `dir`, nor the file system's
 * readdir order, owners or times change a byte. Paths longer than ustar's fields get pax
 * headers (deterministic too).
 *
 * Symbolic links (and sockets, FIFOs, devices) are left out and reported through
 * `options.onSkip`: `npm install` recreates the `node_modules/.bin` links from each bundled
 * package's `bin` field, and a link could point anywhere once the bundle is unpacked elsewhere.
 *
 * Entries are written one at a time with backpressure from the consumer: a file of up to
 * 128 KiB is read whole (synchronously — see openFile), a larger one is streamed in 256 KiB
 * chunks, so memory stays small whatever the tree's size; the sorted list of paths is the only
 * thing held for the whole tree. A file that vanishes, shrinks or cannot be read ends the stream
 * with `ERR_PACK_FAILED`; an abort ends it with the signal's error (`ERR_ABORTED` /
 * `ERR_BUILD_TIMEOUT`). The walk starts at once; file contents flow only as fast as they are read.
 * The stream carries a no-op 'error' listener (it may fail before the caller attaches one):
 * consume it with `pipeline()` or `for await`, which report a stored error.
 *
 * @example
 * await pipeline(pack(dirs.package, { mtime: NPM_EPOCH, signal }), createGzip(), createWriteStream(out));
 */
export function pack(dir: string, options: PackOptions = {}): Readable {
  const { signal } = options;
  const mtime = options.mtime ?? NPM_EPOCH;
  const tar = createPack();
  const onAbort = (): void => {
    if (signal) tar.destroy(abortError(signal));
  };
  if (signal?.aborted) onAbort();
  else signal?.addEventListener('abort', onAbort, { once: true });

  const root = path.resolve(dir);
  writeTree(tar, root, mtime, options)
    .then(() => tar.finalize())
    .catch((error: unknown) => {
      if (!tar.destroyed) tar.destroy(toPackError(error, signal));
    })
    .finally(() => signal?.removeEventListener('abort', onAbort));
  // tar's iterator is taken now, as Readable.from(tar) would: it listens for tar's errors.
  const output = Readable.from(coalesce((tar as AsyncIterable<Buffer>)[Symbol.asyncIterator]()), { objectMode: false });
  // The stream may fail (abort, vanished file) before the caller attaches anything; an 'error'
  // event with no listener would crash the process. pipeline() and `for await` still see it.
  output.on('error', () => undefined);
  return output;
}

/** Bytes gathered into one chunk of the output (see coalesce). */
const OUTPUT_CHUNK = 256 * 1024;

/**
 * tar-stream pushes a 512-byte header, then the file, then its padding: thousands of small
 * chunks for a node_modules tree, and each one costs gzip (and every hash) a call through the
 * thread pool — for the express app gzip took 180 ms where the tar alone takes 25 ms. Handing
 * on chunks of about 256 KiB instead makes it ~60 ms; the bytes are the same, and so is the
 * gzip (deflate's output does not depend on how its input was split).
 */
async function* coalesce(chunks: AsyncIterator<Buffer>): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of { [Symbol.asyncIterator]: () => chunks }) {
    parts.push(chunk);
    size += chunk.length;
    if (size >= OUTPUT_CHUNK) {
      yield parts.length === 1 ? chunk : Buffer.concat(parts, size);
      parts = [];
      size = 0;
    }
  }
  if (size > 0) yield Buffer.concat(parts, size);
}

async function writeTree(tar: Pack, root: string, mtime: Date, options: PackOptions): Promise<void> {
  throwIfAborted(options.signal);
  const files: Buffer[] = [];
  await collectFiles(root, '', files, options);
  // Byte order of the UTF-8 paths: what sort() on strings does only for ASCII.
  files.sort(Buffer.compare);

  let lastYield = Date.now();
  const progressInterval = options.progressIntervalMs ?? 1000;
  let lastProgress = Date.now();
  let packedFiles = 0;
  let packedBytes = 0;
  for (const file of files) {
    throwIfAborted(options.signal);
    if (tar.destroyed) return;
    // Small files are read synchronously (below); give timers and sockets a turn regularly.
    if (Date.now() - lastYield > MAX_SYNC_MS) {
      await new Promise((resolve) => setImmediate(resolve));
      lastYield = Date.now();
    }
    const opened = openFile(root, file.toString('utf8'));
    await writeEntry(tar, opened, mtime);
    packedFiles += 1;
    packedBytes += opened.stats.size;
    if (options.onProgress && Date.now() - lastProgress >= progressInterval) {
      options.onProgress({ files: packedFiles, bytes: packedBytes, totalFiles: files.length });
      lastProgress = Date.now();
    }
  }
}

/**
 * Every regular file below `relative`, into `files` (unsorted: the caller sorts). Sibling
 * directories are listed at once (readdir on libuv's pool: on a large node_modules tree several
 * times faster than one after another); what is left out is reported sorted, so the log does not
 * depend on which listing finished first.
 */
async function collectFiles(root: string, relative: string, files: Buffer[], options: PackOptions): Promise<void> {
  const skipped: Array<{ child: string; reason: string }> = [];
  await collectBelow(root, relative, files, skipped, options);
  skipped.sort((a, b) => Buffer.compare(Buffer.from(a.child), Buffer.from(b.child)));
  for (const { child, reason } of skipped) options.onSkip?.(child, reason);
}

async function collectBelow(root: string, relative: string, files: Buffer[], skipped: Array<{ child: string; reason: string }>, options: PackOptions): Promise<void> {
  let entries: Dirent[];
  try {
    entries = await readdir(relative === '' ? root : path.join(root, relative), { withFileTypes: true });
  } catch (error) {
    throw packError(error, relative === '' ? '.' : relative);
  }
  throwIfAborted(options.signal);
  const directories: string[] = [];
  for (const entry of entries) {
    const child = relative === '' ? entry.name : `${relative}/${entry.name}`;
    if (options.filter) {
      let stats: Stats;
      try {
        stats = await lstat(path.join(root, child));
      } catch (error) {
        throw packError(error, child);
      }
      if (!options.filter(child, stats)) continue;
    }
    if (entry.isDirectory()) directories.push(child);
    else if (entry.isFile()) files.push(Buffer.from(child, 'utf8'));
    else skipped.push({ child, reason: skipReason(entry) });
  }
  await Promise.all(directories.map((child) => collectBelow(root, child, files, skipped, options)));
}

interface OpenedFile {
  relative: string;
  stats: Stats;
  /** The whole content of a small file (its descriptor already closed). */
  data?: Buffer;
  /** The open descriptor of a large file, streamed (asynchronously) and closed by writeEntry. */
  fd?: number;
}

/**
 * Opens a file and reads it whole when small. Synchronous on purpose: per-file system calls,
 * not bytes, dominate a node_modules tree, and open/fstat/read/close through the thread pool
 * cost four times as much as the calls themselves (20,000 small files: ~1.3 s async vs ~0.3 s).
 */
function openFile(root: string, relative: string): OpenedFile {
  let fd: number;
  try {
    fd = openSync(path.join(root, relative), 'r');
  } catch (error) {
    throw packError(error, relative);
  }
  let handedOver = false;
  try {
    const stats = fstatSync(fd);
    if (!stats.isFile()) throw new BundleError('ERR_PACK_FAILED', `"${relative}" stopped being a regular file while the bundle was packed. Nothing else may change the work directory during a build.`);
    if (stats.size > SMALL_FILE) {
      handedOver = true;
      return { relative, stats, fd };
    }
    const data = Buffer.allocUnsafe(stats.size);
    let position = 0;
    while (position < data.length) {
      const bytesRead = readSync(fd, data, position, data.length - position, position);
      if (bytesRead === 0) throw shrank(relative);
      position += bytesRead;
    }
    return { relative, stats, data };
  } catch (error) {
    throw packError(error, relative);
  } finally {
    if (!handedOver) closeSync(fd);
  }
}

async function writeEntry(tar: Pack, file: OpenedFile, mtime: Date): Promise<void> {
  const { relative, stats, data, fd } = file;
  try {
    const size = stats.size;
    const header: Partial<Header> & Pick<Header, 'name'> = {
      name: `package/${relative}`,
      type: 'file',
      size,
      mode: stats.mode & 0o111 ? 0o755 : 0o644,
      mtime,
      uid: 0,
      gid: 0,
      uname: '',
      gname: '',
    };
    let entryError: Error | null | undefined;
    await new Promise<void>((resolve, reject) => {
      const done = (error?: Error | null): void => {
        entryError = error;
        if (error) reject(error);
        else resolve();
      };
      // A buffered entry resolves once tar-stream has pushed it, which waits for the consumer.
      const sink = data ? tar.entry(header, data, done) : tar.entry(header, done);
      // The entry callback reports the sink's failure; without a listener its 'error' would throw.
      sink.on('error', () => undefined);
      if (fd !== undefined) {
        void copyFile(fd, sink, size, relative).catch((error: unknown) => {
          sink.destroy(error instanceof Error ? error : new Error(String(error)));
          reject(error);
        });
      }
    });
    if (entryError) throw entryError;
  } catch (error) {
    throw packError(error, relative);
  } finally {
    if (fd !== undefined) await new Promise<void>((resolve) => close(fd, () => resolve()));
  }
}

function shrank(relative: string): BundleError {
  return new BundleError('ERR_PACK_FAILED', `"${relative}" shrank while the bundle was packed. Nothing else may change the work directory during a build.`);
}

/** Streams exactly `size` bytes (the size in the header) into the entry, waiting for drain. */
async function copyFile(fd: number, sink: ReturnType<Pack['entry']>, size: number, relative: string): Promise<void> {
  let position = 0;
  while (position < size) {
    const buffer = Buffer.allocUnsafe(Math.min(READ_CHUNK, size - position));
    const bytesRead = await new Promise<number>((resolve, reject) => {
      read(fd, buffer, 0, buffer.length, position, (error, count) => (error ? reject(error) : resolve(count)));
    });
    if (bytesRead === 0) throw shrank(relative);
    position += bytesRead;
    if (sink.destroyed) return;
    if (!sink.write(bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead))) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          sink.removeListener('drain', done);
          sink.removeListener('close', done);
          resolve();
        };
        sink.on('drain', done);
        sink.on('close', done);
      });
    }
  }
  sink.end(null);
}

function skipReason(entry: Dirent): string {
  if (entry.isSymbolicLink()) return 'symbolic link (npm install recreates .bin links from package.json "bin")';
  if (entry.isFIFO()) return 'FIFO (named pipe)';
  if (entry.isSocket()) return 'socket';
  if (entry.isCharacterDevice() || entry.isBlockDevice()) return 'device file';
  return 'not a regular file';
}

function packError(error: unknown, relative: string): BundleError {
  if (error instanceof BundleError) return error;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const message = error instanceof Error ? error.message : String(error);
  const advice = code === 'ENOENT'
    ? 'It vanished while the bundle was packed; nothing else may change the work directory during a build.'
    : code === 'EACCES' || code === 'EPERM'
      ? 'It cannot be read; an install script probably changed its permissions.'
      : 'Check the work directory.';
  return new BundleError('ERR_PACK_FAILED', `Could not pack "${relative}" (${message}). ${advice}`, { cause: error, details: { file: relative } });
}

function toPackError(error: unknown, signal: AbortSignal | undefined): BundleError {
  if (signal?.aborted) return abortError(signal);
  return packError(error, '.');
}
