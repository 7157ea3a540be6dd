import { access, lstat, opendir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BundleError, throwIfAborted } from '../../errors.js';
import { formatTarget, normalizeTarget } from '../../target.js';
import type { Target, TargetCpu } from '../../target.js';
import { readBinaryHeader } from '../binary-header.js';
import { checkMachO } from '../macho.js';
import { beyondNodeApi, checkPeImports } from '../pe.js';
import type { BinaryHeader } from '../binary-header.js';
import { runCommand, type RunAs } from '../runtime-registry.js';
import { prebuildServes } from './prebuilds.js';
import { wineEnv, windowsPath, withPrefix } from '../wine.js';
import type { LogFn } from '../runtime-registry.js';
import type { Runtime } from './runtime.js';

/**
 * The verify step: what was installed really runs on the target. Nothing here trusts npm's
 * resolution — headers are read, addons are loaded, the lockfile is compared with the disk.
 */

const BITS: Record<TargetCpu, 32 | 64> = { x64: 64, arm64: 64, ppc64: 64, s390x: 64, riscv64: 64, loong64: 64, arm: 32, ia32: 32 };

/** Byte order of each CPU as Node builds for it (ppc64 is ppc64le on Linux, the only os we read ELF for). */
const ENDIAN: Record<TargetCpu, 'little' | 'big'> = { x64: 'little', arm64: 'little', ppc64: 'little', riscv64: 'little', loong64: 'little', arm: 'little', ia32: 'little', s390x: 'big' };

/** Files worth a header read even without an exec bit: shared libraries travel without one. */
const LIBRARY_NAME = /\.(node|so(\.\d+)*|dylib|dll|exe)$/i;

export interface VerifyNativeOptions {
  /** The package directory: its own files and all of `node_modules` are checked. */
  dir: string;
  target: Target;
  runtime: Runtime;
  /** Every `.node` file is also loaded under `runtime.nodePath` (directly, or through `launch`). */
  canExecute: boolean;
  /** How to start the target's Node when this machine cannot exec it directly (an emulator). */
  launch?: (program: string, args: string[]) => { command: string; args: string[] };
  /** The env of the child that loads the addons (the build's filtered env). */
  env?: NodeJS.ProcessEnv;
  /** Load the addons as this user (their init code is untrusted). */
  runAs?: RunAs;
  /** Wraps the loading child's command line (the build's sandbox). */
  wrap?: (command: string, args: string[]) => Promise<{ command: string; args: string[] }>;
  /**
   * A win32 target: load under the target's Windows Node (`nodeExe`) through Wine, with the
   * prefix `prefix`; `scratch` is a writable directory for the loader's list and report.
   */
  wine?: {
    command: string; prefix: string; nodeExe: string; scratch: string;
    /**
     * The version of `nodeExe` when it is not the target's (which does not start under this Wine):
     * then only addons taking nothing but Node-API from node.exe (ABI-stable) are loaded with it.
     */
    nodeApiFallback?: string;
  };
  /**
   * A win32 target: the names the target's own node.exe exports. Every PE binary's imports from
   * node.exe (eager or delay-loaded) must be among them, and none may need a MinGW runtime DLL
   * it does not ship beside it.
   */
  windowsExports?: ReadonlySet<string>;
  /**
   * A darwin target: every Mach-O binary is checked by its structure (lib/workflow/macho.ts),
   * its Node imports against `nodeExports` (the target Node binary's exports) when given.
   */
  darwin?: { nodeMajor: number; nodeExports?: ReadonlySet<string> };
  signal?: AbortSignal;
  log?: LogFn;
}

export interface VerifyNativeResult {
  /** `.node` files that were checked (and loaded, when `canExecute`), relative to `dir`, sorted. */
  nativeFiles: string[];
  /** Other binaries (executables, shared libraries) whose headers were checked. */
  executables: string[];
  /**
   * Binaries shipped for another platform, chosen by their package at run time: in a
   * `prebuilds/` folder (better-sqlite3 ≥ 13, prebuildify) or under a path naming another
   * platform (`7zip-bin/linux/x64/7za`), outside platform packages. Reported, not loaded,
   * never failing the build.
   */
  foreign: string[];
  /** The addons were loaded (natively, emulated or under Wine), not only their headers checked. */
  loaded: boolean;
  /** darwin: every Mach-O binary passed the structural checks, its Node symbols included. */
  structure?: boolean;
}

/**
 * Checks every binary under `dir`: `.node` files anywhere, and every file with an exec bit
 * or a shared-library name that has an ELF/Mach-O/PE header. Format and cpu must match the
 * target (ELF for linux, Mach-O for darwin, PE for win32; a fat Mach-O must contain the cpu);
 * on linux the interpreter and needed libraries must match the libc (static binaries pass).
 * When `canExecute`, every `.node` file is then loaded with `process.dlopen` in a child
 * process of the chosen runtime. Any mismatch → `ERR_NATIVE_VERIFY` naming the file.
 *
 * @example
 * const { nativeFiles } = await verifyNative({ dir, target, runtime, canExecute: true, env, signal });
 */
