/**
 * macOS addons compiled on Linux with zig (no Apple SDK: zig carries macOS's libc headers and
 * libSystem stubs). gyp resolves binding.gyp with `OS=="mac"` (lib/workflow/gyp-build.ts); this
 * flavor compiles each source with `zig cc`/`zig c++ -target <cpu>-macos.<minimum>` and links a
 * dylib whose Node-API symbols are looked up in Node when it loads (`-undefined dynamic_lookup`,
 * as node-gyp links on a Mac), libc++ linked in statically, stripped, ad-hoc signed by zig's
 * linker (arm64 macOS refuses unsigned code). Nothing here runs the result: the verify step
 * checks it by structure (lib/workflow/macho.ts). Node-API only, and no framework: zig has no
 * SDK for CoreServices or Foundation.
 */
import { createHash } from 'node:crypto';
import { chown, cp, mkdir, readdir, readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { buildGypAddon, gypBuildable, type GypBuildOptions, type GypBuildResult, type GypdSettings, type GypdTarget, type GypFlavor } from './gyp-build.js';
import { NODE_MIN_MACOS } from './macho.js';
import { findBlockingAncestor } from './run-as.js';
import type { Toolchain } from './toolchains.js';
import { formatTarget, type Target } from '../target.js';

const V8_REASON = 'whose C++ ABI a Linux machine cannot match for macOS (no Apple SDK here)';

/** What to do about an addon this machine cannot build for macOS. */
export function macBuilderHint(target: Target): string {
  const name = formatTarget(target, { withNode: false });
  return `Add a Mac builder to the ${name} pool in .bundlerc so the addon is compiled (and loaded) there, or use a version of the package that ships a ${name} prebuild.`;
}

/** Whether a package's install work is a binding.gyp build this module can do for macOS; else the reason not. */
export function darwinBuildable(packageJson: Record<string, unknown>, hasBindingGyp: boolean): string | undefined {
  return gypBuildable(packageJson, hasBindingGyp, V8_REASON);
}

/** zig's target for a macOS target and Node major: the oldest macOS that Node runs on (arm64: 11.0 at least). */
export function zigMacosTarget(toolchain: Pick<Toolchain, 'triple' | 'target'>, nodeMajor: number): string {
  const floor = NODE_MIN_MACOS[nodeMajor] ?? '13.5';
  const minimum = toolchain.target.cpu === 'arm64' && Number.parseFloat(floor) < 11 ? '11.0' : floor;
  return `${toolchain.triple}.${minimum}`;
}

/** The flags every link uses: the warm-up's and the addons' must be the same, or zig builds its libraries again. */
const LINK_FLAGS = ['-shared', '-Wl,-undefined,dynamic_lookup', '-s'];

/**
 * zig's global cache (compiler_rt, libc++ and libc++abi built for the target) made once per zig
 * and target by this process, from fixed sources of our own (the first C++ link builds libc++:
 * ~35 s on two cores). Builds get a copy of it they own (zig writes to its cache; a shared
 * writable one would let one build change another's libraries). Made under a temporary name and
 * renamed: never half made.
 */
export async function warmZigCache(options: { toolchain: Toolchain; zigTarget: string; cacheDir: string; run: (command: string, args: string[], env: Record<string, string>) => Promise<{ code: number | null; stderr: string }>; log?: (line: string) => void }): Promise<string> {
  // One cache per zig binary and target.
  const dir = path.join(options.cacheDir, 'zig-cache', `${options.zigTarget}-${await zigId(options.toolchain)}`.replace(/[^\w.+-]/g, '_'));
  if (await readFile(path.join(dir, 'ready'), 'utf8').then(() => true, () => false)) return dir;
  const partial = `${dir}.${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  await mkdir(partial, { recursive: true });
  try {
    options.log?.(`preparing zig's libraries for ${options.zigTarget} (once per machine)`);
    await writeFile(path.join(partial, 'warm.c'), 'int bd_warm_c(void) { return 0; }\n');
    await writeFile(path.join(partial, 'warm.cc'), '#include <string>\nint bd_warm_cc(int n) { return static_cast<int>(std::to_string(n).size()); }\n');
    const env = { ZIG_GLOBAL_CACHE_DIR: path.join(partial, 'global'), ZIG_LOCAL_CACHE_DIR: path.join(partial, 'local') };
    for (const [driver, source] of [['cc', 'warm.c'], ['c++', 'warm.cc']] as const) {
      const result = await options.run(options.toolchain.cc, [driver, '-target', options.zigTarget, ...LINK_FLAGS, path.join(partial, source), '-o', path.join(partial, `${source}.dylib`)], env);
      if (result.code !== 0) throw new Error(`zig ${driver} could not build its libraries for ${options.zigTarget}: ${result.stderr.trim().split('\n').slice(-4).join('\n')}`);
    }
    await rm(path.join(partial, 'local'), { recursive: true, force: true });
    await writeFile(path.join(partial, 'ready'), `${new Date().toISOString()}\n`);
    await rename(partial, dir).catch(async (error: NodeJS.ErrnoException) => {
      // Another build made it first: theirs is as good.
      if (error.code !== 'ENOTEMPTY' && error.code !== 'EEXIST') throw error;
    });
    return dir;
  } finally {
    await rm(partial, { recursive: true, force: true });
  }
}

