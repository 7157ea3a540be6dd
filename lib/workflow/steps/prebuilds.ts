/**
 * Prebuilt binaries packages ship for every platform (`prebuilds/<platform>-<arch>/…`, the
 * layout of prebuildify and node-gyp-build). A bundle is locked to one os/cpu/libc, so a
 * prebuild for another platform can never be chosen by node-gyp-build at run time: it is
 * dropped from the bundle (and so never loaded by verify), and the build says which.
 */
import { opendir, readFile, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { normalizeTarget, type Target } from '../../target.js';

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

/** `prebuilds` folders at the root of the package and of every package in node_modules. */
async function findPrebuildFolders(dir: string): Promise<string[]> {
  const found: string[] = [];
  const visitPackage = async (packageDir: string): Promise<void> => {
    const entries = await readdir(packageDir, { withFileTypes: true }).catch(() => []);
    if (entries.some((entry) => entry.isDirectory() && entry.name === 'prebuilds')) found.push(path.join(packageDir, 'prebuilds'));
    if (entries.some((entry) => entry.isDirectory() && entry.name === 'node_modules')) await visitModules(path.join(packageDir, 'node_modules'));
  };
  const visitModules = async (modules: string): Promise<void> => {
    const handle = await opendir(modules).catch(() => undefined);
    if (!handle) return;
    for await (const entry of handle) {
      if (!entry.isDirectory() || entry.name.startsWith('.')) continue;
      const full = path.join(modules, entry.name);
      if (entry.name.startsWith('@')) {
        for (const scoped of await readdir(full, { withFileTypes: true }).catch(() => [])) {
          if (scoped.isDirectory()) await visitPackage(path.join(full, scoped.name));
        }
      } else {
        await visitPackage(full);
      }
    }
  };
  await visitPackage(dir);
  return found;
}