export async function verifyNative(options: VerifyNativeOptions): Promise<VerifyNativeResult> {
  const { dir, signal, log } = options;
  const target = normalizeTarget(options.target);
  const nativeFiles: string[] = [];
  const executables: string[] = [];
  const foreign: string[] = [];
  const problems: Array<{ file: string; problem: string }> = [];
  const packageCache = new Map<string, Promise<boolean>>();

  for await (const file of walk(dir, signal)) {
    const isAddon = file.relative.endsWith('.node');
    if (!isAddon && !file.executable && !LIBRARY_NAME.test(file.relative)) continue;
    // A prebuild whose folder or libc tag names another platform is never loaded, whatever its
    // header says (a FreeBSD x64 ELF looks like a Linux one but for its OS ABI byte).
    if (prebuildServes(file.relative, target) === false) {
      foreign.push(file.relative);
      continue;
    }
    const header = await readBinaryHeader(file.absolute);
    if (header.format === 'unknown') {
      if (isAddon) problems.push({ file: file.relative, problem: 'is not an ELF, Mach-O or PE binary' });
      continue; // scripts with an exec bit, text files named *.so.1, …
    }
    let problem = checkHeader(header, target);
    if (problem && (await isShippedForOtherPlatform(dir, file.relative, header, target, packageCache))) {
      foreign.push(file.relative);
      continue;
    }
    if (!problem && header.format === 'pe' && options.windowsExports) problem = await checkPeImports(file.absolute, options.windowsExports, options.runtime.version);
    if (!problem && (header.format === 'macho' || header.format === 'macho-fat') && options.darwin) {
      const found = await checkMachO(file.absolute, { target: { cpu: target.cpu }, nodeMajor: options.darwin.nodeMajor, addon: isAddon, ...(options.darwin.nodeExports ? { nodeExports: options.darwin.nodeExports } : {}) });
      if (found.length > 0) problem = found.join('; ');
    }
    if (problem) problems.push({ file: file.relative, problem });
    else if (isAddon) nativeFiles.push(file.relative);
    else executables.push(file.relative);
  }
  // The walk's order depends on the file system: sort so messages and results are stable.
  nativeFiles.sort();
  executables.sort();
  foreign.sort();
  problems.sort((a, b) => a.file.localeCompare(b.file));
  if (foreign.length > 0) log?.(`Binaries their packages ship for other platforms, left as they are: ${foreign.join(', ')}`, { event: 'verify.foreign', files: foreign });
  if (problems.length > 0) throw verifyError(problems, target);

  let canExecute = options.canExecute;
  const fallback = options.wine?.nodeApiFallback;
  if (canExecute && fallback && nativeFiles.length > 0) {
    const beyond = await beyondNodeApi(dir, nativeFiles);
    if (beyond.length > 0) {
      canExecute = false;
      log?.(`Not loaded under Windows Node ${fallback}: ${beyond.join(', ')} ${beyond.length === 1 ? 'takes' : 'take'} more than Node-API from node.exe, so only Node ${options.runtime.version}'s own node.exe could prove ${beyond.length === 1 ? 'it' : 'them'}; checked by headers and imports`, { event: 'verify.wine-skipped', files: beyond });
    }
  }
  if (canExecute && nativeFiles.length > 0) {
    await loadAddons({ ...options, nativeFiles });
    log?.(`${nativeFiles.length} native addon(s) load under Node ${fallback ?? options.runtime.version}${options.launch ? ` (${formatTarget(target, { withNode: false })}, emulated)` : ''}`, { event: 'verify.loaded', files: nativeFiles, emulated: options.launch !== undefined });
  }
  log?.(`Binaries match ${formatTarget(target, { withNode: false })}: ${nativeFiles.length} addon(s), ${executables.length} other`, { event: 'verify.headers' });
  const structure = options.darwin?.nodeExports !== undefined && nativeFiles.length > 0;
  if (structure) log?.(`${nativeFiles.length} addon(s) verified by structure for ${formatTarget(target, { withNode: false })} (cpu slice, file type, minimum macOS, libraries, code signature, Node symbols), not run: nothing here runs macOS code`, { event: 'verify.structure', files: nativeFiles });
  return { nativeFiles, executables, foreign, loaded: canExecute && nativeFiles.length > 0, ...(options.darwin ? { structure } : {}) };
}