/**
 * The zig a build user can run: this one, or — when a directory above it is closed to other
 * users (a package installed under /root, a checkout in a 0700 directory) — a copy staged once
 * in the runtime cache (hard links where the file system allows, else copied), made under a
 * temporary name and renamed.
 */
export async function zigForBuildUser(toolchain: Toolchain, options: { cacheDir: string; runAs?: { uid: number; gid: number }; run: (command: string, args: string[]) => Promise<{ code: number | null; stderr: string }>; log?: (line: string) => void }): Promise<Toolchain> {
  const zigDir = path.dirname(toolchain.cc);
  if (!options.runAs || !(await findBlockingAncestor(zigDir))) return toolchain;
  const staged = path.join(options.cacheDir, 'zig', await zigId(toolchain));
  if (!(await stat(path.join(staged, 'zig')).then(() => true, () => false))) {
    options.log?.(`${zigDir} is closed to build users: staging zig in ${staged} (once per machine)`);
    const partial = `${staged}.${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
    await mkdir(path.dirname(staged), { recursive: true });
    try {
      const linked = await options.run('cp', ['-al', zigDir, partial]);
      if (linked.code !== 0) {
        await rm(partial, { recursive: true, force: true });
        const copied = await options.run('cp', ['-a', zigDir, partial]);
        if (copied.code !== 0) throw new Error(`could not copy zig to ${partial}: ${copied.stderr.trim()}`);
      }
      await rename(partial, staged).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'ENOTEMPTY' && error.code !== 'EEXIST') throw error;
      });
    } finally {
      await rm(partial, { recursive: true, force: true });
    }
  }
  const zig = path.join(staged, 'zig');
  return { ...toolchain, cc: zig, cxx: zig, ar: zig, sysroot: path.join(staged, 'lib') };
}

/** One id per zig binary: its real path, size and time. */
async function zigId(toolchain: Pick<Toolchain, 'cc'>): Promise<string> {
  const zig = await stat(toolchain.cc);
  return createHash('sha256').update(`${await realpath(toolchain.cc)}:${zig.size}:${zig.mtimeMs}`).digest('hex').slice(0, 12);
}

/** A copy of the warmed cache for one build, every entry handed to its user. */
export async function copyZigCache(warmed: string, destination: string, owner?: { uid: number; gid: number }): Promise<string> {
  await cp(path.join(warmed, 'global'), destination, { recursive: true });
  if (owner) await chownTree(destination, owner);
  return destination;
}

async function chownTree(dir: string, owner: { uid: number; gid: number }): Promise<void> {
  await chown(dir, owner.uid, owner.gid);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) await chownTree(full, owner);
    else await chown(full, owner.uid, owner.gid);
  }
}

/** A framework a gyp target links (`-framework X`, `…/X.framework`), which zig has no SDK for. */
function frameworkOf(target: GypdTarget, settings: GypdSettings): string | undefined {
  const ldflags = settings.xcode_settings?.OTHER_LDFLAGS;
  const entries = [...(target.libraries ?? []), ...(target.link_settings?.libraries ?? []), ...(settings.libraries ?? []), ...(Array.isArray(ldflags) ? ldflags : ldflags ? [ldflags] : [])];
  for (const [index, entry] of entries.entries()) {
    const named = /([\w-]+)\.framework/.exec(entry)?.[1] ?? (entry === '-framework' ? entries[index + 1] : /^-framework\s+(\S+)/.exec(entry)?.[1]);
    if (named) return named;
  }
  return undefined;
}

/** xcode_settings as a list (gyp gives a string or a list). */
function list(value: string | string[] | undefined): string[] {
  return Array.isArray(value) ? value : typeof value === 'string' ? value.split(/\s+/).filter(Boolean) : [];
}

/** Flags a package sets for Xcode that name another target or SDK: ours decide those. */
const FOREIGN_FLAG = /^-(arch|isysroot|mmacosx-version-min|mmacos-version-min|target)\b/;

/**
 * Builds one package's binding.gyp for a darwin target with zig (lib/workflow/gyp-build.ts):
 * each addon linked to `build/Release/<name>.node` (or the target's product_dir).
 *
 * @example
 * await buildDarwinAddon({ name: 'my-addon', packageDir, toolchain, zigTarget: 'aarch64-macos.11.0', zigCache, headers, workDir, gyp, run, log });
 */
export async function buildDarwinAddon(options: GypBuildOptions & {
  toolchain: Toolchain;
  /** From {@link zigMacosTarget}. */
  zigTarget: string;
  /** This build's own copy of the warmed cache ({@link copyZigCache}). */
  zigCache: string;
}): Promise<GypBuildResult> {
  const { toolchain, packageDir } = options;
  const cpu = toolchain.target.cpu === 'arm64' ? 'arm64' : 'x64';
  // zig reads its caches from the environment; `env` sets them for the sandboxed process alone.
  const zig = (driver: 'cc' | 'c++') => ({ command: 'env', args: [`ZIG_GLOBAL_CACHE_DIR=${options.zigCache}`, `ZIG_LOCAL_CACHE_DIR=${path.join(options.workDir, 'zig-local')}`, toolchain.cc, driver, '-target', options.zigTarget] });
  const flavor: GypFlavor = {
    gyp: { os: 'mac', arch: cpu, platform: 'darwin' },
    platform: 'macOS',
    compiler: 'zig',
    v8Reason: V8_REASON,
    failureHint: 'The compiler\'s output above names the problem; a package that needs Apple\'s SDK or Xcode needs a Mac builder in the target\'s pool in .bundlerc.',
    refuseTarget(target, settings) {
      const framework = frameworkOf(target, settings);
      return framework ? `links the macOS framework ${framework}, for which there is no SDK here` : undefined;
    },
    compileFlags(settings, gypDir, targetName) {
      const xcode = settings.xcode_settings ?? {};
      // node-gyp's common.gypi on a Mac: these defines, hidden symbols, -O3 for Release.
      const defines = ['BUILDING_NODE_EXTENSION', '_DARWIN_USE_64_BIT_INODE=1', '_LARGEFILE_SOURCE', '_FILE_OFFSET_BITS=64', ...(settings.defines ?? [])].map((define) => define.replace('>(_target_name)', targetName));
      const includes = [...(settings.include_dirs ?? []).map((dir) => path.resolve(gypDir, dir)), options.headers];
      const common = ['-O3', '-fPIC', ...(xcode.GCC_SYMBOLS_PRIVATE_EXTERN === 'NO' ? [] : ['-fvisibility=hidden']), `-ffile-prefix-map=${packageDir}=.`, ...defines.map((define) => `-D${define}`), ...includes.map((dir) => `-I${dir}`)];
      const own = (flags: string[]) => flags.filter((flag) => !FOREIGN_FLAG.test(flag));
      const standard = typeof xcode.CLANG_CXX_LANGUAGE_STANDARD === 'string' ? xcode.CLANG_CXX_LANGUAGE_STANDARD : 'gnu++17';
      const exceptions = xcode.GCC_ENABLE_CPP_EXCEPTIONS === 'YES' ? '-fexceptions' : '-fno-exceptions';
      return {
        c: [...common, ...own(list(xcode.OTHER_CFLAGS))],
        cxx: [`-std=${standard}`, exceptions, ...(xcode.GCC_ENABLE_CPP_RTTI === 'NO' ? ['-fno-rtti'] : []), ...common, ...own(list(xcode.OTHER_CPLUSPLUSFLAGS ?? xcode.OTHER_CFLAGS))],
      };
    },
    compile: (language) => zig(language === 'c' ? 'cc' : 'c++'),
    async link({ target, settings, gypDir, objects, product, tool }) {
      // C++ objects (named after their sources) link libc++ in; C alone does not need it.
      const driver = objects.some((object) => /\.(cc|cpp|cxx|c\+\+)\.o$/i.test(object)) ? 'c++' : 'cc';
      const libraries = [...(target.libraries ?? []), ...(target.link_settings?.libraries ?? []), ...(settings.libraries ?? [])]
        .map((library) => (library.startsWith('-l') || library.startsWith('-L') ? library : path.resolve(gypDir, library)));
      const { command, args } = zig(driver);
      // The install name is the file's own, relative (never the build's path): the same sources give the same bytes.
      await tool(command, [...args, ...LINK_FLAGS, `-Wl,-install_name,@rpath/${path.basename(product)}`, '-o', product, ...objects, ...libraries], `linking ${target.target_name}`);
    },
  };
  return buildGypAddon({ ...options, flavor });
}
