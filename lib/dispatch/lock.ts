/**
 * One run at a time per destination + input: overlapping cron runs wait (`--wait-lock`) or
 * stop with ERR_LOCKED. The lock is a file created with O_EXCL on this machine (S3 has no
 * reliable create-if-absent; s3rver ignores If-None-Match), holding the owner's pid, so a lock
 * left by a process that died is taken over.
 */
import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { mkdir, open, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { BundleError, abortError } from '../errors.js';

export interface LockOwner {
  pid: number;
  host: string;
  runId: string;
  since: string;
}

export interface HeldLock {
  file: string;
  release(): Promise<void>;
}

const POLL_MS = 250;

/** The lock file of a destination + input. */
export function lockFile(dir: string, destination: string, inputSha256: string): string {
  return path.join(dir, `${createHash('sha256').update(`${destination}\n${inputSha256}`).digest('hex').slice(0, 32)}.lock`);
}

/** True when a process with this pid exists on this machine. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes the lock, waiting up to `waitMs` for its holder; ERR_LOCKED names the run holding it.
 *
 * @example
 * const lock = await acquireLock(file, { runId, waitMs: 60_000, signal });
 * try { … } finally { await lock.release(); }
 */
export async function acquireLock(file: string, options: { runId: string; waitMs: number; signal?: AbortSignal; onWait?: (owner: LockOwner) => void }): Promise<HeldLock> {
  await mkdir(path.dirname(file), { recursive: true });
  const deadline = Date.now() + options.waitMs;
  const me: LockOwner = { pid: process.pid, host: hostname(), runId: options.runId, since: new Date().toISOString() };
  let told = false;
  for (;;) {
    if (options.signal?.aborted) throw abortError(options.signal);
    try {
      const handle = await open(file, 'wx', 0o600);
      await handle.writeFile(JSON.stringify(me));
      await handle.close();
      return { file, release: () => rm(file, { force: true }) };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const owner = await readFile(file, 'utf8').then((text) => JSON.parse(text) as LockOwner, () => undefined);
    if (owner && owner.host === me.host && !processAlive(owner.pid)) {
      // Its process is gone: the lock is stale.
      await rm(file, { force: true });
      continue;
    }
    if (!owner) {
      // Being written right now, or garbage: look again shortly.
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      if (Date.now() < deadline + 2000) continue;
    }
    if (Date.now() >= deadline) {
      throw new BundleError('ERR_LOCKED', `Another run (${owner?.runId ?? 'unknown'}, pid ${owner?.pid ?? '?'} on ${owner?.host ?? '?'}, since ${owner?.since ?? '?'}) is dispatching the same input to the same destination.`, {
        hint: 'Wait for it (bundle-dispatch status <run-id>), or pass --wait-lock <seconds> to queue behind it.',
        details: { ...(owner ? { owner } : {}), file },
      });
    }
    if (!told && owner) {
      told = true;
      options.onWait?.(owner);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}
