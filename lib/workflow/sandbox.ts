/**
 * The sandbox that npm, every install script and the addon-loading check run in: bubblewrap
 * (`bwrap`, the sandbox Flatpak uses). A build sees the system's own directories read-only,
 * its workdir and npm cache read-write, the runtimes and npm read-only — and nothing else: not
 * the user's home, the cache dir's keys and run history, the builder's store, tokens file or
 * signing key. It gets a PID namespace and /proc of its own (no other process to read through
 * /proc/<pid>/environ), no capabilities, and dies with its parent, taking every daemon a script
 * left behind with it. The network stays open: npm needs the registry.
 */
import { execFile } from 'node:child_process';
import { lstat, readdir, readlink, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { BundleError } from '../errors.js';
import type { Isolation } from '../protocol.js';
import type { RunAs } from './runtime-registry.js';

/** `.bundlerc` `sandbox`: auto (bubblewrap where it works), required, or off. */
export type SandboxSetting = 'auto' | 'required' | 'off';
export const SANDBOX_SETTINGS: readonly SandboxSetting[] = ['auto', 'required', 'off'];

export type { Isolation };
export const ISOLATIONS: readonly Isolation[] = ['bubblewrap', 'bubblewrap+build-user', 'build-user', 'none'];

/** What a sandboxed command may see besides the system's directories. */
export interface SandboxView {
  cwd: string;
  /** Read-write: the build's workdir, its npm cache. */
  writable: readonly string[];
  /** Read-only: runtimes, npm, the host Node, toolchains. */
  readable: readonly string[];
}

export interface Sandbox {
  readonly setting: SandboxSetting;
  /** The isolation of a build run as `runAs` (or as this process). */
  isolation(runAs?: RunAs): Promise<Isolation>;
  /** Why a build would run without bubblewrap (for the summary's note); undefined when it does not. */
  unavailableReason(runAs?: RunAs): Promise<string | undefined>;
  /**
   * The command line that runs `command args` inside the sandbox (unchanged when there is none).
   * With `infoFd`, bubblewrap writes `{"child-pid": N}` to that file descriptor once the sandbox
   * exists (`infoFd` in the answer then says so): the way to kill a sandbox whose bwrap is not
   * finished setting up, since killing bwrap then would orphan its child.
   */
  wrap(command: string, args: readonly string[], view: SandboxView, runAs?: RunAs, options?: { infoFd?: number }): Promise<{ command: string; args: string[]; infoFd?: number }>;
}

/** Directories of the system every build reads (compilers, headers, libc, certificates). */
const SYSTEM_DIRS = ['/usr', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32', '/etc'];

/** A probe's answer: bubblewrap works for this uid, or why not. */
type Probe = { ok: true; bwrap: string } | { ok: false; reason: string };

export interface SandboxOptions {
  setting: SandboxSetting;
  /** PATH to look for `bwrap` on. */
  envPath: string | undefined;
  /** Runs the probe; a test may count calls. Defaults to running `bwrap … true`. */
  probe?: (bwrap: string, runAs?: RunAs) => Promise<string | undefined>;
}

/**
 * A sandbox for a scaffold's builds. Whether bubblewrap works is probed once per uid (user
 * namespaces may be allowed for root and not for a build user, or the reverse).
 */
export function createSandbox(options: SandboxOptions): Sandbox {
  const probes = new Map<string, Promise<Probe>>();
  let masks: Promise<string[]> | undefined;
  const probeFor = (runAs?: RunAs): Promise<Probe> => {
    const key = runAs ? `${runAs.uid}:${runAs.gid}` : 'self';
    let probe = probes.get(key);
    if (!probe) {
      probe = (async () => {
        const bwrap = await findOnPath('bwrap', options.envPath);
        if (!bwrap) return { ok: false, reason: 'bubblewrap (bwrap) is not installed' };
        const problem = await (options.probe ?? runProbe)(bwrap, runAs);
        return problem ? { ok: false, reason: `bubblewrap cannot create its namespaces here: ${problem}` } : { ok: true, bwrap };
      })();
      probes.set(key, probe);
    }
    return probe;
  };
  const use = async (runAs?: RunAs): Promise<Probe | undefined> => {
    if (options.setting === 'off') return undefined;
    const probe = await probeFor(runAs);
    // What to mask under /etc (~1,400 entries, each stat'ed): looked up as soon as bubblewrap is
    // known to work, so an early isolation() call has it ready by the first wrap.
    if (probe.ok) masks ??= unreadableEntries('/etc');
    if (!probe.ok && options.setting === 'required') {
      throw new BundleError('ERR_SANDBOX_UNAVAILABLE', `sandbox is "required" but ${probe.reason}.`, {
        hint: 'Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) and allow user namespaces (sysctl kernel.unprivileged_userns_clone=1 where it exists), or set sandbox: "auto".',
      });
    }
    return probe;
  };
  return {
    setting: options.setting,
    async isolation(runAs) {
      const probe = await use(runAs);
      if (probe?.ok) return runAs ? 'bubblewrap+build-user' : 'bubblewrap';
      return runAs ? 'build-user' : 'none';
    },
    async unavailableReason(runAs) {
      if (options.setting === 'off') return 'sandbox is off';
      const probe = await probeFor(runAs);
      return probe.ok ? undefined : probe.reason;
    },
    async wrap(command, args, view, runAs, wrapOptions = {}) {
      const probe = await use(runAs);
      if (!probe?.ok) return { command, args: [...args] };
      masks ??= unreadableEntries('/etc');
      const info = wrapOptions.infoFd !== undefined ? ['--info-fd', String(wrapOptions.infoFd)] : [];
      return { command: probe.bwrap, args: [...info, ...(await bubblewrapArgs(view, await masks)), '--', command, ...args], ...(wrapOptions.infoFd !== undefined ? { infoFd: wrapOptions.infoFd } : {}) };
    },
  };
}

/**
 * bubblewrap's arguments for a view: a fresh root holding only the system's directories
 * (read-only; under /etc, whatever an ordinary user could not read is masked, since a build run
 * as root in its namespace still owns root's files), the view's paths, and private /proc,
 * /dev, /tmp.
 */
export async function bubblewrapArgs(view: SandboxView, masked: readonly string[]): Promise<string[]> {
  const args = ['--unshare-all', '--share-net', '--die-with-parent', '--new-session', '--cap-drop', 'ALL'];
  for (const dir of SYSTEM_DIRS) {
    const info = await lstat(dir).catch(() => undefined);
    if (!info) continue;
    if (info.isSymbolicLink()) args.push('--symlink', await readlink(dir), dir);
    else if (info.isDirectory()) args.push('--ro-bind', dir, dir);
  }
  for (const entry of masked) {
    const info = await lstat(entry).catch(() => undefined);
    if (info?.isDirectory()) args.push('--tmpfs', entry);
    else if (info?.isFile()) args.push('--ro-bind', '/dev/null', entry);
  }
  // The name server list may live outside /etc (systemd-resolved links it into /run).
  const resolv = await realpath('/etc/resolv.conf').catch(() => undefined);
  const extraReadable = resolv && !isUnder(resolv, SYSTEM_DIRS) ? [resolv] : [];
  args.push('--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', '--tmpfs', '/var/tmp', '--tmpfs', '/run');
  // Parents before children, so a read-write cache inside a read-only tree stays writable.
  const mounts = [
    ...dedupe([...view.readable, ...extraReadable]).map((dir) => ({ dir, writable: false })),
    ...dedupe(view.writable).map((dir) => ({ dir, writable: true })),
  ]
    .filter(({ dir, writable }) => writable || !isUnder(dir, SYSTEM_DIRS))
    .sort((a, b) => a.dir.length - b.dir.length);
  for (const { dir, writable } of mounts) {
    if (!(await stat(dir).catch(() => undefined))) continue;
    args.push(writable ? '--bind' : '--ro-bind', dir, dir);
  }
  args.push('--chdir', view.cwd);
  return args;
}

/**
 * Files and directories under `root` that others may not read (shadow, private keys), in the
 * order a depth-first walk meets them. Each directory's entries are stat'ed at once (libuv's
 * pool) rather than one after another: /etc is ~1,400 entries and this is on a build's path.
 */
export async function unreadableEntries(root: string): Promise<string[]> {
  const walk = async (dir: string): Promise<string[]> => {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    const found = await Promise.all(entries.map(async (entry): Promise<string[]> => {
      if (entry.isSymbolicLink()) return [];
      const full = path.join(dir, entry.name);
      const info = await lstat(full).catch(() => undefined);
      if (!info) return [];
      if (entry.isDirectory()) return (info.mode & 0o005) !== 0o005 ? [full] : walk(full);
      return entry.isFile() && (info.mode & 0o004) === 0 ? [full] : [];
    }));
    return found.flat();
  };
  return walk(root);
}

function isUnder(file: string, dirs: readonly string[]): boolean {
  return dirs.some((dir) => file === dir || file.startsWith(`${dir}/`));
}

function dedupe(dirs: readonly string[]): string[] {
  return [...new Set(dirs.map((dir) => path.resolve(dir)))];
}

async function findOnPath(name: string, envPath: string | undefined): Promise<string | undefined> {
  for (const dir of (envPath || '/usr/local/bin:/usr/bin:/bin').split(path.delimiter).filter(Boolean)) {
    const candidate = path.join(dir, name);
    const info = await stat(candidate).catch(() => undefined);
    if (info?.isFile() && (info.mode & 0o111) !== 0) return candidate;
  }
  return undefined;
}

/** Runs `bwrap … true` as the build would; returns its error output when it fails. */
function runProbe(bwrap: string, runAs?: RunAs): Promise<string | undefined> {
  const args = ['--unshare-all', '--share-net', '--die-with-parent', '--new-session', '--cap-drop', 'ALL', '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev', 'true'];
  return new Promise((resolve) => {
    execFile(bwrap, args, { timeout: 10_000, cwd: '/', ...(runAs ? { uid: runAs.uid, gid: runAs.gid } : {}) }, (error, _stdout, stderr) => {
      resolve(error ? (String(stderr).trim().split('\n').pop() || error.message) : undefined);
    });
  });
}
