/**
 * Everything that touches npm itself: where it is, the environment and npmrc a build gives it,
 * spawning it in its own process group, sampling its memory, and reading its error output.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { realpathSync, statSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { BundleError, abortError } from '../errors.js';
import { redact } from '../redact.js';
import type { BuildConfig, BuildDirs, RegistryAuth } from './types.js';

const execFileAsync = promisify(execFile);

/**
 * Variables a build passes from the caller's environment to npm and lifecycle scripts. Anything
 * else (AWS credentials, builder tokens, npm_config_* with auth) never reaches them.
 */
export const ENV_ALLOW_LIST: readonly string[] = [
  'LANG', 'LANGUAGE', 'LC_ALL', 'LC_CTYPE', 'LC_MESSAGES', 'TZ',
  'HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY', 'http_proxy', 'https_proxy', 'no_proxy',
  'SSL_CERT_FILE', 'SSL_CERT_DIR', 'NODE_EXTRA_CA_CERTS',
  'CC', 'CXX', 'CFLAGS', 'CXXFLAGS', 'LDFLAGS', 'MAKEFLAGS', 'JOBS', 'PYTHON',
];

/** Finds npm's CLI script from a PATH. npm runs on the host Node; scripts run on the build's runtime. */
export function locateNpm(envPath: string | undefined): string {
  for (const dir of (envPath ?? '').split(path.delimiter).filter(Boolean)) {
    const candidate = path.join(dir, 'npm');
    try {
      if (!statSync(candidate).isFile()) continue;
      const real = realpathSync(candidate);
      const cli = path.join(path.dirname(real), 'npm-cli.js');
      if (statSync(cli).isFile()) return cli;
    } catch {
      // not here; keep looking
    }
  }
  throw new BundleError('ERR_NPM_FAILED', 'npm was not found on PATH.', { hint: 'Install npm (it ships with Node.js) or put it on PATH.' });
}

/**
 * npm's version: what `npm --version` prints, which is the `version` of npm's own package.json
 * beside its `bin/npm-cli.js`. Read from there, it costs no second npm start-up (about 0.2 s of
 * CPU, competing with the install on a small machine); asked of npm when that file is not npm's.
 */
export async function readNpmVersion(nodePath: string, npmCli: string, env: Record<string, string>): Promise<string> {
  const manifest = await readFile(path.join(path.dirname(npmCli), '..', 'package.json'), 'utf8').then((text) => JSON.parse(text) as { name?: unknown; version?: unknown }, () => undefined);
  if (manifest?.name === 'npm' && typeof manifest.version === 'string' && manifest.version !== '') return manifest.version;
  const { stdout } = await execFileAsync(nodePath, [npmCli, '--version'], { env });
  return stdout.trim();
}

/** `//host/path/:` — the key npm uses for per-registry settings. */
export function nerfDart(url: string): string {
  const parsed = new URL(url);
  const pathname = parsed.pathname.endsWith('/') ? parsed.pathname : `${parsed.pathname}/`;
  return `//${parsed.host}${pathname}`;
}

/** The secrets a config carries, for redaction. */
export function configSecrets(config: Pick<BuildConfig, 'auth'>): string[] {
  const secrets: string[] = [];
  for (const auth of Object.values(config.auth)) {
    if (auth.token) secrets.push(auth.token);
    if (auth.basic) secrets.push(auth.basic, Buffer.from(auth.basic).toString('base64'));
  }
  return secrets;
}

/** Writes the build's private npmrc (mode 0600): registry, scoped registries, tokens. */
export async function writeNpmrc(file: string, config: Pick<BuildConfig, 'registry' | 'scopes' | 'auth'>): Promise<void> {
  const lines = [`registry=${config.registry}`];
  for (const [scope, url] of Object.entries(config.scopes)) {
    lines.push(`${scope.startsWith('@') ? scope : `@${scope}`}:registry=${url}`);
  }
  for (const [url, auth] of Object.entries(config.auth) as Array<[string, RegistryAuth]>) {
    if (auth.token) lines.push(`${nerfDart(url)}:_authToken=${auth.token}`);
    if (auth.basic) lines.push(`${nerfDart(url)}:_auth=${Buffer.from(auth.basic).toString('base64')}`);
  }
  await writeFile(file, `${lines.join('\n')}\n`, { mode: 0o600 });
}

