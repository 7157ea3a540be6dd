// One function, not semver's index (48 modules): the main command's start-up loads this.
import semverMajor from 'semver/functions/major.js';
import type { Target } from './target.js';

/** npm pack's file-name stem for a package name: `@scope/name` → `scope-name`. */
export function packFileStem(name: string): string {
  return name.startsWith('@') ? name.slice(1).replace('/', '-') : name;
}

/**
 * `{pkgfile}-{version}-{os}-{cpu}[-{libc}]-node{major}.tgz`: the file name of a bundle. Linux
 * names always carry their libc so a glibc and a musl bundle never share a name.
 */
export function bundleFileName(options: { name: string; version: string; target: Target; nodeVersion: string }): string {
  const { os, cpu, libc } = options.target;
  const platform = os === 'linux' ? `${os}-${cpu}-${libc ?? 'glibc'}` : `${os}-${cpu}`;
  return `${packFileStem(options.name)}-${options.version}-${platform}-node${semverMajor(options.nodeVersion)}.tgz`;
}
