/**
 * Resolve once: unless the input carries a lockfile, its dependency tree is resolved here, on
 * the dispatching side, and added to the source as `npm-shrinkwrap.json` — so every target
 * installs the same versions (the builders run `npm ci`).
 *
 * `npm install --package-lock-only` resolves without installing and records EVERY optional
 * dependency with its `os`/`cpu`/`libc` fields, whatever platform resolves it (esbuild's
 * `@esbuild/*` packages all appear), so one lockfile serves every target.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { BundleError } from '../errors.js';
import { npmErrorSummary, npmFailure, readNpmVersion, spawnNpm } from '../workflow/npm.js';
import { pack, NPM_EPOCH } from '../workflow/steps/pack.js';
import { runTool, sha256File, type PreparedInput, type ToolEnvironment } from './input.js';

export interface SourceTarball {
  /** The tarball to upload: the input itself when it carried a lockfile, else repacked. */
  file: string;
  sha256: string;
  size: number;
  lockfile: {
    name: 'npm-shrinkwrap.json' | 'package-lock.json';
    sha256: string;
    /** True when dispatch resolved it and added it to the source. */
    added: boolean;
  };
}

/**
 * Every field `npm ci` checks against the lockfile. `--omit=dev` only skips installing dev
 * dependencies: npm still requires the lockfile to record them (and workspaces as links), so a
 * lockfile written without asking npm is in sync only when none of these is there.
 */
const LOCKED_FIELDS = ['dependencies', 'devDependencies', 'optionalDependencies', 'peerDependencies', 'bundleDependencies', 'bundledDependencies', 'workspaces'] as const;

/** True when the package installs nothing: its lockfile can be written without asking npm. */
function hasNoDependencies(packageJson: Record<string, unknown>): boolean {
  return LOCKED_FIELDS.every((field) => {
    const value = packageJson[field];
    return value === undefined || (Array.isArray(value) ? value.length === 0 : typeof value === 'object' && value !== null && Object.keys(value).length === 0);
  });
}

/**
 * Makes sure the source carries a lockfile, resolving one when it does not, and returns the
 * tarball to upload with the sha256 of it and of the lockfile.
 *
 * @example
 * const source = await ensureLockfile(input, { tools, workDir, signal });
 * source.lockfile.added // true: npm-shrinkwrap.json was resolved here
 */
export async function ensureLockfile(input: PreparedInput, options: { tools: ToolEnvironment; workDir: string; mtime?: Date; signal?: AbortSignal; checkedDir?: string }): Promise<SourceTarball> {
  if (input.lockfile) {
    await assertInSyncOnce(input, input.lockfile, options);
    const text = await readFile(path.join(input.dir, input.lockfile));
    return { file: input.tarball, sha256: input.sha256, size: input.size, lockfile: { name: input.lockfile, sha256: sha(text), added: false } };
  }
  const shrinkwrap = path.join(input.dir, 'npm-shrinkwrap.json');
  if (hasNoDependencies(input.packageJson)) {
    // What npm writes for a package without dependencies; no npm start-up for the common tiny case.
    const { name, version } = input.packageJson;
    await writeFile(shrinkwrap, `${JSON.stringify({ name, version, lockfileVersion: 3, requires: true, packages: { '': { name, version } } }, null, 2)}\n`);
  } else {
    await runTool(options.tools, options.tools.node, [
      options.tools.npmCli, 'install', '--package-lock-only', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error',
    ], { cwd: input.dir, what: 'npm install --package-lock-only (resolving the dependency tree once)', ...(options.signal ? { signal: options.signal } : {}) });
    await rename(path.join(input.dir, 'package-lock.json'), shrinkwrap);
  }
  const file = path.join(options.workDir, 'source.tgz');
  await rm(file, { force: true });
  await pipeline(pack(input.dir, { mtime: options.mtime ?? NPM_EPOCH, ...(options.signal ? { signal: options.signal } : {}) }), createGzip({ level: 9 }), createWriteStream(file, { flags: 'wx' }));
  const { sha256, size } = await sha256File(file);
  return { file, sha256, size, lockfile: { name: 'npm-shrinkwrap.json', sha256: sha(await readFile(shrinkwrap)), added: true } };
}

/**
 * {@link assertInSync}, remembered: its answer depends only on the input's bytes and npm's
 * version, so a tarball npm once found in sync is in sync for that npm, and a re-run (cron, CI,
 * another destination) skips npm's start-up. Only a pass is remembered, as an empty file in
 * `checkedDir` named by the input's sha256, the lockfile and npm's version; without
 * `checkedDir` npm is asked every time.
 */
async function assertInSyncOnce(input: PreparedInput, lockfile: string, options: { tools: ToolEnvironment; signal?: AbortSignal; checkedDir?: string }): Promise<void> {
  if (!options.checkedDir) return assertInSync(input, lockfile, options);
  const npmVersion = await readNpmVersion(options.tools.node, options.tools.npmCli, options.tools.env);
  const marker = path.join(options.checkedDir, createHash('sha256').update(JSON.stringify([input.sha256, lockfile, npmVersion])).digest('hex'));
  if (await stat(marker).then((found) => found.isFile(), () => false)) return;
  await assertInSync(input, lockfile, options);
  await mkdir(options.checkedDir, { recursive: true });
  await writeFile(marker, '');
}

/**
 * A lockfile the input ships is used as it is (it pins the tree), but one out of sync with its
 * package.json — a devDependency added after it was written, a dependency changed — makes
 * `npm ci` refuse it on every builder. `npm ci --dry-run` runs npm's own check here, once,
 * before anything is uploaded (it reads the lockfile and installs nothing).
 */
async function assertInSync(input: PreparedInput, lockfile: string, options: { tools: ToolEnvironment; signal?: AbortSignal }): Promise<void> {
  const { tools } = options;
  const run = await spawnNpm({
    command: tools.node,
    argv: [tools.npmCli, 'ci', '--dry-run', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund'],
    cwd: input.dir,
    env: tools.env,
    secrets: tools.secrets,
    onLine: () => undefined,
    ...(options.signal ? { signal: options.signal } : {}),
  });
  if (run.code === 0) return;
  const { code, lines } = npmErrorSummary(run.errors);
  if (code !== 'EUSAGE') throw npmFailure(`npm ci --dry-run (checking the input's ${lockfile})`, run);
  throw new BundleError('ERR_LOCKFILE_OUT_OF_SYNC', `The input's ${lockfile} is not in sync with its package.json; npm ci would refuse it on every builder:\n  ${lines.join('\n  ')}`, {
    hint: `Run \`npm install\` in the package (it updates ${lockfile}, devDependencies included) and pack again, or leave the lockfile out and dispatch resolves one.`,
    details: { lockfile, npmCode: code },
  });
}

function sha(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