/**
 * The environment npm and lifecycle scripts get: the allow-listed part of the caller's env,
 * the build's own HOME/TMPDIR/npmrc/cache, and `PATH` with the chosen runtime first.
 */
export function buildNpmEnv(options: {
  baseEnv: NodeJS.ProcessEnv;
  allow: readonly string[];
  dirs: BuildDirs;
  extra: Record<string, string>;
  runtimeBinDir?: string;
  nodedir?: string;
}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of [...ENV_ALLOW_LIST, ...options.allow]) {
    const value = options.baseEnv[name];
    if (value !== undefined) env[name] = value;
  }
  const basePath = options.baseEnv.PATH ?? '/usr/local/bin:/usr/bin:/bin';
  Object.assign(env, {
    PATH: options.runtimeBinDir ? `${options.runtimeBinDir}${path.delimiter}${basePath}` : basePath,
    HOME: options.dirs.home,
    TMPDIR: options.dirs.tmp,
    npm_config_userconfig: options.dirs.npmrc,
    // An empty global config: the machine's own npmrc files must not leak settings or tokens in.
    npm_config_globalconfig: path.join(options.dirs.work, 'global-npmrc'),
    npm_config_cache: options.dirs.cache,
    npm_config_update_notifier: 'false',
    npm_config_fund: 'false',
    npm_config_audit: 'false',
    npm_config_progress: 'false',
    npm_config_color: 'false',
  });
  if (options.nodedir) env.npm_config_nodedir = options.nodedir;
  return { ...env, ...options.extra };
}

export interface NpmRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The last lines npm wrote (both streams), for error messages. */
  tail: string[];
  /**
   * npm's own error lines (`npm error …`, `npm ERR! …`, `gyp ERR! …`), redacted, kept apart
   * from the tail: npm prints the cause first and may follow it with a long usage text that
   * pushes it out of the tail. Bounded: the first ERROR_HEAD_LINES and the last
   * ERROR_TAIL_LINES, with a `…` line standing for what was dropped between them.
   */
  errors: string[];
  peakMemory: number;
}

export interface SpawnNpmOptions {
  command: string;
  argv: string[];
  cwd: string;
  env: Record<string, string>;
  signal?: AbortSignal;
  secrets: readonly string[];
  onLine: (line: string, stream: 'stdout' | 'stderr') => void;
  onSpawn?: (child: ChildProcess) => void;
  onMemory?: (rss: number, peak: number) => void;
  /** Run npm (and so every script) as this unprivileged user. */
  runAs?: { uid: number; gid: number };
  /**
   * The command is bwrap writing its sandbox's pid to this descriptor (3): cancelling kills that
   * pid (and so the whole sandbox) rather than only bwrap, which orphans its child when it is
   * killed before it finished setting up.
   */
  sandboxInfoFd?: 3;
  /** How often to sample the memory of npm and what it started (the first samples come sooner: 100, 200, 400 ms). */
  memoryIntervalMs?: number;
}

const TAIL_LINES = 60;
const ERROR_HEAD_LINES = 60;
const ERROR_TAIL_LINES = 20;
const ERROR_LINE = /^(npm (error|ERR!)|gyp ERR!)/;

/** Collects npm's error lines: the first ones whole (the cause), a rolling window of the last. */
class ErrorLines {
  private readonly head: string[] = [];
  private readonly last: string[] = [];
  private dropped = 0;

  add(line: string): void {
    if (!ERROR_LINE.test(line)) return;
    if (this.head.length < ERROR_HEAD_LINES) {
      this.head.push(line);
      return;
    }
    this.last.push(line);
    if (this.last.length > ERROR_TAIL_LINES) {
      this.last.shift();
      this.dropped += 1;
    }
  }

  lines(): string[] {
    return [...this.head, ...(this.dropped > 0 ? [`npm error … (${this.dropped} more lines)`] : []), ...this.last];
  }
}
const KILL_GRACE_MS = 2000;
/** How long npm's output may stay open after npm and its group are gone. */
const PIPE_DRAIN_MS = 2000;

/**
 * Spawns npm in a process group of its own so that cancelling kills every lifecycle script and
 * compiler it started, not just npm. Resolves when npm has exited and its group is gone.
 */
