import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BundleError } from '../errors.js';
import { createHashingStream } from '../hash-stream.js';
import { bundleFileName } from '../keys.js';
import { formatTarget, hostTarget, parseTarget, type Target, type TargetCpu, type TargetLibc, type TargetOs } from '../target.js';
import { loadHookModules } from '../workflow/hooks.js';
import { openInput } from '../workflow/tar-input.js';
import { createScaffold, type Scaffold } from '../workflow/scaffold.js';
import { createSandbox } from '../workflow/sandbox.js';
import { knownSecrets } from '../redact.js';
import type { BuildEvent, BuildOverrides, BuildSummary } from '../workflow/types.js';
import { loadCliConfig, workflowDefaults } from './config.js';
import { EXIT } from './errors.js';
import type { CliContext } from './context.js';
import { createLineView, createListrView, formatBytes, formatMs } from './progress.js';
import { createParallelGzip } from '../workflow/parallel-gzip.js';

export interface BundleRequest {
  input: string;
  /** A file, or a directory (existing or ending in /) for the default name. */
  output?: string;
  /** The target as the main command names one: `os-cpu[-libc][@node]` (instead of os/cpu/libc). */
  targets?: string;
  os?: string;
  cpu?: string;
  libc?: string;
  node?: string;
  /** zlib level of the bundle's gzip, 1–9 (default 6). */
  gzipLevel?: number;
  cwd: string;
  host: Target;
}

export interface BundleOutcome {
  file: string;
  sha256: string;
  tarSha256: string;
  size: number;
  node: string;
  abi: string;
  npm: string;
  target: Target;
  bundledDependencies: string[];
  nativeFiles: string[];
  method: BuildSummary['method'];
  verification: BuildSummary['verification'];
  isolation: BuildSummary['isolation'];
  droppedPrebuilds: string[];
  prebuilt: BuildSummary['prebuilt'];
  durations: BuildSummary['durations'];
  peakMemory: number;
}

/** The target a `bundle` run builds for: the host, with --os/--cpu/--libc/--node applied. */
export function requestedTarget(request: Pick<BundleRequest, 'targets' | 'os' | 'cpu' | 'libc' | 'node' | 'host'>): Target {
  if (request.targets !== undefined) {
    if (request.os !== undefined || request.cpu !== undefined || request.libc !== undefined) {
      throw new BundleError('ERR_USAGE', 'Give the target either as --targets os-cpu[-libc][@node] or with --os/--cpu/--libc, not both.');
    }
    if (request.targets.includes(',')) {
      throw new BundleError('ERR_USAGE', `bundle builds one target; "${request.targets}" names several.`, { hint: 'The main command builds several at once: bundle-dispatch <input> --targets a,b.' });
    }
    const parsed = parseTarget(request.targets.trim());
    return request.node ? { ...parsed, node: request.node } : parsed;
  }
  const os = (request.os ?? request.host.os) as TargetOs;
  const cpu = (request.cpu ?? request.host.cpu) as TargetCpu;
  const libc = request.libc ?? (os === request.host.os ? request.host.libc : undefined);
  // parseTarget validates every part the same way `--targets` does.
  return parseTarget(`${os}-${cpu}${os === 'linux' && libc ? `-${libc as TargetLibc}` : ''}${request.node ? `@${request.node}` : ''}`);
}


/**
 * Runs one bundle build and writes the gzipped bundle atomically: to a temporary file beside
 * the destination, renamed into place only when complete. A failure leaves nothing behind.
 */
