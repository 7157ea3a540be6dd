/**
 * Windows x64 addons compiled on Linux with MinGW-w64. node-gyp builds Windows addons with MSVC
 * only, so gyp resolves binding.gyp with `OS=="win"` (lib/workflow/gyp-build.ts) and this
 * flavor compiles it with mingw's `-posix` compilers, linked statically (the addon needs no
 * MinGW DLL) against an import library made from the target's own node.exe exports,
 * delay-loaded with node-gyp's hook so a renamed node.exe loads it too. Node-API only: V8's and
 * Node's C++ API are MSVC's ABI, which MinGW cannot link against.
 */
import { existsSync } from 'node:fs';
import { mkdir, open, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BundleError } from '../errors.js';
import { buildGypAddon, gypBuildable, GypBuildRefusal, tool, type GypBuildOptions, type GypBuildResult, type GypdSettings, type GypFlavor, type RunTool } from './gyp-build.js';
import { readPeExports } from './pe.js';
import type { Toolchain } from './toolchains.js';
import { formatTarget, type Target } from '../target.js';

export { nodePreGypVariables, supportedNodeApi, type RunTool } from './gyp-build.js';
/** Why an addon is not built here (the name the Windows build has always thrown). */
export const WindowsBuildRefusal = GypBuildRefusal;
export type WindowsBuildResult = GypBuildResult;

/** What to do about an addon this machine cannot build for Windows. */
export function windowsBuilderHint(target: Target): string {
  const name = formatTarget(target, { withNode: false });
  return `Add a ${name} builder (a Windows machine) to the ${name} pool in .bundlerc so the addon is compiled there, or use a version of the package that ships a ${name} prebuild.`;
}

/**
 * node-gyp's delay-load hook (src/win_delay_load_hook.cc), for MinGW: when the addon's
 * delay-loaded `node.exe` is first used, hand back the running executable, whatever its name.
 */
const DELAY_LOAD_HOOK = `#include <windows.h>
#include <delayimp.h>
static FARPROC WINAPI load_exe_hook(unsigned int event, PDelayLoadInfo info) {
  if (event != dliNotePreLoadLibrary) return NULL;
  if (_stricmp(info->szDll, "node.exe") != 0) return NULL;
  return (FARPROC)GetModuleHandle(NULL);
}
PfnDliHook __pfnDliNotifyHook2 = load_exe_hook;
`;

/**
 * The delay-import library of node.exe's C exports (everything an addon may link: Node-API,
 * libuv, OpenSSL, zlib), made once per node.exe beside it, and the full export list for the
 * import check. Written to a temporary name and renamed, so a half-made library is never used.
 */
export async function nodeImportLibrary(options: { nodeExe: string; dlltool: string; run: (command: string, args: string[]) => Promise<{ code: number | null; stderr: string }> }): Promise<{ library: string; exports: Set<string> }> {
  const exports = await readPeExports(options.nodeExe);
  const dir = path.join(path.dirname(path.dirname(options.nodeExe)), 'mingw');
  const library = path.join(dir, 'libnode-delay.a');
  if (existsSync(library)) return { library, exports: new Set(exports) };
  await mkdir(dir, { recursive: true });
  const suffix = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const def = path.join(dir, `node-${suffix}.def`);
  const partial = `${library}.${suffix}`;
  // C names only: MSVC-mangled C++ names cannot be used from MinGW anyway, and dlltool chokes on '?'.
  await writeFile(def, `LIBRARY node.exe\nEXPORTS\n${exports.filter((name) => /^[A-Za-z_]\w*$/.test(name)).map((name) => `  ${name}\n`).join('')}`);
  try {
    const made = await options.run(options.dlltool, ['-d', def, '-y', partial, '-D', 'node.exe']);
    if (made.code !== 0) throw new BundleError('ERR_NATIVE_BUILD', `dlltool could not make node.exe's import library: ${made.stderr.trim()}`);
    await rename(partial, library);
  } finally {
    await rm(def, { force: true });
    await rm(partial, { force: true });
  }
  return { library, exports: new Set(exports) };
}