export async function spawnNpm(options: SpawnNpmOptions): Promise<NpmRun> {
  if (options.signal?.aborted) throw abortError(options.signal);
  const child = spawn(options.command, options.argv, {
    cwd: options.cwd,
    env: options.env,
    detached: true,
    stdio: options.sandboxInfoFd ? ['ignore', 'pipe', 'pipe', 'pipe'] : ['ignore', 'pipe', 'pipe'],
    ...(options.runAs ? { uid: options.runAs.uid, gid: options.runAs.gid } : {}),
  });
  const sandboxPid = options.sandboxInfoFd ? readSandboxPid(child.stdio[3] as NodeJS.ReadableStream | null) : Promise.resolve(undefined);
  const tail: string[] = [];
  const errors = new ErrorLines();
  const lineReaders = (['stdout', 'stderr'] as const).map((stream) => {
    const reader = createInterface({ input: child[stream] as Readable });
    reader.on('line', (raw) => {
      const line = redact(raw, options.secrets);
      tail.push(line);
      if (tail.length > TAIL_LINES) tail.shift();
      errors.add(line);
      options.onLine(line, stream);
    });
    return new Promise<void>((resolve) => reader.on('close', resolve));
  });
  const spawned = new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  await spawned.catch((error: unknown) => {
    throw new BundleError('ERR_NPM_FAILED', `Could not start npm: ${(error as Error).message}`, { cause: error });
  });
  const pgid = child.pid as number;
  options.onSpawn?.(child);

  let peak = 0;
  let sampling = false;
  const sample = async () => {
    if (sampling) return;
    sampling = true;
    try {
      const rss = await processTreeRss(pgid);
      if (rss > peak) peak = rss;
      if (rss > 0) options.onMemory?.(rss, peak);
    } finally {
      sampling = false;
    }
  };
  // Soon after the start, then every interval: an install that is over within half a second
  // (npm's own start is ~0.2 s) is still seen at work.
  const interval = options.memoryIntervalMs ?? 500;
  let timer: NodeJS.Timeout | undefined;
  const sampleAfter = (delay: number) => {
    timer = setTimeout(() => {
      void sample();
      sampleAfter(Math.min(delay * 2, interval));
    }, delay);
  };
  sampleAfter(Math.min(100, interval));

  let killTimer: NodeJS.Timeout | undefined;
  const killSandbox = async () => {
    // Its pid 1: the kernel then kills every process of its PID namespace.
    const pid = await within(sandboxPid, KILL_GRACE_MS, undefined);
    if (pid) killProcess(pid, 'SIGKILL');
  };
  const onAbort = () => {
    if (options.sandboxInfoFd) {
      void killSandbox().finally(() => killGroup(pgid, 'SIGKILL'));
      return;
    }
    killGroup(pgid, 'SIGTERM');
    killTimer = setTimeout(() => killGroup(pgid, 'SIGKILL'), KILL_GRACE_MS);
  };
  options.signal?.addEventListener('abort', onAbort, { once: true });
  // Aborted while npm was starting (before the listener existed): an abort event never comes again.
  if (options.signal?.aborted) onAbort();

  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => {
    child.once('exit', (exitCode, exitSignal) => resolve([exitCode, exitSignal]));
  });
  clearTimeout(timer);
  options.signal?.removeEventListener('abort', onAbort);
  // Scripts may leave daemons behind holding npm's pipes open: the group goes with npm, and
  // we return only once it is gone.
  killGroup(pgid, 'SIGKILL');
  if (killTimer) clearTimeout(killTimer);
  await waitForGroupExit(pgid, 5000);
  // A process outside the group can still hold npm's pipes (one that left its session, or a
  // sandbox's child orphaned when bwrap was killed mid-setup): read what is there, then stop.
  const drained = await within(Promise.all(lineReaders).then(() => true), PIPE_DRAIN_MS, false);
  if (!drained) {
    child.stdout?.destroy();
    child.stderr?.destroy();
  }
  if (options.signal?.aborted) throw abortError(options.signal);
  return { code, signal, tail, errors: errors.lines(), peakMemory: peak };
}

