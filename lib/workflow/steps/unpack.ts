import { constants as fsConstants } from 'node:fs';
import { link, lstat, mkdir, open, readlink, symlink } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { extract as createExtract, type ExtractEvents, type Header } from 'tar-stream';
import { abortError, BundleError, throwIfAborted } from '../../errors.js';
import { checkPackageIdentity } from '../../package-identity.js';

/** Bounds on what one input may put on disk, checked against the tar headers before writing. */
export interface UnpackLimits {
  /** Sum of the sizes declared by all entries (file contents), in bytes. */
  maxBytes: number;
  /** Number of entries (files, directories, links), not counting pax / long-name headers. */
  maxEntries: number;
}

/**
 * 1 GiB / 100,000 entries. npm's registry refuses packages over a few hundred MB and the
 * largest real packages (typescript, @swc/core platform packages, electron's prebuilt
 * binaries) hold well under 10,000 files and 300 MB, so legitimate sources sit far below
 * these; a tar bomb is stopped long before it fills a builder's disk or inode table.
 */
export const DEFAULT_UNPACK_LIMITS: Readonly<UnpackLimits> = Object.freeze({
  maxBytes: 1024 ** 3,
  maxEntries: 100_000,
});

/** A parsed package.json: any JSON object whose `name` and `version` are non-empty strings. */
export type PackageJson = Record<string, unknown> & { name: string; version: string };

export interface UnpackResult {
  /** Entries extracted (files, directories and links, including the stripped top folder). */
  entries: number;
  /** Sum of the entry sizes declared in the headers. */
  bytes: number;
  packageJson: PackageJson;
  /** The lockfile at the package root, if any; `npm-shrinkwrap.json` wins when both exist. */
  lockfile?: 'npm-shrinkwrap.json' | 'package-lock.json';
}

export interface UnpackOptions {
  limits?: Partial<UnpackLimits>;
  signal?: AbortSignal;
}

const RECREATE = 'Re-create the tarball with `npm pack`.';
/** npm reads package.json whole; a bigger one is an attack on memory, not a manifest. */
const MAX_PACKAGE_JSON_BYTES = 16 * 1024 * 1024;
/** Header, padding and pax records an entry may legitimately add to the raw tar. */
const OVERHEAD_PER_ENTRY = 64 * 1024;
/** Raw bytes allowed beyond contents and per-entry overhead (end-of-archive blocks, slack). */
const OVERHEAD_SLACK = 16 * 1024 * 1024;
/** Symbolic links followed while checking where one symlink ends up (Linux uses 40). */
const MAX_SYMLINK_HOPS = 40;
/** Longest path or link target accepted (Linux PATH_MAX); longer ones only serve to make work. */
const MAX_PATH_BYTES = 4096;
/** Longest path component (NAME_MAX on Linux and macOS). */
const MAX_NAME_BYTES = 255;
/** Path components walked while resolving one symlink, links included, before giving up. */
const MAX_RESOLVE_STEPS = 4096;
/** Path components walked for all symlinks together: a real package has a handful of links. */
const MAX_TOTAL_RESOLVE_STEPS = 1_000_000;
const BLOCK = 512;

type Entry = ExtractEvents['entry'][1];
/** tar-stream gives `null` for type flags it does not know (GNU sparse, volume headers…). */
type EntryType = Header['type'] | null;

/**
 * Extracts an uncompressed tar (an `npm pack` tarball after gunzip) into `dir`, refusing
 * anything that could write outside it or fill the disk, and returns the package's manifest.
 *
 * The first path component of every entry is stripped, as npm does (`package/` for npm pack,
 * whatever folder other tools used). Only regular files, directories, symbolic links whose
 * target stays inside `dir` and hard links to files this archive already extracted are
 * written; files get mode 0o755 when the archive gave them any executable bit, else 0o644;
 * owners and times from the archive are ignored. Nothing is ever written through a symbolic
 * link: an entry below a symlink (`lib` → `.`, then `lib/x`) is refused.
 *
 * Limits are checked against the headers before anything of an entry is written. On any
 * failure the input is destroyed and the promise rejects with a {@link BundleError}
 * (`ERR_INPUT_NOT_TAR`, `ERR_INPUT_TRUNCATED`, `ERR_UNSAFE_PATH`, `ERR_UNSAFE_ENTRY`,
 * `ERR_INPUT_TOO_LARGE`, `ERR_NO_PACKAGE_JSON`, `ERR_BAD_PACKAGE_JSON`, `ERR_ABORTED`,
 * `ERR_DISK_FULL`); `dir` may then hold part of the archive and the caller removes it.
 * `dir` is created if missing and should be empty.
 *
 * @example
 * const { packageJson, lockfile } = await unpack(openInput('app-1.0.0.tgz'), workdir, { signal });
 */