/** Why a header does not fit the target, or undefined when it does. */
export function checkHeader(header: BinaryHeader, target: Target): string | undefined {
  const expectedFormat = target.os === 'darwin' ? 'Mach-O' : target.os === 'win32' ? 'PE' : 'ELF';
  const expected = `${expectedFormat} ${target.cpu}${target.os === 'linux' ? ` (${target.libc ?? 'glibc'})` : ''}`;
  const found = describeHeader(header);
  const mismatch = (what: string) => `${what}: found ${found}, expected ${expected}`;
  if (expectedFormat === 'Mach-O') {
    if (header.format === 'macho-fat') return header.cpus?.includes(target.cpu) ? undefined : mismatch('universal binary without the target cpu');
    if (header.format !== 'macho') return mismatch('wrong format');
  } else if (header.format !== (expectedFormat === 'PE' ? 'pe' : 'elf')) {
    return mismatch('wrong format');
  }
  if (header.format === 'elf' && header.osabi && target.os !== header.osabi) return mismatch(`built for ${OS_NAMES[header.osabi] ?? header.osabi} (ELF OS ABI)`);
  if (header.cpu !== target.cpu) return mismatch('wrong cpu');
  if (header.bits !== undefined && header.bits !== BITS[target.cpu]) return mismatch(`${header.bits}-bit binary`);
  if (header.endian !== undefined && header.endian !== ENDIAN[target.cpu]) return mismatch(`${header.endian}-endian binary`);
  if (target.os === 'linux') {
    const libc = libcOf(header);
    if (libc && libc !== (target.libc ?? 'glibc')) return mismatch('wrong libc');
  }
  return undefined;
}

const OS_NAMES: Record<string, string> = { freebsd: 'FreeBSD', openbsd: 'OpenBSD', netbsd: 'NetBSD', solaris: 'Solaris', aix: 'AIX', hpux: 'HP-UX' };

/** glibc or musl by the ELF interpreter and needed libraries; undefined for static binaries and addons that need no libc. */
export function libcOf(header: BinaryHeader): 'glibc' | 'musl' | undefined {
  const names = [header.interpreter ?? '', ...(header.needed ?? [])].map((n) => path.posix.basename(n));
  // musl: /lib/ld-musl-<arch>.so.1, Alpine's libc.musl-<arch>.so.1, or a plain libc.so soname.
  if (names.some((n) => n.startsWith('ld-musl-') || n.startsWith('libc.musl-') || n === 'libc.so')) return 'musl';
  // glibc: ld-linux*.so.*, ld64.so.* and the versioned glibc sonames.
  if (names.some((n) => /^(ld-linux.*\.so\.\d|ld64\.so\.\d|ld\.so\.\d|libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1)$/.test(n))) return 'glibc';
  return undefined;
}

function describeHeader(header: BinaryHeader): string {
  const format = { elf: 'ELF', macho: 'Mach-O', 'macho-fat': 'universal Mach-O', pe: 'PE', unknown: 'unknown' }[header.format];
  const cpu = header.format === 'macho-fat' ? (header.cpus ?? []).join('+') : (header.cpu ?? '?');
  const libc = header.format === 'elf' ? libcOf(header) : undefined;
  const bits = header.bits && header.format === 'elf' ? ` ${header.bits}-bit` : '';
  return `${format} ${cpu}${bits}${libc ? ` (${libc}${header.interpreter ? `, ${header.interpreter}` : ''})` : ''}`;
}

const OS_TOKENS: Record<string, string> = {
  linux: 'linux', linuxmusl: 'linux', darwin: 'darwin', mac: 'darwin', macos: 'darwin', osx: 'darwin',
  win: 'win32', win32: 'win32', win64: 'win32', windows: 'win32', freebsd: 'freebsd', openbsd: 'openbsd', sunos: 'sunos', aix: 'aix',
};
const CPU_TOKENS: Record<string, string> = {
  x64: 'x64', x86_64: 'x64', amd64: 'x64', arm64: 'arm64', aarch64: 'arm64', ia32: 'ia32', x86: 'ia32', i386: 'ia32',
  arm: 'arm', armv7: 'arm', armv7l: 'arm', armhf: 'arm', ppc64: 'ppc64', ppc64le: 'ppc64', s390x: 's390x', riscv64: 'riscv64', loong64: 'loong64',
};

/** Does a path inside a package name another platform (`prebuilds/linux-arm64/`, `mac/x64/7za`, `bin/win32/`)? */
export function pathNamesOtherPlatform(relative: string, target: Target): boolean {
  const t = normalizeTarget(target);
  const tokens = relative.toLowerCase().split(/[\\/.+-]/);
  return tokens.some((token) => {
    const os = OS_TOKENS[token];
    if (os && os !== t.os) return true;
    const cpu = CPU_TOKENS[token];
    if (cpu && cpu !== t.cpu) return true;
    if (t.os === 'linux' && (token === 'musl' || token === 'linuxmusl')) return t.libc !== 'musl';
    if (t.os === 'linux' && (token === 'glibc' || token === 'gnu')) return t.libc === 'musl';
    return false;
  });
}