/** The `child-pid` bwrap writes to its info fd once the sandbox exists; undefined if it never does. */
function readSandboxPid(info: NodeJS.ReadableStream | null): Promise<number | undefined> {
  if (!info) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    let text = '';
    info.setEncoding('utf8');
    info.on('data', (chunk: string) => {
      text += chunk;
      const pid = /"child-pid"\s*:\s*(\d+)/.exec(text)?.[1];
      if (pid) resolve(Number(pid));
    });
    info.on('error', () => resolve(undefined));
    info.on('close', () => resolve(undefined));
  });
}

/** `promise`'s value, or `otherwise` once `ms` have passed. */
function within<T, U>(promise: Promise<T>, ms: number, otherwise: U): Promise<T | U> {
  return Promise.race([promise, new Promise<U>((resolve) => setTimeout(() => resolve(otherwise), ms).unref())]);
}

function killProcess(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // ESRCH: already gone
  }
}

function killGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // ESRCH: the group is already gone
  }
}

/** Whether any process (a zombie too) is in the group. */
function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (error) {
    // EPERM: there is one, of another user.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Live (non-zombie) processes of a group. */
export async function processGroupMembers(pgid: number): Promise<number[]> {
  return (await processTable()).filter((row) => row.pgid === pgid && !row.zombie).map((row) => row.pid);
}

async function waitForGroupExit(pgid: number, timeoutMs: number): Promise<void> {
  // Nearly always the group is gone by now: a signal-0 kill says so without spawning `ps`
  // (~8 ms on the path of every build). It counts zombies as alive, so the process table decides the rest.
  if (!groupAlive(pgid)) return;
  const deadline = Date.now() + timeoutMs;
  while ((await processGroupMembers(pgid)).length > 0 && Date.now() < deadline) {
    killGroup(pgid, 'SIGKILL');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** One row of the process table: what the group's wait and memory sampling need of it. */
interface ProcessRow {
  pid: number;
  ppid: number;
  pgid: number;
  zombie: boolean;
  /** Resident bytes; read (from /proc/<pid>/status) only for the processes counted. */
  rss: () => Promise<number>;
}

/**
 * Resident memory (bytes) of npm and everything it started: the processes of its group and
 * every descendant of `root` (npm, or bwrap), whatever their group. A sandbox's processes are
 * not in the group: bubblewrap's `--new-session` gives them a session and group of their own,
 * so counting the group alone measured bwrap (~2 MB) and not the build. Linux reads /proc (no
 * process spawned per sample); elsewhere `ps`.
 */
export async function processTreeRss(root: number): Promise<number> {
  const rows = await processTable();
  const children = new Map<number, ProcessRow[]>();
  for (const row of rows) {
    const siblings = children.get(row.ppid);
    if (siblings) siblings.push(row);
    else children.set(row.ppid, [row]);
  }
  const counted = new Map<number, ProcessRow>();
  const visit = (row: ProcessRow) => {
    if (counted.has(row.pid)) return;
    counted.set(row.pid, row);
    for (const child of children.get(row.pid) ?? []) visit(child);
  };
  for (const row of rows) if (row.pid === root || row.pgid === root) visit(row);
  const sizes = await Promise.all([...counted.values()].map((row) => row.rss()));
  return sizes.reduce((sum, bytes) => sum + bytes, 0);
}

/** Every process: from /proc on Linux (no process spawned), else (or without /proc) from `ps`. */
async function processTable(): Promise<ProcessRow[]> {
  return (process.platform === 'linux' ? await procTable() : undefined) ?? psTable();
}

/** The process table from /proc; undefined when /proc cannot be read. */
async function procTable(): Promise<ProcessRow[] | undefined> {
  const names = await readdir('/proc').catch(() => undefined);
  if (!names) return undefined;
  const rows = await Promise.all(names.filter((name) => /^\d+$/.test(name)).map(async (pid): Promise<ProcessRow | undefined> => {
    const stat = await readFile(`/proc/${pid}/stat`, 'latin1').catch(() => undefined);
    if (!stat) return undefined; // gone meanwhile
    // `pid (comm) state ppid pgrp …`: comm may hold spaces and parentheses, so count from the last ')'.
    const [state, ppid, pgid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return {
      pid: Number(pid),
      ppid: Number(ppid),
      pgid: Number(pgid),
      zombie: state === 'Z',
      rss: async () => {
        const status = await readFile(`/proc/${pid}/status`, 'latin1').catch(() => '');
        return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) * 1024;
      },
    };
  }));
  return rows.filter((row): row is ProcessRow => row !== undefined);
}

/** The process table from `ps` (Linux and macOS have these columns). */
async function psTable(): Promise<ProcessRow[]> {
  try {
    const { stdout } = await execFileAsync('ps', ['-A', '-o', 'pid=,ppid=,pgid=,rss=,stat=']);
    return stdout.split('\n').map((line) => line.trim().split(/\s+/)).filter((fields) => fields.length === 5 && fields.slice(0, 4).every((field) => Number.isFinite(Number(field))))
      .map(([pid, ppid, pgid, kb, state]) => ({ pid: Number(pid), ppid: Number(ppid), pgid: Number(pgid), zombie: (state as string).startsWith('Z'), rss: async () => Number(kb) * 1024 }));
  } catch {
    return [];
  }
}

/** Lines of npm's error output that never name a cause. */
const NOISE = /complete log of this run|^A complete log|Note that you can also install|tarball, folder, http url/i;
/** How many cause lines a message carries: all up to SUMMARY_MAX, else the first and last few. */
const SUMMARY_MAX = 12;
const SUMMARY_FIRST = 7;
const SUMMARY_LAST = 4;

/**
 * npm's own account of a failure from its error lines: the `code` line and the lines that say
 * what went wrong, without the usage text npm appends to a usage error (`npm ci` out of sync
 * with the lockfile is one: its cause is followed by ~90 lines of options).
 *
 * @example
 * npmErrorSummary(['npm error code EUSAGE', 'npm error Missing: ms@2.1.3 from lock file', 'npm error Clean install a project', 'npm error', 'npm error Usage:', …])
 * // → { code: 'EUSAGE', lines: ['Missing: ms@2.1.3 from lock file'] }
 */
export function npmErrorSummary(errors: readonly string[]): { code?: string; lines: string[] } {
  let lines = errors.map((line) => line.replace(/^npm (error|ERR!)\s?/, '').trim());
  const usage = lines.indexOf('Usage:');
  if (usage >= 0) {
    // The usage text starts with the command's one-paragraph description, before "Usage:".
    let end = usage;
    while (end > 0 && lines[end - 1] === '') end -= 1;
    while (end > 0 && lines[end - 1] !== '') end -= 1;
    lines = lines.slice(0, end);
  }
  lines = lines.filter((line) => line && !NOISE.test(line));
  const code = lines.find((line) => /^code\s+\S+/.test(line))?.replace(/^code\s+/, '');
  const causes = lines.filter((line) => !/^code\s+\S+/.test(line));
  const bounded = causes.length <= SUMMARY_MAX ? causes
    : [...causes.slice(0, SUMMARY_FIRST), `… (${causes.length - SUMMARY_FIRST - SUMMARY_LAST} more lines; --verbose shows npm's log)`, ...causes.slice(-SUMMARY_LAST)];
  return { ...(code ? { code } : {}), lines: bounded };
}

/**
 * Turns a failed npm run into a BundleError that carries npm's own summary (its error lines)
 * rather than a wall of log; the last lines of output stand in only when npm printed none.
 */
export function npmFailure(what: string, run: NpmRun): BundleError {
  const { code, lines: summary } = npmErrorSummary(run.errors);
  const body = (summary.length > 0 ? summary : run.tail.slice(-8)).join('\n  ');
  const status = run.signal ? `was killed by ${run.signal}` : `exited with code ${run.code}`;
  const message = `${what} ${status}${code ? ` (${code})` : ''}:\n  ${body}`;
  if (code === 'E404' || code === 'ETARGET') {
    return new BundleError('ERR_NPM_PACKAGE_NOT_FOUND', message, {
      hint: 'A dependency or version does not exist on the registry. Check the package.json and the registry settings (registry, scopes, tokens).',
      details: { npmCode: code },
    });
  }
  return new BundleError('ERR_NPM_FAILED', message, {
    hint: 'Read npm\'s message above; run with --verbose for the full log.',
    details: { ...(code ? { npmCode: code } : {}), exitCode: run.code },
  });
}
