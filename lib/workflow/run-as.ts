/**
 * Running untrusted code (install scripts, addons' init) as an unprivileged user: the
 * directories it needs must be reachable, and its workdir and npm cache become its own.
 */
import { chmod, lchown, mkdir, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { BundleError } from '../errors.js';
import type { RunAs } from './runtime-registry.js';
import type { BuildDirs } from './types.js';

/**
 * Build users must be able to pass through (x) every directory above their caches and
 * runtimes; root's home (0700) is the usual trap. Returns the first directory that blocks.
 */
export async function findBlockingAncestor(dir: string): Promise<string | undefined> {
  let current = path.resolve(dir);
  const chain: string[] = [];
  for (;;) {
    chain.unshift(current);
    const parent = path.dirname(current);
    if (parent === current) break;
    current = parent;
  }
  for (const entry of chain) {
    const info = await stat(entry).catch(() => undefined);
    if (!info) return undefined; // created later, by us, with a passable mode
    if ((info.mode & 0o001) === 0) return entry;
  }
  return undefined;
}

/**
 * ERR_CONFIG for a directory build users cannot reach: which directory stops them, its mode and
 * owner (a cache dir the main command made is 0700), and the two ways out.
 *
 * @example
 * await unreachableError('cacheDir', '/root/.cache/bd', '/root/.cache/bd', 'the build users (uids 61000-61099)', '/var/cache/bundle-dispatch')
 * // ERR_CONFIG: cacheDir /root/.cache/bd cannot be reached by the build users (…): /root/.cache/bd itself has mode 0700 (owner uid 0), …
 */
export async function unreachableError(what: string, dir: string, blocking: string, who: string, instead: string): Promise<BundleError> {
  const info = await stat(blocking).catch(() => undefined);
  const mode = info ? `mode 0${(info.mode & 0o777).toString(8)} (owner uid ${info.uid})` : 'no execute permission for others';
  const where = path.resolve(blocking) === path.resolve(dir) ? `${blocking} itself has ${mode}` : `its parent ${blocking} has ${mode}`;
  return new BundleError('ERR_CONFIG', `${what} ${dir} cannot be reached by ${who}: ${where}, which lets no other user pass through.`, {
    hint: `Allow passing through it (chmod o+x ${blocking}; nothing becomes listable or readable by that), or use a ${what} whose parents all allow it, e.g. ${instead}.`,
    details: { dir, blocking },
  });
}

/** Fails with a clear ERR_CONFIG when the build user could not reach `dir`. */
export async function assertReachable(what: string, dir: string, user: RunAs): Promise<void> {
  const blocking = await findBlockingAncestor(dir);
  if (blocking) throw await unreachableError(`the ${what}`, dir, blocking, `the build user (uid ${user.uid})`, what.includes('cache') ? '/var/cache/bundle-dispatch' : '/var/tmp/bundle-dispatch');
}

/**
 * Gives the build's directories to the unprivileged user: the workdir 0700 (other builds'
 * users cannot look in) and its own npm cache.
 */
export async function handOver(dirs: BuildDirs, user: RunAs): Promise<void> {
  // The work root itself is made passable below; everything above it must already be.
  await assertReachable('work dir', path.dirname(path.dirname(dirs.work)), user);
  await assertReachable('npm cache', dirs.cache, user);
  const walk = async (dir: string): Promise<void> => {
    await lchown(dir, user.uid, user.gid);
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(full);
      else await lchown(full, user.uid, user.gid);
    }
  };
  await mkdir(dirs.cache, { recursive: true });
  await chmod(dirs.work, 0o700);
  // The work root only needs to be passable (x), never listable, for the build users.
  await chmod(path.dirname(dirs.work), 0o711);
  // The cache is walked only when it is not the user's yet (first build of that uid).
  const cacheOwner = (await stat(dirs.cache)).uid;
  await Promise.all([walk(dirs.work), cacheOwner === user.uid ? Promise.resolve() : walk(dirs.cache)]);
}