/**
 * A mismatching binary is *foreign* — shipped for another platform and chosen at run time,
 * so left alone — when it sits in a `prebuilds/` folder, when its path inside a package
 * names another platform, or when it is a Windows PE file in a bundle for another os. Never inside a platform package (one whose package.json has
 * `os`/`cpu`/`libc`): npm picked that one for this target, so everything in it must fit.
 */
async function isShippedForOtherPlatform(dir: string, relative: string, header: BinaryHeader, target: Target, cache: Map<string, Promise<boolean>>): Promise<boolean> {
  const parts = relative.split(/[\\/]/);
  let at = parts.lastIndexOf('node_modules');
  let packageDir = '';
  if (at !== -1) {
    const scoped = parts[at + 1]?.startsWith('@') ? 2 : 1;
    packageDir = parts.slice(0, at + 1 + scoped).join('/');
    at += scoped;
  }
  const inside = parts.slice(at + 1).join('/');
  // Builders run on linux and macOS only, so a PE file in a non-Windows bundle was shipped by
  // its package (node-notifier's snoretoast-x64.exe), never built or downloaded here.
  const windowsOnly = header.format === 'pe' && target.os !== 'win32';
  if (!windowsOnly && !inside.split('/').includes('prebuilds') && !pathNamesOtherPlatform(inside, target)) return false;
  let declares = cache.get(packageDir);
  if (!declares) {
    declares = readFile(path.join(dir, packageDir, 'package.json'), 'utf8').then(
      (text) => {
        const pkg = JSON.parse(text) as { os?: unknown; cpu?: unknown; libc?: unknown };
        return pkg.os !== undefined || pkg.cpu !== undefined || pkg.libc !== undefined;
      },
      () => false,
    );
    cache.set(packageDir, declares);
  }
  return !(await declares);
}

function verifyError(problems: Array<{ file: string; problem: string }>, target: Target): BundleError {
  const shown = problems.slice(0, 10).map((p) => `${p.file}: ${p.problem}`);
  const more = problems.length > shown.length ? ` (and ${problems.length - shown.length} more)` : '';
  return new BundleError('ERR_NATIVE_VERIFY', `Binaries that do not run on ${formatTarget(target, { withNode: false })}: ${shown.join('; ')}${more}.`, {
    hint: 'A native addon was built for another platform. Build this target on a builder of that platform, or report the package that ships the wrong binary.',
    details: { target: formatTarget(target, { withNode: false }), files: problems },
  });
}

// One child loads every addon and reports each before and after, so a crash (a segfault in
// an addon's init) still names the file it happened in.
// Under Wine, Windows Node cannot write to a pipe (EBADF): there it reads the list from the file
// BD_VERIFY_IN and appends its report to BD_VERIFY_OUT instead of stdin and stdout.
const LOADER = `const fs=require('fs');const out=process.env.BD_VERIFY_OUT;const say=(o)=>{const l=JSON.stringify(o)+'\\n';if(out)fs.appendFileSync(out,l);else process.stdout.write(l)};const run=(input)=>{for(const file of JSON.parse(input)){say({start:file});try{process.dlopen({exports:{}},file);say({ok:file})}catch(e){say({fail:file,message:String(e&&e.message||e)})}}process.exit(0)};if(process.env.BD_VERIFY_IN){run(fs.readFileSync(process.env.BD_VERIFY_IN,'utf8'))}else{let input='';process.stdin.setEncoding('utf8');process.stdin.on('data',(d)=>{input+=d});process.stdin.on('end',()=>run(input))}`;

/** How long the addon-loading child may take before the build calls it hung. */
export const LOAD_TIMEOUT_MS = 120_000;

