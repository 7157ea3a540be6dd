/**
 * The bundle step: every installed top-level package into `bundleDependencies`, the platform
 * locked, install scripts neutralized (the work they do is done here, once, for the target)
 * and node-gyp's intermediates dropped (they hold absolute paths of the build machine).
 */
import { readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import semver from 'semver';
import type { Target } from '../../target.js';
import type { PackageJson } from './unpack.js';

export interface InstalledPackage {
  name: string;
  dir: string;
}

/** Lifecycle scripts npm runs when a package is installed (as a dependency or a tarball). */
export const INSTALL_SCRIPTS = ['preinstall', 'install', 'postinstall'] as const;

/** node-gyp's build products that are not needed at run time and embed absolute paths. */
const GYP_INTERMEDIATES = ['Makefile', 'config.gypi', 'binding.Makefile', 'node_gyp_bins', 'gyp-mac-tool', 'gyp-flock-tool'];
const GYP_CONFIG_INTERMEDIATES = ['obj.target', 'obj', '.deps'];

async function isDirectory(file: string): Promise<boolean> {
  return (await stat(file).catch(() => undefined))?.isDirectory() ?? false;
}

async function exists(file: string): Promise<boolean> {
  return (await stat(file).catch(() => undefined)) !== undefined;
}

/** Names of the packages directly in `node_modules` (scoped names whole), sorted. */
export async function listTopLevelPackages(packageDir: string): Promise<InstalledPackage[]> {
  const nodeModules = path.join(packageDir, 'node_modules');
  const found: InstalledPackage[] = [];
  const entries = await readdir(nodeModules, { withFileTypes: true }).catch(() => []);
  for (const entry of entries) {
    if (entry.name.startsWith('.') || !entry.isDirectory()) continue;
    if (entry.name.startsWith('@')) {
      const scoped = await readdir(path.join(nodeModules, entry.name), { withFileTypes: true });
      for (const inner of scoped) {
        if (inner.isDirectory() && !inner.name.startsWith('.')) {
          found.push({ name: `${entry.name}/${inner.name}`, dir: path.join(nodeModules, entry.name, inner.name) });
        }
      }
    } else {
      found.push({ name: entry.name, dir: path.join(nodeModules, entry.name) });
    }
  }
  return found.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Every package installed anywhere below `packageDir/node_modules`, depth first. */
export async function listAllPackages(packageDir: string): Promise<InstalledPackage[]> {
  const all: InstalledPackage[] = [];
  const queue = [packageDir];
  for (let dir = queue.shift(); dir !== undefined; dir = queue.shift()) {
    for (const found of await listTopLevelPackages(dir)) {
      all.push(found);
      queue.push(found.dir);
    }
  }
  return all;
}

/**
 * The `engines.node` a bundle gets: the major it was built for, narrowed by what the package
 * itself asked for within that major (`>=22.12` stays `>=22.12.0 <23.0.0-0`).
 */
export function lockedNodeRange(runtimeVersion: string, requested: string | undefined): string {
  const major = semver.major(runtimeVersion);
  const whole = `${major}.x`;
  if (!requested || !semver.validRange(requested) || semver.subset(whole, requested)) return whole;
  const within = semver.minVersion(`${requested} >=${major}.0.0-0 <${major + 1}.0.0-0`);
  const floor = within && semver.satisfies(within, `${major}.x`) ? within.version : runtimeVersion;
  return `>=${floor} <${major + 1}.0.0-0`;
}

/** Sets bundleDependencies and locks os/cpu/libc/engines.node on a package.json object. */
export function lockPackage(packageJson: PackageJson, options: { bundled: string[]; target: Target; runtimeVersion: string }): PackageJson {
  const engines = (typeof packageJson.engines === 'object' && packageJson.engines !== null ? packageJson.engines : {}) as Record<string, string>;
  const requested = typeof engines.node === 'string' ? engines.node : undefined;
  const locked: PackageJson = { ...packageJson };
  delete locked.bundledDependencies;
  locked.bundleDependencies = options.bundled;
  locked.os = [options.target.os];
  locked.cpu = [options.target.cpu];
  if (options.target.os === 'linux') locked.libc = [options.target.libc ?? 'glibc'];
  else delete locked.libc;
  locked.engines = { ...engines, node: lockedNodeRange(options.runtimeVersion, requested) };
  return locked;
}

/**
 * Removes install scripts from a package.json and turns off node-gyp's implicit
 * `node-gyp rebuild` (npm's `rebuild-bundle` would otherwise recompile on the consumer's
 * machine). Returns whether anything changed.
 */
export function neutralizeInstall(packageJson: PackageJson, hasBindingGyp: boolean): boolean {
  let changed = false;
  const scripts = packageJson.scripts as Record<string, string> | undefined;
  if (scripts && typeof scripts === 'object') {
    for (const name of INSTALL_SCRIPTS) {
      if (name in scripts) {
        delete scripts[name];
        changed = true;
      }
    }
  }
  if (hasBindingGyp && packageJson.gypfile !== false) {
    packageJson.gypfile = false;
    changed = true;
  }
  return changed;
}

/** Whether a package has work for `npm rebuild`: an install script, or node-gyp's implicit one. */
async function hasInstallWork(dir: string): Promise<boolean> {
  const json = await readJson(path.join(dir, 'package.json'));
  if (!json) return false;
  const scripts = (json.scripts ?? {}) as Record<string, unknown>;
  if (INSTALL_SCRIPTS.some((name) => typeof scripts[name] === 'string')) return true;
  return json.gypfile !== false && (await exists(path.join(dir, 'binding.gyp')));
}

/** The packages (and `.` for the root) that have install scripts or a binding.gyp to build. */
export async function packagesWithInstallWork(packageDir: string): Promise<string[]> {
  const all = await listAllPackages(packageDir);
  const flags = await Promise.all([{ name: '.', dir: packageDir }, ...all].map(async (pkg) => ((await hasInstallWork(pkg.dir)) ? pkg.name : undefined)));
  return flags.filter((name): name is string => name !== undefined);
}

async function readJson(file: string): Promise<PackageJson | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as PackageJson;
  } catch {
    return undefined;
  }
}

