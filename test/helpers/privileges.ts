/**
 * Root reads any file whatever its mode, so a test of an unreadable file would prove nothing
 * as root (CI runs as root). `withoutRoot` runs such a check with the effective uid of
 * `nobody` and gives root back afterwards; as any other user it just runs the check.
 */
import { chmod } from 'node:fs/promises';

const NOBODY = 65534;

/** `opened`: directories made for the test (mkdtemp makes them 0700) that nobody must pass through. */
export async function withoutRoot<T>(check: () => Promise<T>, opened: readonly string[] = []): Promise<T> {
  if (process.getuid?.() !== 0) return check();
  // seteuid is not offered in worker threads; vitest's default pool (forks) is a process per file.
  if (typeof process.seteuid !== 'function') throw new Error('withoutRoot needs a process of its own (vitest pool "forks").');
  for (const dir of opened) await chmod(dir, 0o755);
  // The file operations run on libuv's threads: glibc changes the euid of every thread.
  process.seteuid(NOBODY);
  try {
    return await check();
  } finally {
    process.seteuid(0);
  }
}
