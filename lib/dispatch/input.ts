/**
 * Inputs of a dispatch run: a .tgz/.tar, a package directory (`npm pack`), a registry spec
 * (`npm pack <spec>`) or a git URL with `#ref` (cloned, the ref resolved to a full commit,
 * packed). Each is unpacked and inspected here — npm-pack layout, name and version — before
 * anything is uploaded.
 */
import { sha256File } from '../hash-stream.js';
import { mkdir, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { BundleError, throwIfAborted } from '../errors.js';
import { redact } from '../redact.js';
import { npmErrorSummary, spawnNpm } from '../workflow/npm.js';
import type { Sandbox, SandboxView } from '../workflow/sandbox.js';
import { openInput } from '../workflow/tar-input.js';
import { unpack, type PackageJson, type UnpackLimits } from '../workflow/steps/unpack.js';

export type InputKind = 'tarball' | 'directory' | 'registry' | 'git';

/** How to run npm (and git) on the dispatching side. */
export interface ToolEnvironment {
  /** `process.execPath`. */
  node: string;
  /** npm's CLI script (`locateNpm(env.PATH)`). */
  npmCli: string;
  /** Environment for npm and git: PATH, HOME, a private npmrc, npm's cache. */
  env: Record<string, string>;
  /** Secrets to redact from their output (registry tokens). */
  secrets: readonly string[];
  /**
   * Where the scripts of a git input's `npm pack` (its `prepare`, code of the repository at that
   * ref) run: the `sandbox` setting, as for builds. A directory input is the user's own project
   * and packs as `npm pack` would; a registry spec runs no script.
   */
  sandbox?: Sandbox;
}

export interface PreparedInput {
  kind: InputKind;
  /** The input as given. */
  spec: string;
  /** The packed tarball (the input itself for a tarball). */
  tarball: string;
  /** sha256 and size of that tarball as it was given or packed. */
  sha256: string;
  size: number;
  /** The package unpacked (for the lockfile step). */
  dir: string;
  packageJson: PackageJson;
  lockfile?: 'npm-shrinkwrap.json' | 'package-lock.json';
  /** Full commit of a git input. */
  commit?: string;
}

export interface PrepareInputOptions {
  cwd: string;
  /** A fresh directory for this run (clones, packs, the unpacked package). */
  workDir: string;
  tools: ToolEnvironment;
  limits?: Partial<UnpackLimits>;
  signal?: AbortSignal;
}

/**
 * Whether an input that does not exist was meant as a file or directory, not a registry spec:
 * a path (./, ../, /, ~), a path separator other than a scope's (`dist/app.tgz`, not
 * `@scope/name`), or an archive's suffix, typo included (.tgz, .tg, .tar, .tar.gz, .gz).
 * `npm pack` would otherwise take it for a package name and answer with a 404.
 *
 * @example
 * looksLikeFile('my-app-1.0.0.tg')   // true
 * looksLikeFile('@scope/app@1.2.0')  // false
 */
export function looksLikeFile(spec: string): boolean {
  // A URL (https://…/app.tgz, github:owner/repo, file:…) is npm's to fetch.
  if (/^[a-z][a-z0-9+.-]+:/i.test(spec)) return false;
  if (/^(\.{1,2}[\\/]|[\\/]|~)/.test(spec) || /\.(tgz|tg|tar|tar\.gz|gz)$/i.test(spec)) return true;
  const scoped = /^@[^/@\s]+\/[^/@\s]+(@\S*)?$/.test(spec);
  return /[\\/]/.test(spec) && !scoped;
}

/** `git+https://…`, `git+ssh://…`, `git://…`, `git@host:…`, or an URL ending in `.git`. */
export function isGitUrl(spec: string): boolean {
  return /^git(\+[a-z]+)?:\/\//i.test(spec) || /^git@[^:]+:/.test(spec) || /^[a-z+]+:\/\/.*\.git(#.*)?$/i.test(spec);
}

export { sha256File };

/** Runs a command (npm, git) in a process group of its own; its last lines go into the error. */
export async function runTool(tools: ToolEnvironment, command: string, argv: string[], options: { cwd: string; signal?: AbortSignal; what: string; sandbox?: SandboxView }): Promise<string> {
  const lines: string[] = [];
  const wrapped = options.sandbox && tools.sandbox ? await tools.sandbox.wrap(command, argv, options.sandbox) : { command, args: argv };
  const run = await spawnNpm({
    command: wrapped.command,
    argv: wrapped.args,
    cwd: options.cwd,
    env: tools.env,
    secrets: tools.secrets,
    ...(options.signal ? { signal: options.signal } : {}),
    onLine: (line, stream) => {
      if (stream === 'stdout') lines.push(line);
    },
  });
  if (run.code !== 0) {
    // npm's own error lines name the cause (E404, a bad spec); git and others only have their output.
    const { code, lines: causes } = npmErrorSummary(run.errors);
    const body = causes.length > 0 ? causes : run.tail.slice(-12);
    throw new BundleError('ERR_INPUT_UNREADABLE', `${options.what} failed (exit ${run.code ?? run.signal}${code ? `, ${code}` : ''}):\n  ${redact(body.join('\n  '), tools.secrets)}`, {
      details: { command: path.basename(command), code: run.code, ...(code ? { npmCode: code } : {}) },
    });
  }
  return lines.join('\n');
}

async function npmPack(tools: ToolEnvironment, what: string, target: string, into: string, cwd: string, signal?: AbortSignal, sandbox?: SandboxView): Promise<string> {
  await mkdir(into, { recursive: true });
  const out = await runTool(tools, tools.node, [tools.npmCli, 'pack', target, '--pack-destination', into, '--json', '--loglevel=error'], { cwd, what, ...(signal ? { signal } : {}), ...(sandbox ? { sandbox } : {}) });
  try {
    const parsed = JSON.parse(out.slice(out.indexOf('['))) as Array<{ filename: string }>;
    const name = parsed[0]?.filename;
    // npm ≥ 9 writes the scoped name as `scope-name-1.0.0.tgz`; be lenient about older forms.
    if (name) return path.join(into, name.replace(/^@/, '').replace('/', '-'));
  } catch {
    // fall back to what is in the directory
  }
  const files = (await readdir(into)).filter((name) => name.endsWith('.tgz'));
  if (files.length !== 1) throw new BundleError('ERR_INPUT_UNREADABLE', `${what} wrote no tarball.`);
  return path.join(into, files[0] as string);
}

/**
 * Turns an input into a packed tarball, unpacked and inspected. Nothing is uploaded here; a bad
 * input fails with its code (ERR_INPUT_NOT_FOUND, ERR_INPUT_NOT_TAR, ERR_NO_PACKAGE_JSON, …).
 *
 * @example
 * const input = await prepareInput('./my-app', { cwd, workDir, tools, signal });
 * input.packageJson.name // 'my-app'
 */
export async function prepareInput(spec: string, options: PrepareInputOptions): Promise<PreparedInput> {
  const { cwd, workDir, tools, signal } = options;
  await mkdir(workDir, { recursive: true });
  const packDir = path.join(workDir, 'pack');
  let kind: InputKind;
  let tarball: string;
  let commit: string | undefined;
  if (isGitUrl(spec)) {
    kind = 'git';
    const hash = spec.lastIndexOf('#');
    const url = (hash === -1 ? spec : spec.slice(0, hash)).replace(/^git\+(?=[a-z]+:)/i, '');
    const ref = hash === -1 ? undefined : spec.slice(hash + 1);
    const clone = path.join(workDir, 'clone');
    const git = (argv: string[], cwdir: string, what: string) => runTool(tools, 'git', argv, { cwd: cwdir, what, ...(signal ? { signal } : {}) });
    await git(['clone', '--quiet', ...(ref ? [] : ['--depth', '1']), url, clone], workDir, `git clone ${redact(url)}`);
    if (ref) {
      // A branch, tag or commit of the clone; else a ref only the server knows (refs/pull/…).
      const checkout = (what: string) => git(['-c', 'advice.detachedHead=false', 'checkout', '--quiet', what], clone, `git checkout ${ref}`);
      await checkout(ref).catch(async () => {
        await git(['fetch', '--quiet', 'origin', ref], clone, `git fetch ${ref}`);
        await checkout('FETCH_HEAD');
      });
    }
    commit = (await git(['rev-parse', 'HEAD'], clone, 'git rev-parse HEAD')).trim();
    // The repository's own scripts (prepare) run sandboxed: they see the clone, the pack folder
    // and npm's cache, never this process or the user's credentials.
    const npmCache = tools.env.npm_config_cache;
    tarball = await npmPack(tools, `npm pack (${redact(spec)})`, clone, packDir, clone, signal, {
      cwd: clone,
      writable: [workDir, ...(npmCache ? [npmCache] : [])],
      readable: [path.dirname(path.dirname(tools.npmCli)), path.dirname(path.dirname(tools.node))],
    });
  } else {
    const local = path.resolve(cwd, spec);
    const info = await stat(local).catch(() => undefined);
    const looksLikePath = looksLikeFile(spec);
    if (info?.isFile()) {
      kind = 'tarball';
      tarball = local;
    } else if (info?.isDirectory()) {
      kind = 'directory';
      tarball = await npmPack(tools, `npm pack ${spec}`, local, packDir, local, signal);
    } else if (looksLikePath) {
      throw new BundleError('ERR_INPUT_NOT_FOUND', `The input "${spec}" does not exist (no file or directory ${local}).`, {
        hint: 'Check the path (ls *.tgz). The input is a .tgz from npm pack, a package directory, a registry spec (name@version) or a git URL with #ref; a GitHub repository is github:owner/repo#ref.',
        details: { path: local },
      });
    } else {
      kind = 'registry';
      tarball = await npmPack(tools, `npm pack ${spec}`, spec, packDir, workDir, signal);
    }
  }
  throwIfAborted(signal);
  const { sha256, size } = await sha256File(tarball);
  const dir = path.join(workDir, 'package');
  const unpacked = await unpack(openInput(tarball), dir, { ...(options.limits ? { limits: options.limits } : {}), ...(signal ? { signal } : {}) });
  return {
    kind,
    spec,
    tarball,
    sha256,
    size,
    dir,
    packageJson: unpacked.packageJson,
    ...(unpacked.lockfile ? { lockfile: unpacked.lockfile } : {}),
    ...(commit ? { commit } : {}),
  };
}