const V8_REASON = 'which MinGW cannot link for Windows (MSVC\'s ABI)';
/** Who compiles for whom, for every MinGW tool's failure. */
const MINGW = {
  platform: 'Windows',
  compiler: 'MinGW',
  failureHint: 'The compiler\'s output above names the problem; a package that builds only with MSVC needs a Windows builder (a pool for win32-x64 in .bundlerc).',
} as const;

/**
 * Whether a package's install work is a binding.gyp build this module can do for Windows: a
 * binding.gyp, and install scripts (if any) that only build it. Anything else → the reason not.
 */
export function windowsBuildable(packageJson: Record<string, unknown>, hasBindingGyp: boolean): string | undefined {
  return gypBuildable(packageJson, hasBindingGyp, 'which MinGW cannot link for Windows: MSVC\'s ABI');
}

/**
 * Builds one package's binding.gyp for win32-x64 (lib/workflow/gyp-build.ts) with MinGW: each
 * addon linked to `build/Release/<name>.node` (or the target's product_dir), stripped, with its
 * delay-import directory set.
 *
 * @example
 * await buildWindowsAddon({ name: 'my-addon', packageDir, toolchain, headers: '/…/include/node', nodeLibrary, workDir, gyp, run, log });
 */
export async function buildWindowsAddon(options: GypBuildOptions & {
  toolchain: Toolchain;
  /** From {@link nodeImportLibrary}. */
  nodeLibrary: string;
}): Promise<WindowsBuildResult> {
  const { toolchain, packageDir } = options;
  const flavor: GypFlavor = {
    gyp: { os: 'win', arch: 'x64', platform: 'win32' },
    ...MINGW,
    v8Reason: V8_REASON,
    compileFlags: (settings, gypDir, targetName) => compileFlags(settings, gypDir, options.headers, targetName, packageDir),
    compile: (language) => ({ command: language === 'c' ? toolchain.cc : toolchain.cxx, args: [] }),
    async link({ target, settings, gypDir, objects, product, objectsDir, tool: run }) {
      const hook = path.join(objectsDir, 'delay-load-hook.c');
      const hookObject = path.join(objectsDir, 'delay-load-hook.o');
      if (!existsSync(hookObject)) {
        await writeFile(hook, DELAY_LOAD_HOOK);
        await run(toolchain.cc, ['-c', '-O2', hook, '-o', hookObject], 'compiling the delay-load hook');
      }
      const libraries = [...(target.libraries ?? []), ...(target.link_settings?.libraries ?? []), ...(settings.libraries ?? [])].map((library) => linkLibrary(library, gypDir));
      await run(toolchain.cxx, [
        // No time stamp, and a fixed preferred base (MinGW derives one from the output's path): same sources, same bytes.
        '-shared', '-static', '-Wl,--no-insert-timestamp', '-Wl,--disable-auto-image-base', '-o', product,
        ...objects, hookObject, options.nodeLibrary, '-ldelayimp', ...libraries,
      ], `linking ${target.target_name}`);
      await finishProduct(product, { toolchain, packageDir, run: options.run });
    },
  };
  return buildGypAddon({ ...options, flavor });
}