export async function unpack(tar: Readable, dir: string, options: UnpackOptions = {}): Promise<UnpackResult> {
  const { signal } = options;
  const limits: UnpackLimits = { ...DEFAULT_UNPACK_LIMITS, ...definedOnly(options.limits ?? {}) };
  if (signal?.aborted) {
    tar.destroy();
    throw abortError(signal);
  }
  const root = path.resolve(dir);
  try {
    await mkdir(root, { recursive: true });
  } catch (error) {
    tar.destroy();
    throw new BundleError('ERR_INTERNAL', `Cannot create the directory to unpack into, "${root}": ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }

  const stats: Counters = { entries: 0, directories: 0, bytes: 0, raw: 0, lastEnd: 0, head: Buffer.alloc(0), tail: Buffer.alloc(0), drainUntil: undefined };
  const writer = new TreeWriter(root, () => {
    // Parent directories implied by deep paths are inodes too: count them against the limit.
    stats.directories += 1;
    checkEntryLimit(stats, limits);
  });
  const extract = createExtract();
  let failure: BundleError | undefined;
  const fail = (error: unknown): BundleError => {
    failure ??= toUnpackError(error, stats);
    extract.destroy(failure);
    tar.destroy();
    return failure;
  };
  const onAbort = (): void => {
    if (signal) fail(abortError(signal));
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  let parserError: unknown;
  extract.on('error', (error: unknown) => {
    parserError ??= error;
  });

  const feeding = feed(tar, extract, stats, limits).catch((error: unknown) => {
    fail(error);
  });
  try {
    for await (const entry of extract) {
      if (failure) break;
      await extractEntry(entry, writer, stats, limits, signal);
    }
    await feeding;
    if (failure) throw failure;
    throwIfAborted(signal);
    checkEndOfArchive(stats);
    await writer.checkSymlinks();
    const packageJson = await readPackageJson(root, writer.topLevelFiles);
    const lockfile = await findLockfile(root);
    return { entries: stats.entries, bytes: stats.bytes, packageJson, ...(lockfile ? { lockfile } : {}) };
  } catch (error) {
    if (!failure && stats.drainUntil !== undefined) {
      // A limit refused on headers (see refuseOverLimit): let feed() read the rest, unparsed.
      extract.destroy();
      await feeding;
    }
    if (!failure && !(error instanceof BundleError) && extract.destroying) {
      // An entry stream dies with a generic "destroyed" error; the parser's own error says why.
      if (!extract.destroyed) await new Promise<void>((resolve) => extract.once('close', () => resolve()));
      throw fail(parserError ?? error);
    }
    throw fail(error);
  } finally {
    signal?.removeEventListener('abort', onAbort);
    await feeding;
  }
}

interface Counters {
  entries: number;
  /** Directories created because a path needed them, without an entry of their own. */
  directories: number;
  bytes: number;
  /** Raw tar bytes fed to the parser so far. */
  raw: number;
  /** Offset just past the last entry's data (its padding included). */
  lastEnd: number;
  /** The first bytes of the input, to tell "not a tar" from "cut short". */
  head: Buffer;
  /** The last block of the input, to check for the end-of-archive marker. */
  tail: Buffer;
  /** Set after a limit refusal: read (and drop) the input up to this many raw bytes. */
  drainUntil: number | undefined;
}

/**
 * Returns the error for a size or entry limit passed, as judged on the headers, before the
 * data they declare. If the input itself is cut short (a gzip stream that ends early), that is
 * the real problem, and which of the two would be reported would depend on which error the
 * streams deliver first. So feed() goes on reading, without parsing, up to what an accepted
 * input with this many entries could hold: an input error on the way (ERR_INPUT_TRUNCATED)
 * wins, a clean end or the budget running out keeps this refusal.
 */
function refuseOverLimit(stats: Counters, limits: UnpackLimits, error: BundleError): BundleError {
  stats.drainUntil ??= limits.maxBytes + (stats.entries + stats.directories) * 2 * BLOCK + OVERHEAD_SLACK;
  return error;
}

/** Writes the input into the parser with backpressure; ends it when the input ends. */
async function feed(input: Readable, extract: ReturnType<typeof createExtract>, stats: Counters, limits: UnpackLimits): Promise<void> {
  for await (const data of input) {
    const chunk = Buffer.isBuffer(data) ? data : Buffer.from(data as string);
    if (chunk.length === 0) continue;
    if (stats.head.length < BLOCK) stats.head = Buffer.concat([stats.head, chunk]).subarray(0, BLOCK);
    stats.tail = chunk.length >= BLOCK ? chunk.subarray(chunk.length - BLOCK) : Buffer.concat([stats.tail, chunk]).subarray(-BLOCK);
    stats.raw += chunk.length;
    if (stats.drainUntil !== undefined) {
      if (stats.raw > stats.drainUntil) return;
      continue;
    }
    if (stats.raw > stats.bytes + (stats.entries + 1) * OVERHEAD_PER_ENTRY + OVERHEAD_SLACK) {
      throw new BundleError('ERR_INPUT_TOO_LARGE',
        `The input holds more than ${OVERHEAD_SLACK} bytes that belong to no file (padding, empty blocks or oversized headers); a well-formed tarball has almost none. ${RECREATE}`,
        { details: { rawBytes: stats.raw, limits } });
    }
    if (extract.destroyed) {
      if (stats.drainUntil !== undefined) continue;
      return;
    }
    if (!extract.write(chunk)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          extract.off('drain', done);
          extract.off('close', done);
          resolve();
        };
        extract.on('drain', done);
        extract.on('close', done);
      });
    }
    if (extract.destroyed) {
      if (stats.drainUntil !== undefined) continue;
      return;
    }
  }
  if (stats.drainUntil === undefined) extract.end(null);
}

async function extractEntry(entry: Entry, writer: TreeWriter, stats: Counters, limits: UnpackLimits, signal: AbortSignal | undefined): Promise<void> {
  throwIfAborted(signal);
  const header = entry.header;
  // tar-stream reads no data for directories, whatever size their header claims.
  const size = header.type === 'directory' ? 0 : header.size ?? 0;
  const offset = entry.offset;
  stats.lastEnd = offset + BLOCK + Math.ceil(size / BLOCK) * BLOCK;
  stats.entries += 1;
  stats.bytes += size;
  checkEntryLimit(stats, limits);
  if (stats.bytes > limits.maxBytes) {
    throw refuseOverLimit(stats, limits, new BundleError('ERR_INPUT_TOO_LARGE',
      `The input's files add up to at least ${stats.bytes} bytes (entry "${header.name}" declares ${size}), over the limit of ${limits.maxBytes} bytes for one package. Check what the tarball contains, or raise the size limit.`,
      { details: { bytes: stats.bytes, entry: header.name, limits } }));
  }

  const type = header.type as EntryType;
  if (type !== 'file' && type !== 'contiguous-file' && type !== 'directory' && type !== 'symlink' && type !== 'link') {
    throw new BundleError('ERR_UNSAFE_ENTRY',
      `Entry "${header.name}" is a ${describeType(type)}; a package may only contain files, directories and links. ${RECREATE}`,
      { details: { entry: header.name, type: type ?? 'unknown' } });
  }
  const relative = safeRelativePath(header.name, header.name);
  // npm pack names every path once. A second entry for a path would silently replace the
  // first (a second package/package.json, and its install script runs), so it is refused —
  // whatever spelling (`./`, `//`, another top folder) makes the two names one path.
  writer.claim(relative === '' ? `/${normalizedName(header.name)}` : relative, header.name);
  if (relative === '') {
    // The top folder itself (package/) or a file beside it: npm's strip drops these too.
    if (type !== 'directory' && header.name.split('/').filter((part: string) => part !== '' && part !== '.').length === 1) {
      writer.topLevelFiles.push(header.name);
    }
    await drain(entry);
    return;
  }

  switch (type) {
    case 'directory':
      await drain(entry);
      await writer.directory(relative);
      return;
    case 'symlink':
      await drain(entry);
      await writer.symlink(relative, header.name, header.linkname ?? '');
      return;
    case 'link': {
      await drain(entry);
      const target = safeRelativePath(header.linkname ?? '', header.name, 'link target');
      await writer.hardlink(relative, header.name, target, header.linkname ?? '');
      return;
    }
    default:
      await writer.file(relative, header.name, entry, (header.mode ?? 0) & 0o111 ? 0o755 : 0o644, signal);
  }
}

