/**
 * What a build needs from the machine: free disk (checked before it starts), a uid of its
 * own when the builder runs as root (reachability of directories: lib/workflow/run-as.ts).
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, readdir, rm, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { BundleError } from '../errors.js';
import type { RunAs } from '../workflow/runtime-registry.js';

/** Free bytes for an unprivileged writer on the filesystem holding `dir` (statfs: Linux and macOS). */
export async function freeDiskBytes(dir: string): Promise<number> {
  const info = await statfs(dir);
  return Number(info.bavail) * Number(info.bsize);
}

export async function checkFreeDisk(dir: string, minFree: number): Promise<number> {
  const free = await freeDiskBytes(dir);
  if (free < minFree) {
    throw new BundleError('ERR_DISK_FULL', `Only ${free} bytes free under ${dir}; a build needs at least ${minFree} (builder.minFreeDisk).`, { details: { free, minFree } });
  }
  return free;
}

/**
 * The uids builds run as, one per running build, so a hostile install script cannot read
 * another build's workdir (0700, owned by that build's uid) or its processes' /proc entries.
 */
export class UidPool {
  private readonly free: number[] = [];

  constructor(readonly first: number, readonly last: number) {
    for (let uid = last; uid >= first; uid -= 1) this.free.push(uid);
  }

  get size(): number {
    return this.last - this.first + 1;
  }

  /** The lowest free uid (gid = uid); the queue's slots never exceed the pool's size. */
  acquire(): RunAs {
    const uid = this.free.pop();
    if (uid === undefined) throw new BundleError('ERR_INTERNAL', 'No free build uid: builder.slots is larger than builder.runAsUids.');
    return { uid, gid: uid };
  }

  release(user: RunAs): void {
    if (!this.free.includes(user.uid)) {
      this.free.push(user.uid);
      this.free.sort((a, b) => b - a);
    }
  }
}

/** Where builders on this machine say which build uids they use (tmpfs: gone with a reboot, as the builders are). */
export function defaultClaimsDir(): string {
  return process.platform === 'linux' ? '/run/bundle-dispatch/uid-claims' : path.join(tmpdir(), 'bundle-dispatch-uid-claims');
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Claims a uid range for this process's builder, or refuses with ERR_CONFIG when a live builder
 * of another process on this machine claimed an overlapping one: a builder kills every process
 * of its range when it starts, so two builders sharing uids would kill each other's builds.
 * Claims of processes that are gone are removed. Two builders starting at the same instant with
 * overlapping ranges may both refuse (never both start). Returns the release.
 */
export async function claimUidRange(range: { first: number; last: number }, builder: string, dir = defaultClaimsDir()): Promise<() => Promise<void>> {
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const own = path.join(dir, `${process.pid}.json`);
  await writeFile(own, JSON.stringify({ pid: process.pid, first: range.first, last: range.last, builder, since: new Date().toISOString() }), { mode: 0o644 });
  for (const name of await readdir(dir)) {
    const file = path.join(dir, name);
    if (file === own || !name.endsWith('.json')) continue;
    const claim = await readFile(file, 'utf8').then((text) => JSON.parse(text) as { pid: number; first: number; last: number; builder?: string; since?: string }, () => undefined);
    if (!claim || !alive(claim.pid)) {
      await rm(file, { force: true });
      continue;
    }
    if (claim.first <= range.last && range.first <= claim.last) {
      await rm(own, { force: true });
      throw new BundleError('ERR_CONFIG', `builder.runAsUids ${range.first}-${range.last} overlaps ${claim.first}-${claim.last}, the build uids of the builder ${claim.builder ?? '?'} (pid ${claim.pid}, since ${claim.since ?? '?'}) on this machine: each builder kills the processes of its uids when it starts, so they would kill each other's builds.`, {
        hint: `Give each builder on this machine its own range (--config with builder.runAsUids, or BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS=62000-62999). If pid ${claim.pid} is not a builder, remove ${file}.`,
      });
    }
  }
  return () => rm(own, { force: true });
}

/** Parses `builder.runAsUids`: a range, or undefined for "off". */
export function parseUidRange(text: string): { first: number; last: number } | undefined {
  if (text === 'off') return undefined;
  const match = /^(\d+)-(\d+)$/.exec(text);
  if (!match) throw new BundleError('ERR_CONFIG', `builder.runAsUids: "${text}" is not first-last or off.`);
  return { first: Number(match[1]), last: Number(match[2]) };
}

/**
 * Kills every process whose uid is in [first, last] (`ps`, Linux and macOS). Those uids are
 * the builder's alone: whatever runs as one of them after its build ended (a daemon an
 * install script detached from npm's process group, orphans of a crashed builder) must not
 * live on to read the next build that gets the same uid. Returns the pids signalled.
 */
export async function killUidProcesses(first: number, last: number): Promise<number[]> {
  const stdout = await new Promise<string>((resolve) => {
    execFile('ps', ['-A', '-o', 'pid=,uid='], (error, out) => resolve(error ? '' : out));
  });
  const pids: number[] = [];
  for (const line of stdout.split('\n')) {
    const [pid, uid] = line.trim().split(/\s+/).map(Number);
    if (pid && uid !== undefined && uid >= first && uid <= last) pids.push(pid);
  }
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  return pids;
}