async function loadAddons(options: VerifyNativeOptions & { nativeFiles: string[] }): Promise<void> {
  const { dir, nativeFiles, signal } = options;
  // Messages name the Node that loaded the addons (an older Windows Node for Node-API-only ones).
  const runtime = options.wine?.nodeApiFallback ? { version: options.wine.nodeApiFallback, abi: 'Node-API' } : options.runtime;
  const timeout = AbortSignal.timeout(LOAD_TIMEOUT_MS);
  const combined = signal ? AbortSignal.any([signal, timeout]) : timeout;
  let result;
  const wine = options.wine;
  const report = wine ? path.join(wine.scratch, 'verify-report.ndjson') : undefined;
  // Windows Node names files as Z:\…; the report is read back in Linux paths.
  const toLinux = (file: string) => (wine ? file.replace(/^Z:/i, '').split('\\').join('/') : file);
  try {
    const files = nativeFiles.map((f) => path.join(dir, f));
    const launched = wine ? { command: wine.command, args: [wine.nodeExe, '-e', LOADER] }
      : options.launch ? options.launch(options.runtime.nodePath, ['-e', LOADER]) : { command: options.runtime.nodePath, args: ['-e', LOADER] };
    const { command, args } = options.wrap ? await options.wrap(launched.command, launched.args) : launched;
    const runAs = options.runAs ? { runAs: options.runAs } : {};
    if (wine && report) {
      const list = path.join(wine.scratch, 'verify-files.json');
      await writeFile(list, JSON.stringify(files.map(windowsPath)));
      await rm(report, { force: true });
      const env = { ...options.env, ...wineEnv(wine.prefix), BD_VERIFY_IN: windowsPath(list), BD_VERIFY_OUT: windowsPath(report) };
      const loaded = await withPrefix(wine.prefix, () => runCommand(command, args, { env, cwd: dir, signal: combined, ...runAs }));
      result = { ...loaded, stdout: await readFile(report, 'utf8').catch(() => '') };
    } else {
      result = await runCommand(command, args, { env: options.env ?? {}, cwd: dir, signal: combined, input: JSON.stringify(files), ...runAs });
    }
  } catch (error) {
    throwIfAborted(signal);
    if (timeout.aborted) throw new BundleError('ERR_NATIVE_VERIFY', `Loading the native addons under Node ${runtime.version} did not finish in ${LOAD_TIMEOUT_MS / 1000} s.`, { cause: error });
    throw error;
  }
  const failures: Array<{ file: string; problem: string }> = [];
  let pending: string | undefined;
  for (const line of result.stdout.split('\n')) {
    if (!line.startsWith('{')) continue; // an addon may print on load
    let event: { start?: string; ok?: string; fail?: string; message?: string };
    try {
      event = JSON.parse(line) as typeof event;
    } catch {
      continue;
    }
    for (const key of ['start', 'ok', 'fail'] as const) if (event[key]) event[key] = toLinux(event[key]);
    if (event.start) pending = event.start;
    if (event.ok) pending = undefined;
    if (event.fail) {
      pending = undefined;
      // dlopen worked (right format, ABI, libraries) but nothing registered: a plain shared
      // library that happens to be named .node (better-sqlite3's SQLite test_extension), not
      // an addon. Its header was checked like every binary's; it cannot be loaded as one.
      if (/did not self-register/.test(event.message ?? '')) {
        options.log?.(`${path.relative(dir, event.fail)} loads but is not a Node addon (no module registered); its header matches the target`);
        continue;
      }
      failures.push({ file: path.relative(dir, event.fail), problem: `does not load under Node ${runtime.version} (ABI ${runtime.abi}): ${oneLine(event.message ?? '', dir)}` });
    }
  }
  if (pending) {
    failures.push({ file: path.relative(dir, pending), problem: `crashed Node ${runtime.version} while loading (exit ${String(result.code)}): ${result.stderr.trim().split('\n').slice(-2).join(' ')}` });
  } else if (result.code !== 0 && failures.length === 0) {
    throw new BundleError('ERR_NATIVE_VERIFY', `The addon loader under Node ${runtime.version} failed (exit ${String(result.code)}): ${result.stderr.trim().slice(-500)}`);
  }
  if (failures.length > 0) {
    const shown = failures.slice(0, 10).map((f) => `${f.file} ${f.problem}`);
    throw new BundleError('ERR_NATIVE_VERIFY', `Native addons that do not load: ${shown.join('; ')}${failures.length > 10 ? ` (and ${failures.length - 10} more)` : ''}.`, {
      hint: 'The addon was built for another Node ABI or platform, or needs a library the bundle does not carry.',
      details: { runtime: { version: runtime.version, abi: runtime.abi }, files: failures },
    });
  }
}

/** Node's load errors span lines and name absolute paths: one line, paths relative to the package. */
function oneLine(message: string, dir: string): string {
  return message.split(`${dir}${path.sep}`).join('').replace(/\s+/g, ' ').trim().slice(0, 600);
}

interface WalkedFile {
  absolute: string;
  relative: string;
  executable: boolean;
}

/**
 * Regular files under `dir` (symlinks are not followed: npm's .bin links point at files checked
 * elsewhere). A level of directories is listed at once and its files stat'ed at once (the exec
 * bit is only in the mode): on libuv's pool that is several times faster than one call after
 * another, and the order of what it yields is not promised (callers sort).
 */