export async function runBundle(scaffold: Scaffold, request: BundleRequest, options: { signal: AbortSignal; onEvent: (event: BuildEvent) => void }): Promise<BundleOutcome> {
  const target = requestedTarget(request);
  const inputPath = path.resolve(request.cwd, request.input);
  const inputStat = await stat(inputPath).catch(() => undefined);
  if (!inputStat?.isFile()) {
    throw new BundleError('ERR_INPUT_NOT_FOUND', `Input "${request.input}" is not a file.`, { hint: 'Give the .tgz that `npm pack` writes.' });
  }
  // -o may name a file or a directory (existing, or written with a trailing slash).
  const outputPath = request.output === undefined ? undefined : path.resolve(request.cwd, request.output);
  const outputIsDir = outputPath !== undefined && (/[\\/]$/.test(request.output ?? '') || (await stat(outputPath).catch(() => undefined))?.isDirectory() === true);
  const outDir = outputPath === undefined ? request.cwd : outputIsDir ? outputPath : path.dirname(outputPath);
  await mkdir(outDir, { recursive: true }).catch((error: unknown) => {
    throw new BundleError('ERR_OUTPUT', `Cannot create the output directory ${outDir}: ${(error as Error).message}`, { cause: error, hint: 'Give another -o path.' });
  });
  const overrides: BuildOverrides = { target };
  const result = await scaffold.run(openInput(inputPath), overrides, options);
  const { summary } = result;
  const defaultName = bundleFileName({ name: summary.name, version: summary.version, target: summary.target, nodeVersion: summary.runtime.version });
  const file = outputPath !== undefined && !outputIsDir ? outputPath : path.join(outDir, defaultName);
  // unpack refuses names that are not npm names (ERR_PACKAGE_INVALID); this keeps a name that
  // ever slips through from choosing where the bundle lands.
  if (file !== outputPath && path.dirname(file) !== path.resolve(outDir)) {
    (result.output as Readable).destroy();
    throw new BundleError('ERR_PACKAGE_INVALID', `The bundle's file name "${defaultName}" (from the package's name and version) would leave the output directory ${outDir}.`, {
      details: { name: summary.name, version: summary.version },
    });
  }
  const temporary = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.partial`);
  const tar = createHashingStream();
  const gz = createHashingStream();
  try {
    // Deflated on every core, the same bytes whatever their number (lib/workflow/parallel-gzip.ts).
    await pipeline(result.output as Readable, tar.stream, createParallelGzip({ level: request.gzipLevel }), gz.stream, createWriteStream(temporary, { flags: 'wx' }), { signal: options.signal });
    await rename(temporary, file);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
  return {
    file,
    sha256: gz.result().sha256,
    tarSha256: tar.result().sha256,
    size: gz.result().size,
    node: summary.runtime.version,
    abi: summary.runtime.abi,
    npm: summary.npmVersion,
    target: summary.target,
    bundledDependencies: summary.bundledDependencies,
    nativeFiles: summary.nativeFiles,
    method: summary.method,
    verification: summary.verification,
    isolation: summary.isolation,
    droppedPrebuilds: summary.droppedPrebuilds,
    prebuilt: summary.prebuilt,
    durations: summary.durations,
    peakMemory: summary.peakMemory,
  };
}

interface CommonArgs {
  verbose: boolean;
  json: boolean;
  config?: string;
  hooks?: string[];
  registry?: string;
  'cache-dir'?: string;
  'keep-workdir'?: boolean;
  sandbox?: string;
  'gzip-level'?: number;
}

/** The bundle command's own flags are the request's fields. */
export type BundleArgs = CommonArgs & Pick<BundleRequest, 'input' | 'output' | 'targets' | 'os' | 'cpu' | 'libc' | 'node'>;

/** Flags that set config keys, by config key (no yargs defaults: config applies them). */
function configFlags(args: CommonArgs): Record<string, unknown> {
  return { hooks: args.hooks, registry: args.registry, cacheDir: args['cache-dir'], keepWorkdir: args['keep-workdir'], sandbox: args.sandbox, gzipLevel: args['gzip-level'] };
}

/** `bundle-dispatch bundle <input>`: builds, writes the bundle, prints the outcome; returns the exit code. */
export async function commandBundle(args: BundleArgs, context: CliContext, signal: AbortSignal): Promise<number> {
  const config = await loadCliConfig(context, configFlags(args), args.config);
  const hookModules = await loadHookModules(config.hooks, context.cwd);
  const defaults = workflowDefaults(config, context.env);
  const host = hostTarget();
  const scaffold = createScaffold(defaults, hookModules.map((loadedModule) => loadedModule.module), {
    env: context.env,
    workRoot: config.workDir,
    npmCacheDir: path.join(config.cacheDir, 'npm'),
    runtimeCacheDir: path.join(config.cacheDir, 'runtimes'),
    host,
    sandbox: createSandbox({ setting: config.sandbox, envPath: context.env.PATH }),
    secrets: knownSecrets(context.env),
  });

  const interactive = !args.json && Boolean(context.stdout.isTTY) && !context.env.CI;
  const view = interactive
    ? await createListrView(`Bundle ${path.basename(args.input)}`, { verbose: args.verbose })
    : createLineView(context.stderr, { verbose: args.verbose });
  try {
    const outcome = await runBundle(scaffold, { ...args, gzipLevel: config.gzipLevel, cwd: context.cwd, host }, { signal, onEvent: (event) => view.onEvent(event) });
    await view.done();
    if (args.json) {
      context.stdout.write(`${JSON.stringify(outcome, null, 2)}\n`);
    } else {
      const relative = path.relative(context.cwd, outcome.file) || outcome.file;
      context.stdout.write([
        `✔ ${relative}`,
        `  target   ${formatTarget(outcome.target)}  node ${outcome.node} (ABI ${outcome.abi})  npm ${outcome.npm}`,
        `  isolation ${outcome.isolation}${outcome.isolation === 'none' ? ' (install scripts ran unsandboxed: see docs/sandbox.md)' : ''}`,
        ...(outcome.prebuilt.length > 0 ? [`  prebuilt ${outcome.prebuilt.map((use) => `${use.name} (${use.file})`).join(', ')}: shipped by their packages, ${outcome.verification === 'wine' ? 'loaded by the target\'s Windows Node under Wine' : outcome.verification === 'wine-node-api' ? 'loaded under Wine by an older Windows Node (Node-API)' : outcome.verification === 'structure' ? 'verified by structure, not run' : outcome.verification === 'emulated' ? 'loaded under the emulator' : 'checked by header'}`] : []),
        `  bundled  ${outcome.bundledDependencies.length} packages${outcome.nativeFiles.length ? `, ${outcome.nativeFiles.length} native file(s)` : ''}`,
        `  size     ${formatBytes(outcome.size)}  sha256 ${outcome.sha256}`,
        `  time     ${formatMs(Object.values(outcome.durations).reduce((sum, ms) => sum + (ms ?? 0), 0))}`,
        '',
      ].join('\n'));
    }
    return EXIT.ok;
  } catch (error) {
    await view.done(error);
    throw error;
  }
}