/** An archive name without empty and `.` components: `./package//a` → `package/a`. */
function normalizedName(name: string): string {
  return name.split('/').filter((part) => part !== '' && part !== '.').join('/');
}

function checkEntryLimit(stats: Counters, limits: UnpackLimits): void {
  if (stats.entries + stats.directories <= limits.maxEntries) return;
  throw refuseOverLimit(stats, limits, new BundleError('ERR_INPUT_TOO_LARGE',
    `The input has at least ${stats.entries + stats.directories} entries (counting the directories its paths imply), over the limit of ${limits.maxEntries} for one package. Check that the tarball holds only the package (no node_modules, build caches), or raise the entry limit.`,
    { details: { entries: stats.entries, impliedDirectories: stats.directories, limits } }));
}

/**
 * Validates an archive path and strips its first component. Refuses absolute paths, `..`,
 * backslashes, drive letters and NUL bytes anywhere in it — a Windows extractor or a later
 * `path.join` must not be able to read them as a way out.
 */
function safeRelativePath(name: string, entry: string, role: 'path' | 'link target' = 'path'): string {
  // A hard link's target is not the entry's own path: say which of the two is wrong.
  const subject = role === 'path' ? `Entry "${entry}"` : `Hard link "${entry}" → "${name}"`;
  const unsafe = (why: string): BundleError => new BundleError('ERR_UNSAFE_PATH',
    `${subject} ${why}, so it could ${role === 'path' ? 'be written' : 'reach'} outside the package. ${RECREATE}`,
    { details: role === 'path' ? { entry, path: name } : { entry, linkname: name } });
  if (name === '') throw unsafe(`has an empty ${role}`);
  if (name.includes('\0')) throw unsafe(`has a NUL byte in its ${role}`);
  if (name.includes('\\')) throw unsafe(`has a backslash (a Windows path separator) in its ${role}`);
  if (name.startsWith('/')) throw unsafe(`has the absolute ${role} "${name}"`);
  if (Buffer.byteLength(name) > MAX_PATH_BYTES) throw unsafe(`has a ${role} longer than ${MAX_PATH_BYTES} bytes`);
  const parts = name.split('/');
  for (const part of parts) {
    if (part === '..') throw unsafe(`has ".." in its ${role} "${name}"`);
    if (Buffer.byteLength(part) > MAX_NAME_BYTES) throw unsafe(`has a ${role} component longer than ${MAX_NAME_BYTES} bytes`);
    if (/^[a-zA-Z]:/.test(part)) throw unsafe(`has the drive letter "${part.slice(0, 2)}" in its ${role}`);
  }
  return parts.slice(1).filter((part) => part !== '' && part !== '.').join('/');
}