/** Compiler flags of a target: MSVC's defaults that matter to the sources, gyp's defines and include dirs. */
function compileFlags(settings: GypdSettings, gypDir: string, headers: string, targetName: string, packageDir: string): { c: string[]; cxx: string[] } {
  const defines = ['WIN32', '_WINDOWS', 'BUILDING_NODE_EXTENSION', 'HOST_BINARY="node.exe"', ...(settings.defines ?? [])]
    .map((define) => define.replace('>(_target_name)', targetName));
  const includes = [...(settings.include_dirs ?? []).map((dir) => path.resolve(gypDir, dir)), headers];
  const options = settings.msvs_settings?.VCCLCompilerTool?.AdditionalOptions;
  const standard = (Array.isArray(options) ? options : typeof options === 'string' ? options.split(/\s+/) : [])
    .map((option) => /^[/-]std:c\+\+(\w+)$/.exec(option)?.[1]).find((value) => value !== undefined);
  // gcc's -std names: c++latest has no fixed meaning, c++20 is the newest MSVC names for sure.
  const cxxStandard = standard === undefined ? 'gnu++17' : standard === 'latest' ? 'gnu++20' : `gnu++${standard}`;
  // No absolute build paths in the binary: it must not differ by workdir.
  const common = ['-O2', `-ffile-prefix-map=${packageDir}=.`, ...defines.map((define) => `-D${define}`), ...includes.map((dir) => `-I${dir}`)];
  return { c: common, cxx: [`-std=${cxxStandard}`, ...common] };
}

/** A gyp `libraries` entry as the MinGW linker takes it (`ws2_32.lib` → `-lws2_32`). */
function linkLibrary(library: string, gypDir: string): string {
  if (library.startsWith('-l') || library.startsWith('-L')) return library;
  if (/^[\w.-]+\.lib$/i.test(library)) return `-l${library.slice(0, -4)}`;
  return path.resolve(gypDir, library);
}

/**
 * Strips the product and points its delay-import directory at node.exe's descriptor: GNU ld
 * leaves data directory 13 empty for dlltool's delay imports (the helper finds them without it),
 * and every tool that lists what a DLL needs (ours included) reads that directory.
 */
export async function finishProduct(product: string, options: { toolchain: Toolchain; packageDir: string; run: RunTool }): Promise<void> {
  const binutils = options.toolchain.binutils;
  if (!binutils) throw new BundleError('ERR_CONFIG', 'The win32-x64 toolchain has no nm and strip.');
  const run = (command: string, args: string[], what: string) => tool({ ...options, flavor: MINGW }, command, args, what);
  const symbols = await run(binutils.nm, [product], 'reading symbols');
  const descriptor = /^([0-9a-f]+) \w __DELAY_IMPORT_DESCRIPTOR_\w+$/m.exec(symbols);
  await run(binutils.strip, ['--strip-all', product], 'stripping');
  if (!descriptor) throw new BundleError('ERR_NATIVE_BUILD', `${path.basename(product)}: no delay-import descriptor for node.exe after linking.`);
  await setDelayImportDirectory(product, BigInt(`0x${descriptor[1]}`));
}

/** Writes data directory 13 (delay imports) of a PE32+ file, one descriptor of 32 bytes at virtual address `address`, and a zero time stamp. */
async function setDelayImportDirectory(file: string, address: bigint): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    const dos = Buffer.alloc(64);
    await handle.read(dos, 0, 64, 0);
    const peOffset = dos.readUInt32LE(0x3c);
    const imageBase = Buffer.alloc(8);
    await handle.read(imageBase, 0, 8, peOffset + 24 + 24);
    const entry = Buffer.alloc(8);
    entry.writeUInt32LE(Number(address - imageBase.readBigUInt64LE(0)), 0);
    entry.writeUInt32LE(32, 4);
    // strip stamps the COFF header with the time and sums the file with it: zero both, as the
    // linker's --no-insert-timestamp leaves them, so the same sources give the same bytes
    // (Windows checks the sum of drivers only).
    await handle.write(Buffer.alloc(4), 0, 4, peOffset + 8);
    await handle.write(Buffer.alloc(4), 0, 4, peOffset + 24 + 64);
    // PE32+: the data directories start 112 bytes into the optional header, 8 bytes each.
    await handle.write(entry, 0, 8, peOffset + 24 + 112 + 13 * 8);
  } finally {
    await handle.close();
  }
}
