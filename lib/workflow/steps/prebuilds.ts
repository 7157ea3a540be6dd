/**
 * Prebuilt binaries packages ship for every platform (`prebuilds/<platform>-<arch>/…`, the
 * layout of prebuildify and node-gyp-build). A bundle is locked to one os/cpu/libc, so a
 * prebuild for another platform can never be chosen by node-gyp-build at run time: it is
 * dropped from the bundle (and so never loaded by verify), and the build says which.
 */
import { readFile, readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { normalizeTarget, type Target } from '../../target.js';
import type { PrebuiltBinary } from '../../protocol.js';
import { listAllPackages } from './bundle.js';
import type { NativeBuildNeed } from './verify.js';

/** node-gyp-build's platform names (process.platform). */
const PLATFORMS = new Set(['linux', 'darwin', 'win32', 'freebsd', 'openbsd', 'netbsd', 'sunos', 'aix', 'android']);
/** node-gyp-build's arch names (process.arch); a folder may hold several, joined by `+` (darwin-x64+arm64). */
const ARCHS = new Set(['x64', 'arm64', 'arm', 'ia32', 'ppc64', 's390x', 'riscv64', 'loong64', 'mips', 'mipsel', 'ppc', 's390']);

/**
 * What a `prebuilds/` folder name says: `linux-x64` → { platform: 'linux', archs: ['x64'] };
 * undefined for a name that is not `<platform>-<arch>[+<arch>…]` (left alone).
 */
export function parsePrebuildFolder(name: string): { platform: string; archs: string[] } | undefined {
  const at = name.indexOf('-');
  if (at <= 0) return undefined;
  const platform = name.slice(0, at);
  const archs = name.slice(at + 1).split('+');
  if (!PLATFORMS.has(platform) || archs.length === 0 || !archs.every((arch) => ARCHS.has(arch))) return undefined;
  return { platform, archs };
}

/**
 * Whether a prebuild serves the target: its folder names the target's platform and cpu, and on
 * linux its file name's libc tag (`.glibc.`/`.musl.`, as node-gyp-build reads it) is the
 * target's or absent. Undefined when the path is not a prebuild it can read.
 *
 * @example
 * prebuildServes('prebuilds/freebsd-x64/argon2.glibc.node', linuxX64)      // false
 * prebuildServes('prebuilds/linux-x64/argon2.musl.node', linuxX64Glibc)    // false
 * prebuildServes('prebuilds/linux-x64/argon2.glibc.node', linuxX64Glibc)   // true
 */
export function prebuildServes(relative: string, target: Target): boolean | undefined {
  const parts = relative.split(/[\\/]/);
  const at = parts.lastIndexOf('prebuilds');
  const folder = at >= 0 ? parts[at + 1] : undefined;
  if (!folder) return undefined;
  const parsed = parsePrebuildFolder(folder);
  if (!parsed) return undefined;
  const t = normalizeTarget(target);
  if (parsed.platform !== t.os || !parsed.archs.includes(t.cpu)) return false;
  const file = parts.at(-1) ?? '';
  if (t.os === 'linux' && parts.length > at + 2) {
    const tags = file.split('.');
    const libc = tags.includes('musl') ? 'musl' : tags.includes('glibc') ? 'glibc' : undefined;
    if (libc && libc !== (t.libc ?? 'glibc')) return false;
  }
  return true;
}

/** Loaders that try `build/Release` before `prebuilds/` (node-gyp-build's order). */
const BUILD_FIRST_LOADERS = ['node-gyp-build', 'node-gyp-build-optional-packages'];

export interface DroppedPrebuild {
  /** Relative to the package dir; a folder ends in `/`. */
  path: string;
  /** `platform`: another os/cpu; `libc`: the other libc; `superseded`: its package loads its own build/Release first. */
  reason: 'platform' | 'libc' | 'superseded';
}

/**
 * Removes, under `dir` (the package and its node_modules), every prebuild that no loader can
 * pick on `target`: `prebuilds/<platform>-<arch>` folders of another platform or cpu, on linux
 * the files tagged for the other libc, and every prebuild of a package whose loader is
 * node-gyp-build when the build compiled its own `build/Release/*.node` (node-gyp-build loads
 * that first, so the prebuilds are unreachable). Returns what went, sorted by path. Only
 * folders named `prebuilds` at a package's root are touched.
 */
export async function dropForeignPrebuilds(dir: string, target: Target): Promise<DroppedPrebuild[]> {
  const dropped: DroppedPrebuild[] = [];
  const drop = async (relative: string, reason: DroppedPrebuild['reason']) => {
    await rm(path.join(dir, relative), { recursive: true, force: true });
    dropped.push({ path: relative, reason });
  };
  for (const prebuilds of await findPrebuildFolders(dir)) {
    const packageDir = path.dirname(prebuilds);
    const superseded = await loadsOwnBuildFirst(packageDir);
    for (const entry of await readdir(prebuilds, { withFileTypes: true })) {
      if (!entry.isDirectory()) continue;
      const relativeFolder = path.relative(dir, path.join(prebuilds, entry.name));
      const serves = prebuildServes(`${relativeFolder}/`, target);
      if (serves === undefined) continue;
      if (!serves) {
        await drop(`${relativeFolder}/`, 'platform');
        continue;
      }
      if (superseded) {
        await drop(`${relativeFolder}/`, 'superseded');
        continue;
      }
      for (const file of await readdir(path.join(prebuilds, entry.name), { withFileTypes: true })) {
        const relative = path.join(relativeFolder, file.name);
        if (file.isFile() && prebuildServes(relative, target) === false) await drop(relative, 'libc');
      }
    }
  }
  return dropped.sort((a, b) => a.path.localeCompare(b.path));
}

/** Whether a package loads through node-gyp-build and has a compiled `build/Release/*.node`. */
async function loadsOwnBuildFirst(packageDir: string): Promise<boolean> {
  const manifest = await readFile(path.join(packageDir, 'package.json'), 'utf8').then((text) => JSON.parse(text) as { dependencies?: Record<string, string> }, () => undefined);
  if (!BUILD_FIRST_LOADERS.some((loader) => manifest?.dependencies?.[loader] !== undefined)) return false;
  const release = await readdir(path.join(packageDir, 'build', 'Release')).catch(() => [] as string[]);
  return release.some((name) => name.endsWith('.node'));
}

/** `prebuilds` folders at the root of the package and of every package installed below it. */
async function findPrebuildFolders(dir: string): Promise<string[]> {
  const packages = [dir, ...(await listAllPackages(dir)).map((installed) => installed.dir)];
  const found = await Promise.all(packages.map(async (packageDir) => {
    const folder = path.join(packageDir, 'prebuilds');
    return (await stat(folder).catch(() => undefined))?.isDirectory() ? folder : undefined;
  }));
  return found.filter((folder): folder is string => folder !== undefined);
}

/** node-gyp-build's tags of a prebuild file name (`argon2.armv8.glibc.node`, `node.napi.node`, `node.abi115.node`). */
interface PrebuildTags {
  file: string;
  runtime?: string;
  napi?: boolean;
  abi?: string;
  armv?: string;
  libc?: string;
  specificity: number;
}

function parseTags(file: string): PrebuildTags | undefined {
  const parts = file.split('.');
  if (parts.pop() !== 'node') return undefined;
  const tags: PrebuildTags = { file, specificity: 0 };
  for (const tag of parts) {
    if (tag === 'node' || tag === 'electron' || tag === 'node-webkit') tags.runtime = tag;
    else if (tag === 'napi') tags.napi = true;
    else if (tag.startsWith('abi')) tags.abi = tag.slice(3);
    else if (tag.startsWith('armv')) tags.armv = tag.slice(4);
    else if (tag === 'glibc' || tag === 'musl') tags.libc = tag;
    else continue; // uv and unknown tags do not make a file more specific here
    tags.specificity += 1;
  }
  return tags;
}

/** The ARM version node-gyp-build compares `armv` tags with: 8 on arm64, 7 for Node's armv7l builds. */
const ARM_VERSION: Partial<Record<string, string>> = { arm64: '8', arm: '7' };

/**
 * The prebuild node-gyp-build would load for `target` under a Node of NODE_MODULE_VERSION
 * `abi` (its own rules: the `<platform>-<arch>` folder, single-arch first; a file whose runtime,
 * abi — unless napi —, armv and libc tags fit, abi before napi, the most specific), relative to
 * `packageDir`; undefined when there is none.
 */
export async function pickPrebuild(packageDir: string, target: Target, abi: string): Promise<string | undefined> {
  const t = normalizeTarget(target);
  const folders = (await readdir(path.join(packageDir, 'prebuilds')).catch(() => [] as string[]))
    .map((name) => ({ name, parsed: parsePrebuildFolder(name) }))
    .filter((entry) => entry.parsed?.platform === t.os && entry.parsed.archs.includes(t.cpu))
    .sort((a, b) => (a.parsed?.archs.length ?? 0) - (b.parsed?.archs.length ?? 0));
  const folder = folders[0]?.name;
  if (!folder) return undefined;
  // node-gyp-build takes glibc on every os but linux-musl (it only detects Alpine).
  const libc = t.os === 'linux' && t.libc === 'musl' ? 'musl' : 'glibc';
  const armv = ARM_VERSION[t.cpu];
  const candidates = (await readdir(path.join(packageDir, 'prebuilds', folder)).catch(() => [] as string[]))
    .map(parseTags)
    .filter((tags): tags is PrebuildTags => tags !== undefined)
    .filter((tags) => (!tags.runtime || tags.runtime === 'node')
      && (!tags.abi || tags.abi === abi || tags.napi === true)
      && (!tags.armv || tags.armv === armv)
      && (!tags.libc || tags.libc === libc))
    .sort((a, b) => (a.abi !== b.abi ? (a.abi ? -1 : 1) : b.specificity - a.specificity));
  const winner = candidates[0];
  return winner ? path.join('prebuilds', folder, winner.file) : undefined;
}

/**
 * An install script whose only work is node-gyp-build's (`node-gyp-build`, optionally behind
 * `cross-env VAR=value …`): it loads a fitting prebuild, or compiles when there is none.
 */
export function isNodeGypBuildInstall(script: string): boolean {
  return /^(cross-env(\s+[A-Za-z_][A-Za-z0-9_]*=\S*)+\s+)?node-gyp-build(-optional-packages)?(\s+--?[\w-]+)*$/.test(script.trim());
}

/** A package whose install-time work a shipped prebuild already does for the target (`path` its directory, `file` the prebuild node-gyp-build will load, relative to it). */
export type PrebuiltUse = PrebuiltBinary;

/**
 * Splits the packages that would build something at install time into those a prebuild they
 * ship already serves on `target` (node-gyp-build packages: its install script only loads one,
 * or compiles binding.gyp when none fits) and the rest, which still need compiling.
 */
export async function prebuiltNeeds(needs: readonly NativeBuildNeed[], dir: string, target: Target, abi: string): Promise<{ prebuilt: PrebuiltUse[]; remaining: NativeBuildNeed[] }> {
  const prebuilt: PrebuiltUse[] = [];
  const remaining: NativeBuildNeed[] = [];
  for (const need of needs) {
    const onlyLoader = need.reasons.every((reason) => reason === 'binding.gyp' || reason === 'gypfile: true' || (reason.startsWith('install: ') && isNodeGypBuildInstall(reason.slice('install: '.length))));
    const usesLoader = need.reasons.some((reason) => reason.startsWith('install: '));
    const file = onlyLoader && usesLoader ? await pickPrebuild(path.join(dir, need.path), target, abi) : undefined;
    if (file) prebuilt.push({ name: need.name, path: need.path, file });
    else remaining.push(need);
  }
  return { prebuilt, remaining };
}