/**
 * Writes entries below `root` without ever following a symbolic link: parents are checked
 * with lstat (real directories only), files are created with O_EXCL | O_NOFOLLOW, hard links
 * may only point at regular files extracted earlier, and symlink targets are checked once the
 * whole tree exists (a later link can change where an earlier one leads).
 */
class TreeWriter {
  /** Directories known to be real directories (created or lstat-checked by us). */
  private readonly directories = new Set<string>(['']);
  /** Regular files this archive wrote, the only things a hard link may point at. */
  private readonly files = new Set<string>();
  private readonly symlinks: { relative: string; entry: string }[] = [];
  /** Archive names of top-level non-directory entries dropped by the strip (for a better hint). */
  readonly topLevelFiles: string[] = [];
  /** Every path an entry has named so far → the first entry's name (see claim()). */
  private readonly claimed = new Map<string, string>();

  /** Resolution steps left for all symlinks together (see MAX_TOTAL_RESOLVE_STEPS). */
  private resolveBudget = MAX_TOTAL_RESOLVE_STEPS;

  /** `beforeImpliedDirectory` runs before a parent directory without an entry is created; it may throw. */
  constructor(private readonly root: string, private readonly beforeImpliedDirectory: () => void) {}

  /**
   * Records that an entry names `key` (its path after the strip; `/`-prefixed for the top
   * folder and files beside it) and refuses a second entry for the same path.
   */
  claim(key: string, entry: string): void {
    const first = this.claimed.get(key);
    if (first !== undefined) {
      const shown = key.startsWith('/') ? key.slice(1) : key;
      throw new BundleError('ERR_UNSAFE_ENTRY',
        `Entry "${entry}" is a second entry for the path "${shown}" (the first was "${first}"); npm pack writes every path once, and extracting both would let one silently replace the other. ${RECREATE}`,
        { details: { entry, path: shown, first } });
    }
    this.claimed.set(key, entry);
  }