/** Neutralizes every bundled package's install; returns the names changed. */
export async function neutralizeDependencies(packages: readonly InstalledPackage[]): Promise<string[]> {
  const changed: string[] = [];
  await Promise.all(packages.map(async (pkg) => {
    const file = path.join(pkg.dir, 'package.json');
    const json = await readJson(file);
    if (!json) return;
    if (neutralizeInstall(json, await exists(path.join(pkg.dir, 'binding.gyp')))) {
      await writeFile(file, `${JSON.stringify(json, null, 2)}\n`);
      changed.push(pkg.name);
    }
  }));
  return changed.sort();
}

/** Deletes node-gyp intermediates under `<pkg>/build`, keeping what loads at run time. */
export async function dropGypIntermediates(packageDirs: readonly string[]): Promise<string[]> {
  const removed: string[] = [];
  await Promise.all(packageDirs.map(async (dir) => {
    const build = path.join(dir, 'build');
    if (!(await isDirectory(build)) || !(await exists(path.join(dir, 'binding.gyp')) || await exists(path.join(build, 'config.gypi')))) return;
    const entries = await readdir(build, { withFileTypes: true });
    for (const entry of entries) {
      const full = path.join(build, entry.name);
      if (GYP_INTERMEDIATES.includes(entry.name) || entry.name.endsWith('.mk')) {
        await rm(full, { recursive: true, force: true });
        removed.push(full);
      } else if (entry.isDirectory()) {
        for (const inner of GYP_CONFIG_INTERMEDIATES) {
          const target = path.join(full, inner);
          if (await exists(target)) {
            await rm(target, { recursive: true, force: true });
            removed.push(target);
          }
        }
      }
    }
  }));
  return removed.sort();
}