async function* walk(dir: string, signal?: AbortSignal): AsyncGenerator<WalkedFile> {
  let level = [''];
  while (level.length > 0) {
    throwIfAborted(signal);
    const listed = await Promise.all(level.map(async (relativeDir) => ({ relativeDir, entries: await readdir(path.join(dir, relativeDir), { withFileTypes: true }) })));
    const next: string[] = [];
    const files: string[] = [];
    for (const { relativeDir, entries } of listed) {
      for (const entry of entries) {
        const relative = relativeDir ? path.join(relativeDir, entry.name) : entry.name;
        if (entry.isDirectory()) next.push(relative);
        else if (entry.isFile()) files.push(relative);
      }
    }
    const modes = await Promise.all(files.map(async (relative) => (await lstat(path.join(dir, relative))).mode));
    for (const [index, relative] of files.entries()) {
      yield { absolute: path.join(dir, relative), relative, executable: ((modes[index] as number) & 0o111) !== 0 };
    }
    level = next;
  }
}

// --- platform packages --------------------------------------------------------------------

interface LockEntry {
  name?: string;
  version?: string;
  os?: string[];
  cpu?: string[];
  libc?: string[];
  optional?: boolean;
  dev?: boolean;
  link?: boolean;
  optionalDependencies?: Record<string, string>;
}

/**
 * Does a package's `os`/`cpu`/`libc` accept the target? npm's own rule
 * (npm-install-checks): a list matches when it names the value (or holds only `!other`
 * negations) and does not negate it; `libc` only ever matches on linux.
 */
export function platformMatches(entry: Pick<LockEntry, 'os' | 'cpu' | 'libc'>, target: Target): boolean {
  const t = normalizeTarget(target);
  const accepts = (list: string[] | undefined, value: string | undefined) => {
    if (!list || list.length === 0) return true;
    if (value === undefined) return false;
    if (list.includes(`!${value}`)) return false;
    const positive = list.filter((v) => !v.startsWith('!'));
    return positive.length === 0 || positive.includes(value) || positive.includes('any');
  };
  if (!accepts(entry.os, t.os) || !accepts(entry.cpu, t.cpu)) return false;
  if (entry.libc && entry.libc.length > 0) return t.os === 'linux' && accepts(entry.libc, t.libc);
  return true;
}

const OS_WORDS: Record<string, string[]> = { darwin: ['darwin', 'macos', 'mac'], win32: ['win32', 'windows', 'win'], linux: ['linux'] };
const CPU_WORDS: Record<string, string[]> = { x64: ['x64', 'x86_64', 'amd64'], arm64: ['arm64', 'aarch64'], ia32: ['ia32', 'x86', 'i386'], arm: ['arm', 'armv7', 'gnueabihf'] };

/**
 * For an optional dependency the lockfile has no entry for (npm/cli#4828: a lockfile made on
 * one platform can lack other platforms' packages): does its name say it is for the target?
 * `@rollup/rollup-linux-x64-musl`, `@esbuild/darwin-arm64`, `@swc/core-linux-x64-gnu`.
 */