  async directory(relative: string): Promise<void> {
    await this.ensureParents(relative, relative);
    await this.makeDirectory(relative, relative);
  }

  async file(relative: string, entry: string, content: Entry, mode: number, signal: AbortSignal | undefined): Promise<void> {
    await this.ensureParents(relative, entry);
    const absolute = this.absolute(relative);
    const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW;
    const handle = await this.creating(relative, entry, () => open(absolute, flags, mode));
    try {
      for await (const chunk of content as AsyncIterable<Buffer>) {
        throwIfAborted(signal);
        let written = 0;
        while (written < chunk.length) {
          const { bytesWritten } = await handle.write(chunk, written, chunk.length - written);
          written += bytesWritten;
        }
      }
      // open() applied the umask; the archive's normalized mode is what npm would install.
      await handle.chmod(mode);
    } finally {
      await handle.close();
    }
    this.files.add(relative);
  }

  async symlink(relative: string, entry: string, target: string): Promise<void> {
    const outside = (why: string): BundleError => new BundleError('ERR_UNSAFE_PATH',
      `Symbolic link "${entry}" → "${target}" ${why}. ${RECREATE}`,
      { details: { entry, linkname: target } });
    if (target === '') throw outside('has an empty target');
    if (target.includes('\0') || target.includes('\\')) throw outside('has a NUL byte or backslash in its target');
    if (Buffer.byteLength(target) > MAX_PATH_BYTES) throw outside(`has a target longer than ${MAX_PATH_BYTES} bytes`);
    if (path.posix.isAbsolute(target) || /^[a-zA-Z]:/.test(target)) throw outside('points to an absolute path outside the package');
    const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(relative), target));
    if (resolved === '..' || resolved.startsWith('../')) throw outside('points outside the package');
    await this.ensureParents(relative, entry);
    await this.creating(relative, entry, () => symlink(target, this.absolute(relative)));
    this.symlinks.push({ relative, entry });
  }

  async hardlink(relative: string, entry: string, target: string, linkname: string): Promise<void> {
    if (!this.files.has(target)) {
      throw new BundleError('ERR_UNSAFE_PATH',
        `Hard link "${entry}" → "${linkname}" does not point at a file extracted before it from this archive; hard links may only join files inside the package. ${RECREATE}`,
        { details: { entry, linkname } });
    }
    const stats = await lstat(this.absolute(target));
    if (!stats.isFile()) {
      throw new BundleError('ERR_UNSAFE_PATH', `Hard link "${entry}" → "${linkname}" does not point at a regular file. ${RECREATE}`, { details: { entry, linkname } });
    }
    await this.ensureParents(relative, entry);
    await this.creating(relative, entry, () => link(this.absolute(target), this.absolute(relative)));
    this.files.add(relative);
  }

  /** Resolves every symlink against the finished tree, following links, and refuses escapes. */
  async checkSymlinks(): Promise<void> {
    for (const { relative, entry } of this.symlinks) {
      let stats;
      try {
        stats = await lstat(this.absolute(relative));
      } catch {
        continue;
      }
      if (!stats.isSymbolicLink()) continue; // nothing replaces an entry (claim()), but never follow a non-link
      const verdict = await this.resolveInside(relative);
      if (verdict !== 'inside') {
        throw new BundleError('ERR_UNSAFE_PATH',
          `Symbolic link "${entry}" ${verdict === 'loop' ? 'is part of a loop of links' : 'leads outside the package through other links in the archive'}. ${RECREATE}`,
          { details: { entry } });
      }
    }
  }

  private async resolveInside(relative: string): Promise<'inside' | 'outside' | 'loop'> {
    const stack = relative.split('/');
    stack.pop();
    let pending = (await readlink(this.absolute(relative))).split('/');
    if (path.posix.isAbsolute(pending.join('/'))) return 'outside';
    let hops = 0;
    let steps = 0;
    while (pending.length > 0) {
      if (++steps > MAX_RESOLVE_STEPS) return 'loop';
      if (--this.resolveBudget < 0) {
        throw new BundleError('ERR_INPUT_TOO_LARGE', `The archive's symbolic links take too long to check (over ${MAX_TOTAL_RESOLVE_STEPS} steps); a package needs few links. ${RECREATE}`);
      }
      const part = pending.shift() as string;
      if (part === '' || part === '.') continue;
      if (part === '..') {
        if (stack.length === 0) return 'outside';
        stack.pop();
        continue;
      }
      stack.push(part);
      let isLink = false;
      try {
        isLink = (await lstat(this.absolute(stack.join('/')))).isSymbolicLink();
      } catch {
        // Missing: the rest is resolved by name, which is what a later creator would get.
      }
      if (!isLink) continue;
      if (++hops > MAX_SYMLINK_HOPS) return 'loop';
      const target = await readlink(this.absolute(stack.join('/')));
      if (path.posix.isAbsolute(target) || target.includes('\\')) return 'outside';
      stack.pop();
      pending = [...target.split('/'), ...pending];
    }
    return 'inside';
  }

  private absolute(relative: string): string {
    return relative === '' ? this.root : path.join(this.root, ...relative.split('/'));
  }

  private async ensureParents(relative: string, entry: string): Promise<void> {
    // Walk up only until a known directory: the common case (parent seen before) costs one lookup.
    const missing: string[] = [];
    for (let slash = relative.lastIndexOf('/'); slash > 0; slash = relative.lastIndexOf('/', slash - 1)) {
      const parent = relative.slice(0, slash);
      if (this.directories.has(parent)) break;
      missing.push(parent);
    }
    for (const parent of missing.reverse()) await this.makeDirectory(parent, entry, true);
  }

  private async makeDirectory(relative: string, entry: string, implied = false): Promise<void> {
    if (this.directories.has(relative)) return;
    const absolute = this.absolute(relative);
    try {
      if (implied) this.beforeImpliedDirectory();
      await mkdir(absolute, { mode: 0o755 });
    } catch (error) {
      if (errorCode(error) !== 'EEXIST') throw error;
      // lstat, not stat: an existing symlink (even one to a directory inside) is not a way in.
      const stats = await lstat(absolute);
      if (stats.isSymbolicLink()) {
        throw new BundleError('ERR_UNSAFE_PATH',
          `Entry "${entry}" would be written through the symbolic link "${relative}"; links are never followed while extracting. ${RECREATE}`,
          { details: { entry, symlink: relative } });
      }
      if (!stats.isDirectory()) {
        throw new BundleError('ERR_UNSAFE_ENTRY',
          `Entry "${entry}" needs "${relative}" to be a directory, but the archive already put a file there. ${RECREATE}`,
          { details: { entry, conflict: relative } });
      }
    }
    this.directories.add(relative);
  }

  /**
   * Creates a non-directory, never replacing anything. Something already there is a directory
   * a deeper path implied, or — claim() having refused exact duplicates — a name that this
   * file system folds into an earlier one (case, Unicode normalization): refused either way.
   */
  private async creating<T>(relative: string, entry: string, create: () => Promise<T>): Promise<T> {
    try {
      return await create();
    } catch (error) {
      if (errorCode(error) !== 'EEXIST') throw error;
    }
    const stats = await lstat(this.absolute(relative));
    throw new BundleError('ERR_UNSAFE_ENTRY',
      stats.isDirectory()
        ? `Entry "${entry}" would replace the directory "${relative}" that the archive created earlier. ${RECREATE}`
        : `Entry "${entry}" lands on "${relative}", which an earlier entry already created (this file system treats the two names as one). ${RECREATE}`,
      { details: { entry, conflict: relative } });
  }
}

