/**
 * Cross toolchains: how this machine compiles native addons for another Linux CPU and proves
 * them by running them under a user-mode emulator. One table row per target, not an arm64
 * special case; detection looks for the row's compiler, sysroot and emulator on this machine,
 * and configuration (`toolchains` in .bundlerc) overrides or switches off any row.
 */
import { accessSync, constants, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { BundleError } from '../errors.js';
import { formatTarget, normalizeTarget, parseTarget, sameTarget, type Target } from '../target.js';

import type { BuildMethod } from '../protocol.js';

export type { BuildMethod } from '../protocol.js';

/** A known cross toolchain (Debian's cross packages and qemu-user). */
export interface ToolchainRecipe {
  target: string;
  /** GNU triple: the compilers are `<triple>-gcc` / `<triple>-g++`, the sysroot `/usr/<triple>`. */
  triple: string;
  /** User-mode emulators for the CPU, in order of preference (the static build needs nothing else). */
  emulators: readonly string[];
  /** Debian packages that provide the toolchain and the emulator (for hints). */
  debianPackages: string;
}

export const TOOLCHAIN_RECIPES: readonly ToolchainRecipe[] = [
  {
    target: 'linux-arm64',
    triple: 'aarch64-linux-gnu',
    emulators: ['qemu-aarch64-static', 'qemu-aarch64'],
    debianPackages: 'gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static',
  },
  {
    target: 'linux-arm',
    triple: 'arm-linux-gnueabihf',
    emulators: ['qemu-arm-static', 'qemu-arm'],
    debianPackages: 'gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user-static',
  },
  {
    // For arm64 machines building x64 bundles (not tested here: this machine is x64).
    target: 'linux-x64',
    triple: 'x86_64-linux-gnu',
    emulators: ['qemu-x86_64-static', 'qemu-x86_64'],
    debianPackages: 'gcc-x86-64-linux-gnu g++-x86-64-linux-gnu libc6-dev-amd64-cross qemu-user-static',
  },
];

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
  triple: string;
  cc: string;
  cxx: string;
  ar: string;
  /** The target's root (its dynamic loader and libraries) for the emulator's `-L`. */
  sysroot: string;
  /** The user-mode emulator; absent when there is none (verification is then header-only). */
  emulator?: string;
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

/** A sysroot is usable when it holds the target's dynamic loader (`lib/ld-linux-*.so.*`). */
function hasLoader(sysroot: string): boolean {
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
  const cc = findExecutable(`${recipe.triple}-gcc`, envPath);
  const cxx = findExecutable(`${recipe.triple}-g++`, envPath);
  const ar = findExecutable(`${recipe.triple}-ar`, envPath);
  const sysroot = `/usr/${recipe.triple}`;
  const emulator = recipe.emulators.map((name) => findExecutable(name, envPath)).find((p) => p !== undefined);
  // Detection serves a target only when it can also prove the result by running it.
  if (!cc || !cxx || !ar || !emulator || !hasLoader(sysroot)) return undefined;
  return { target, triple: recipe.triple, cc, cxx, ar, sysroot, emulator, source: 'detected' };
}

function configuredToolchain(name: string, target: Target, setting: ToolchainSetting, recipe: ToolchainRecipe | undefined, envPath: string | undefined): Toolchain {
  const triple = setting.triple ?? recipe?.triple;
  if (!triple) throw new BundleError('ERR_CONFIG', `toolchains["${name}"]: no known toolchain for ${name}; give "triple" (or cc, cxx, ar and sysroot).`);
  if (target.os !== 'linux') throw new BundleError('ERR_CONFIG', `toolchains["${name}"]: cross toolchains are for linux targets only.`);
  const tool = (field: 'cc' | 'cxx' | 'ar', fallback: string) => {
    const wanted = setting[field] ?? fallback;
    const resolved = findExecutable(wanted, envPath);
    if (!resolved) throw new BundleError('ERR_CONFIG', `toolchains["${name}"].${field}: ${wanted} is not an executable on PATH.`, { hint: recipe ? `Install Debian's ${recipe.debianPackages}, or fix the path.` : 'Install the cross compiler or fix the path.' });
    return resolved;
  };
  const cc = tool('cc', `${triple}-gcc`);
  const cxx = tool('cxx', `${triple}-g++`);
  const ar = tool('ar', `${triple}-ar`);
  const sysroot = setting.sysroot ?? `/usr/${triple}`;
  if (!hasLoader(sysroot)) throw new BundleError('ERR_CONFIG', `toolchains["${name}"].sysroot: ${sysroot} has no lib/ld-linux-*.so.* (the target's dynamic loader).`);
  let emulator: string | undefined;
  if (setting.emulator !== false && setting.emulator !== null) {
    const wanted = setting.emulator === undefined ? (recipe?.emulators ?? []) : [setting.emulator];
    emulator = wanted.map((candidate) => findExecutable(candidate, envPath)).find((p) => p !== undefined);
    if (!emulator && setting.emulator !== undefined) throw new BundleError('ERR_CONFIG', `toolchains["${name}"].emulator: ${setting.emulator} is not an executable on PATH.`);
  }
  return { target, triple, cc, cxx, ar, sysroot, ...(emulator ? { emulator } : {}), source: 'configured' };
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
  return `Install a cross toolchain and emulator on this machine (Debian: apt-get install ${recipe.debianPackages}; or set toolchains["${name}"] in .bundlerc), or configure a builder for ${name} (a pool in .bundlerc).`;
}