export function nameSuggestsTarget(name: string, target: Target): boolean {
  const t = normalizeTarget(target);
  const words = name.toLowerCase().replace(/^@[^/]+\//, '').split(/[-_./]/);
  const has = (list: string[] | undefined, fallback: string) => (list ?? [fallback]).some((w) => words.includes(w));
  if (!has(OS_WORDS[t.os], t.os) && !(t.os === 'linux' && words.some((w) => w === 'linuxmusl'))) return false;
  if (!has(CPU_WORDS[t.cpu], t.cpu)) return false;
  if (t.os === 'linux') {
    const saysMusl = words.includes('musl') || words.includes('linuxmusl');
    const saysGlibc = words.includes('gnu') || words.includes('glibc') || words.includes('gnueabihf');
    if (t.libc === 'musl' ? saysGlibc : saysMusl) return false;
  }
  return true;
}

/**
 * After `npm install`: every optional dependency of an installed package whose lockfile
 * entry (`os`/`cpu`/`libc`) accepts the target must be in node_modules — npm skips a missing
 * or failed optional package silently. An optional dependency the lockfile does not know is
 * expected when its name says it is for the target ({@link nameSuggestsTarget}).
 * Missing → `ERR_PLATFORM_PACKAGE_MISSING` naming the packages.
 */
export async function checkPlatformPackages(options: { dir: string; target: Target; log?: LogFn }): Promise<void> {
  const { dir, log } = options;
  const target = normalizeTarget(options.target);
  const lock = await readLockfile(dir);
  if (!lock) {
    log?.('No package-lock.json or npm-shrinkwrap.json: platform packages not checked', { event: 'verify.platform.skipped' });
    return;
  }
  const packages = lock.packages;
  const present = async (key: string) => access(path.join(dir, key, 'package.json')).then(() => true, () => false);
  const missing = new Map<string, { name: string; requiredBy: string; reason: string }>();
  for (const [key, entry] of Object.entries(packages)) {
    if (entry.link || !entry.optionalDependencies) continue;
    if (key !== '' && !(await present(key))) continue; // not installed (another platform's, or dev)
    for (const name of Object.keys(entry.optionalDependencies)) {
      const resolved = resolveLockKey(packages, key, name);
      const dependency = resolved === undefined ? undefined : packages[resolved];
      const expected = dependency ? platformMatches(dependency, target) : nameSuggestsTarget(name, target);
      if (!expected) continue;
      if (resolved !== undefined && (await present(resolved))) continue;
      if (resolved === undefined && (await presentByResolution(dir, key, name))) continue;
      const requiredBy = key === '' ? 'the package itself' : (entry.name ?? key.replace(/^.*node_modules\//, ''));
      missing.set(`${resolved ?? name}`, {
        name,
        requiredBy,
        reason: dependency ? `its os/cpu/libc accept ${formatTarget(target, { withNode: false })}` : 'its name says it is for this target (the lockfile has no entry for it)',
      });
    }
  }
  if (missing.size > 0) {
    const list = [...missing.values()];
    throw new BundleError(
      'ERR_PLATFORM_PACKAGE_MISSING',
      `Platform packages for ${formatTarget(target, { withNode: false })} are missing from node_modules: ${list.map((m) => `${m.name} (optional dependency of ${m.requiredBy})`).join(', ')}.`,
      {
        hint: 'npm skips an optional package it cannot install without failing. Check that this version is published for the target, that optional dependencies are not omitted, and that the lockfile lists it.',
        details: { target: formatTarget(target, { withNode: false }), missing: list },
      },
    );
  }
}

async function readLockfile(dir: string): Promise<{ packages: Record<string, LockEntry> } | undefined> {
  for (const name of ['npm-shrinkwrap.json', 'package-lock.json']) {
    const text = await readFile(path.join(dir, name), 'utf8').catch(() => undefined);
    if (text === undefined) continue;
    const parsed = JSON.parse(text) as { lockfileVersion?: number; packages?: Record<string, LockEntry> };
    if (parsed.packages) return { packages: parsed.packages };
  }
  return undefined;
}

/** Node's resolution inside the lockfile: `<from>/node_modules/<name>`, then each ancestor's. */
function resolveLockKey(packages: Record<string, LockEntry>, from: string, name: string): string | undefined {
  let base = from;
  for (;;) {
    const candidate = `${base ? `${base}/` : ''}node_modules/${name}`;
    if (packages[candidate]) return candidate;
    if (!base) return undefined;
    const at = base.lastIndexOf('/node_modules/');
    base = at === -1 ? '' : base.slice(0, at);
  }
}

async function presentByResolution(dir: string, from: string, name: string): Promise<boolean> {
  let base = from;
  for (;;) {
    const candidate = path.join(dir, base, 'node_modules', name, 'package.json');
    if (await access(candidate).then(() => true, () => false)) return true;
    if (!base) return false;
    const at = base.lastIndexOf('/node_modules/');
    base = at === -1 ? '' : base.slice(0, at);
  }
}

// --- cross targets: what would have needed a build ----------------------------------------

/**
 * Install scripts that may be skipped for a cross target because the optional platform
 * package already does their job (and {@link checkPlatformPackages} makes sure it is there).
 * Keyed by package name AND the exact script text, so a changed script is caught again.
 */
export interface AllowedScript {
  name: string;
  script: 'preinstall' | 'install' | 'postinstall';
  /** The whole script must match. */
  pattern: RegExp;
  why: string;
}

export const INSTALL_SCRIPT_ALLOW_LIST: readonly AllowedScript[] = [
  {
    name: 'esbuild',
    script: 'postinstall',
    pattern: /^node install\.js$/,
    why: 'install.js checks that @esbuild/<platform> is installed (downloading it if not) and, on the host, swaps bin/esbuild for the native binary; the JS bin/esbuild works without it.',
  },
  {
    name: '@swc/core',
    script: 'postinstall',
    pattern: /^node postinstall\.js$/,
    why: 'postinstall.js checks that the @swc/core-<platform> binding loads and otherwise installs @swc/wasm as a fallback.',
  },
  {
    name: 'sharp',
    script: 'install',
    pattern: /^node install\/check\.js( \|\| npm run build)?$/,
    why: 'check.js compiles from source only when a global libvips is installed; otherwise @img/sharp-<platform> (with @img/sharp-libvips-<platform>) provides the binary.',
  },
  {
    name: '@parcel/watcher',
    script: 'install',
    pattern: /^node scripts\/build-from-source\.js$/,
    why: 'build-from-source.js runs node-gyp only when npm_config_build_from_source=true; otherwise @parcel/watcher-<platform> provides the binary.',
  },
];

export interface NativeBuildNeed {
  /** Package name (`(root)` for the package itself when it has no name). */
  name: string;
  /** Directory relative to the package dir; `.` for the root. */
  path: string;
  /** `binding.gyp`, `gypfile: true`, `install: node-gyp rebuild`, … */
  reasons: string[];
}

/**
 * For a cross target, after `npm install --os … --cpu … --ignore-scripts`: every installed
 * package (and the root) that would have built or downloaded something at install time —
 * a `binding.gyp` (unless `gypfile: false`, which tells npm not to build it, or an install or
 * preinstall script, which npm runs instead of building it), `gypfile: true`, or a
 * preinstall/install/postinstall script not on `allowList`. A non-empty result means
 * a builder of the target is needed ({@link nativeNeedsTargetError}).
 */
export async function findNativeBuildNeeds(options: { dir: string; allowList?: readonly AllowedScript[] }): Promise<NativeBuildNeed[]> {
  const allowList = options.allowList ?? INSTALL_SCRIPT_ALLOW_LIST;
  const needs: NativeBuildNeed[] = [];
  for (const packageDir of await listPackageDirs(options.dir)) {
    const text = await readFile(path.join(options.dir, packageDir, 'package.json'), 'utf8').catch(() => undefined);
    if (text === undefined) continue;
    let pkg: { name?: string; gypfile?: boolean; scripts?: Record<string, unknown> };
    try {
      pkg = JSON.parse(text) as typeof pkg;
    } catch {
      continue;
    }
    const reasons: string[] = [];
    const hasGyp = await access(path.join(options.dir, packageDir, 'binding.gyp')).then(() => true, () => false);
    // npm builds a binding.gyp itself (`node-gyp rebuild`) only when the package has no install
    // or preinstall script of its own: with one, that script is the whole install.
    const ownInstall = ['install', 'preinstall'].some((script) => typeof pkg.scripts?.[script] === 'string' && (pkg.scripts[script] as string).trim() !== '');
    if (pkg.gypfile === true && !ownInstall) reasons.push('gypfile: true');
    else if (hasGyp && pkg.gypfile !== false && !ownInstall) reasons.push('binding.gyp');
    for (const script of ['preinstall', 'install', 'postinstall'] as const) {
      const body = pkg.scripts?.[script];
      if (typeof body !== 'string' || body.trim() === '') continue;
      const allowed = allowList.some((a) => a.name === pkg.name && a.script === script && a.pattern.test(body.trim()));
      if (!allowed) reasons.push(`${script}: ${body}`);
    }
    if (reasons.length > 0) needs.push({ name: pkg.name ?? '(root)', path: packageDir || '.', reasons });
  }
  return needs.sort((a, b) => a.path.localeCompare(b.path));
}

/** The root and every package under node_modules (scoped and nested), relative to `dir`. */
async function listPackageDirs(dir: string): Promise<string[]> {
  const found = [''];
  const visit = async (relative: string) => {
    const modules = path.join(relative, 'node_modules');
    const entries = await readdirSafe(path.join(dir, modules));
    for (const entry of entries) {
      if (entry.startsWith('.')) continue; // .bin, .package-lock.json, .cache
      if (entry.startsWith('@')) {
        for (const scoped of await readdirSafe(path.join(dir, modules, entry))) {
          const packageDir = path.join(modules, entry, scoped);
          found.push(packageDir);
          await visit(packageDir);
        }
      } else {
        const packageDir = path.join(modules, entry);
        found.push(packageDir);
        await visit(packageDir);
      }
    }
  };
  await visit('');
  return found;
}

async function readdirSafe(dir: string): Promise<string[]> {
  try {
    const handle = await opendir(dir);
    const names: string[] = [];
    for await (const entry of handle) if (entry.isDirectory()) names.push(entry.name);
    return names;
  } catch {
    return [];
  }
}

/** The error the Scaffold throws when a cross target needs something built or downloaded at install time. */
export function nativeNeedsTargetError(needs: NativeBuildNeed[], target: Target, hint?: string): BundleError {
  const name = formatTarget(target, { withNode: false });
  const list = needs.map((n) => `${n.name} (${n.reasons.join(', ')})`);
  return new BundleError(
    'ERR_NATIVE_NEEDS_TARGET',
    `Cannot bundle for ${name} from this machine: ${list.join('; ')} ${needs.length === 1 ? 'needs' : 'need'} to be built or downloaded on ${name} at install time. A builder of ${name} is needed.`,
    {
      hint: hint ?? `Configure a builder for ${name} (a pool in .bundlerc) so the addon is compiled on that platform.`,
      details: { target: name, packages: needs },
    },
  );
}