function checkEndOfArchive(stats: Counters): void {
  if (stats.raw === 0) {
    throw new BundleError('ERR_INPUT_NOT_TAR', 'The input is empty, not a tar archive. Give the path of a tarball made by `npm pack`.');
  }
  // A tar ends with zero blocks; without one, the input was cut at a block boundary.
  if (stats.raw < stats.lastEnd + BLOCK || !stats.tail.every((byte) => byte === 0)) {
    throw new BundleError('ERR_INPUT_TRUNCATED',
      `The tar archive ends after ${stats.raw} bytes without its end-of-archive marker: it was cut short. Download or copy the tarball again, or re-create it with \`npm pack\`.`,
      { details: { bytes: stats.raw } });
  }
}

async function readPackageJson(root: string, topLevelFiles: readonly string[]): Promise<PackageJson> {
  const file = path.join(root, 'package.json');
  let stats;
  try {
    stats = await lstat(file);
  } catch (error) {
    if (errorCode(error) !== 'ENOENT') throw error;
    const beside = topLevelFiles.find((name) => name.replace(/^\.\//, '') === 'package.json');
    throw new BundleError('ERR_NO_PACKAGE_JSON',
      beside
        ? 'The archive has package.json at its top level, but a package tarball keeps everything in one folder (npm pack uses "package/"), which is stripped. Re-create the tarball with `npm pack`.'
        : 'The archive has no package.json in its top folder (expected "package/package.json"). Give a tarball made by `npm pack` of a directory with a package.json.',
      { ...(topLevelFiles.length > 0 ? { details: { topLevelFiles } } : {}) });
  }
  if (!stats.isFile()) {
    throw new BundleError('ERR_BAD_PACKAGE_JSON', `package.json in the archive is ${stats.isSymbolicLink() ? 'a symbolic link' : 'not a regular file'}. ${RECREATE}`);
  }
  if (stats.size > MAX_PACKAGE_JSON_BYTES) {
    throw new BundleError('ERR_BAD_PACKAGE_JSON', `package.json is ${stats.size} bytes, more than any real manifest (limit ${MAX_PACKAGE_JSON_BYTES}). Check the package's package.json.`);
  }
  const handle = await open(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  let text: string;
  try {
    text = await handle.readFile('utf8');
  } finally {
    await handle.close();
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (error) {
    throw new BundleError('ERR_BAD_PACKAGE_JSON',
      `package.json is not valid JSON (${error instanceof Error ? error.message : String(error)}). Fix the package's package.json and pack it again.`,
      { cause: error });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new BundleError('ERR_BAD_PACKAGE_JSON', 'package.json must hold a JSON object. Fix the package\'s package.json and pack it again.');
  }
  const manifest = parsed as Record<string, unknown>;
  for (const field of ['name', 'version'] as const) {
    const value = manifest[field];
    if (typeof value !== 'string' || value.trim() === '') {
      throw new BundleError('ERR_BAD_PACKAGE_JSON',
        `package.json has ${value === undefined ? 'no' : 'an invalid'} "${field}" (a non-empty string is required). Set "${field}" in package.json and pack it again.`,
        { details: { field } });
    }
  }
  // Name and version become file names and destination keys: `../../x` must stop here.
  checkPackageIdentity(manifest as PackageJson);
  return manifest as PackageJson;
}

async function findLockfile(root: string): Promise<UnpackResult['lockfile']> {
  for (const name of ['npm-shrinkwrap.json', 'package-lock.json'] as const) {
    try {
      if ((await lstat(path.join(root, name))).isFile()) return name;
    } catch {
      // absent
    }
  }
  return undefined;
}

async function drain(entry: Entry): Promise<void> {
  for await (const _chunk of entry as AsyncIterable<Buffer>) {
    // Link and directory entries normally have no data; whatever they declare is skipped.
  }
}

function describeType(type: EntryType): string {
  switch (type) {
    case 'character-device': return 'character device';
    case 'block-device': return 'block device';
    case 'fifo': return 'FIFO (named pipe)';
    default: return `tar entry of an unsupported type (${type ?? 'unknown'})`;
  }
}

function definedOnly(limits: Partial<UnpackLimits>): Partial<UnpackLimits> {
  return Object.fromEntries(Object.entries(limits).filter(([, value]) => value !== undefined));
}

function errorCode(error: unknown): string | undefined {
  return typeof error === 'object' && error !== null && 'code' in error ? String((error as { code: unknown }).code) : undefined;
}

/** Maps tar-stream's and the file system's errors to coded errors a person can act on. */
function toUnpackError(error: unknown, stats: Counters): BundleError {
  if (error instanceof BundleError) return error;
  const message = error instanceof Error ? error.message : String(error);
  const code = errorCode(error);
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new BundleError('ERR_DISK_FULL', `The disk filled up while extracting the input (${message}). Free space in the work directory, or lower the unpack limits.`, { cause: error });
  }
  if (code === 'ENAMETOOLONG' || code === 'ELOOP') {
    return new BundleError('ERR_UNSAFE_PATH', `An entry's path cannot be created in the work directory (${message}). ${RECREATE}`, { cause: error });
  }
  const gzipped = stats.head[0] === 0x1f && stats.head[1] === 0x8b;
  if (message.startsWith('Invalid tar header') || message === 'Invalid header' || (message === 'Unexpected end of data' && stats.entries === 0 && !looksLikeTar(stats.head))) {
    if (gzipped) {
      return new BundleError('ERR_INPUT_NOT_TAR', 'The input is gzip-compressed, but this step expects an uncompressed tar. Pass it through maybeGunzip() / openInput() first.', { cause: error });
    }
    return stats.entries === 0
      ? new BundleError('ERR_INPUT_NOT_TAR', `The input is not a tar archive (${message}). Give a tarball made by \`npm pack\` (.tgz or plain .tar).`, { cause: error })
      : new BundleError('ERR_INPUT_NOT_TAR', `The tar archive is corrupt after entry ${stats.entries} (${message}). Download or copy the tarball again, or re-create it with \`npm pack\`.`, { cause: error });
  }
  if (message === 'Unexpected end of data') {
    return new BundleError('ERR_INPUT_TRUNCATED', `The tar archive ends in the middle of an entry after ${stats.raw} bytes: it was cut short. Download or copy the tarball again, or re-create it with \`npm pack\`.`, { cause: error });
  }
  if (message === 'Header exceeds max size') {
    return new BundleError('ERR_INPUT_TOO_LARGE', `The tar archive has a pax or long-name header over 4 MiB, far beyond any real path. ${RECREATE}`, { cause: error });
  }
  return new BundleError('ERR_INTERNAL', `Extracting the input failed: ${message}`, { cause: error });
}

function looksLikeTar(head: Buffer): boolean {
  return head.length >= 262 && head.subarray(257, 262).toString('latin1') === 'ustar';
}
