import type { ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';
import type { Target } from '../target.js';
import type { UnpackLimits, PackageJson } from './steps/unpack.js';
import type { Runtime } from './steps/runtime.js';
import type { BuildMethod, Verification } from '../protocol.js';
import type { ToolchainSettings } from './toolchains.js';
import type { Isolation } from './sandbox.js';
import type { PrebuiltUse } from './steps/prebuilds.js';

export type { PackageJson } from './steps/unpack.js';
export type { Runtime } from './steps/runtime.js';

/** The steps of the bundle workflow, in order. `configure` runs beside `unpack`. */
export type StepName = 'unpack' | 'configure' | 'runtime' | 'install' | 'bundle' | 'verify' | 'pack';

/** Credentials and routing for one registry. Tokens only ever reach the build's own npmrc. */
export interface RegistryAuth {
  /** Bearer token (`_authToken`). */
  token?: string;
  /** `user:password` for basic auth; written as `_auth`. */
  basic?: string;
}

/** Everything a build is configured with: scaffold defaults, then hooks, then overrides. */
export interface BuildConfig {
  /** The platform to build for; defaults to the host. `node` is a semver range for the runtime. */
  target: Target;
  /** Default registry URL. */
  registry: string;
  /** Scoped registries: `{ "@acme": "https://npm.acme.test/" }`. */
  scopes: Record<string, string>;
  /** Auth per registry URL (the URL as written in `registry`/`scopes`). */
  auth: Record<string, RegistryAuth>;
  /** Unpack limits against tar bombs. */
  limits: UnpackLimits;
  /** Extra environment variable names passed through to npm and lifecycle scripts. */
  envAllow: string[];
  /** Extra environment variables set for npm and lifecycle scripts (not secrets: they are logged). */
  env: Record<string, string>;
  /** Paths of Node runtimes installed on this machine (binaries or install prefixes). */
  runtimes: string[];
  /** Seconds since the epoch for every mtime in the output (SOURCE_DATE_EPOCH); npm's 1985 date if unset. */
  sourceDateEpoch?: number;
  /** Keep the build's workdir instead of removing it (for debugging). */
  keepWorkdir: boolean;
  /** Extra arguments appended to the npm install command line. */
  npmArgs: string[];
  /**
   * Cross toolchains by target (`linux-arm64`): overrides what is detected on this machine, or
   * `false` to not use one. See lib/workflow/toolchains.ts and docs/runtimes.md.
   */
  toolchains: ToolchainSettings;
  /**
   * A cross-compiled target without an emulator is verified by its binaries' headers only
   * (nothing is loaded). Off by default: such a build fails with ERR_NATIVE_VERIFY.
   */
  allowHeaderOnlyVerify: boolean;
}

/** What a caller may override per build: any part of the config. */
export type BuildOverrides = {
  [K in keyof BuildConfig]?: BuildConfig[K] extends Record<string, unknown> ? Partial<BuildConfig[K]> : BuildConfig[K];
};

/** The directories of one build. */
export interface BuildDirs {
  /** The build's own directory; removed at the end unless keepWorkdir. */
  work: string;
  /** Where the package is unpacked and npm runs. */
  package: string;
  /** HOME for npm and scripts. */
  home: string;
  /** TMPDIR for npm and scripts. */
  tmp: string;
  /** npm's cache, shared by every build of a scaffold. */
  cache: string;
  /** The build's private npmrc (registry, scopes, tokens). */
  npmrc: string;
}

/** How npm will be spawned. Hooks may change `env` and `argv` before the spawn. */
export interface SpawnInfo {
  dirs: BuildDirs;
  /** The environment npm and lifecycle scripts get (filtered through the allow-list). */
  env: Record<string, string>;
  /** The executable that runs npm (host Node) and its arguments (npm-cli.js, the command). */
  command: string;
  argv: string[];
  /** The chosen runtime; undefined until the runtime step has run. */
  runtime?: Runtime;
}

/** What a finished build reports (the `build.complete` event and the CLI's --json). */
export interface BuildSummary {
  buildId: string;
  name: string;
  version: string;
  target: Target;
  /**
   * The Node runtime built for: `nodePath` its binary on this machine (absent when a cross
   * target's runtime was not downloaded: `runnable` false and no file there), `package` and
   * `integrity` for a registry runtime (the registry's `sha512-…`, when it was recorded at fetch).
   */
  runtime: { version: string; abi: string; source: Runtime['source']; nodePath?: string; package?: string; integrity?: string };
  /** The lockfile the source carried (`npm ci` installed from it) and its sha256, as unpacked. */
  lockfile?: { name: string; sha256: string };
  npmVersion: string;
  bundledDependencies: string[];
  nativeFiles: string[];
  /** How the bundle was made: on its own platform, cross-compiled, or cross without natives. */
  method: BuildMethod;
  /**
   * How its native addons were proven: `loaded` under the target's Node on this machine,
   * `emulated` (loaded under the target's Node through the toolchain's emulator), `wine`
   * (win32: loaded by the target's Windows Node under Wine), `wine-node-api` (loaded under Wine
   * by an older Windows Node, for Node-API-only addons whose target Node does not start there),
   * `headers` only, or `none` when it has no addons. Every binary's header is checked in each case.
   */
  verification: Verification;
  /** Prebuilds their packages ship for other platforms, removed from the bundle (relative to the package; folders end in `/`). */
  droppedPrebuilds: string[];
  /** Packages whose install-time build a prebuild they ship did instead (cross targets): nothing was compiled for them. */
  prebuilt: PrebuiltUse[];
  /**
   * What isolated npm, the install scripts and the addon check from this machine: bubblewrap,
   * a build user of its own, both, or `none` (sandbox off, or bubblewrap missing under `auto`).
   */
  isolation: Isolation;
  /** Milliseconds per step. */
  durations: Partial<Record<StepName, number>>;
  /** Peak resident memory of npm's process tree, in bytes. */
  peakMemory: number;
}

/** Lets a hook or listener add lines to the build's log. */
export interface BuildStatus {
  buildId: string;
  log(message: string, data?: Record<string, unknown>): void;
}

/**
 * Hooks change outcomes. Each is awaited in registration order; a throw fails the build with
 * ERR_HOOK_FAILED (its message and `cause` name the hook). Every hook also gets the build's
 * `status` as its last argument.
 *
 * @example
 * export default {
 *   'npm.configure': (scaffold, config, spawn, status) => {
 *     spawn.env.SHARP_IGNORE_GLOBAL_LIBVIPS = '1';
 *     status.log('using bundled libvips');
 *   },
 * };
 */
export interface HookFunctions {
  /** Before overrides are merged. May edit `defaults` in place or return a replacement. */
  'build.defaults': (scaffold: ScaffoldLike, defaults: BuildConfig, overrides: BuildOverrides, status: BuildStatus) => unknown;
  /** After the merge. May edit `config` and the spawn info (dirs, base env); the runtime is not chosen yet. */
  'build.configure': (scaffold: ScaffoldLike, config: BuildConfig, spawn: SpawnInfo, status: BuildStatus) => unknown;
  /** Last chance to edit files in the package dir, `spawn.env` or `spawn.argv` before npm runs. */
  'npm.configure': (scaffold: ScaffoldLike, config: BuildConfig, spawn: SpawnInfo, status: BuildStatus) => unknown;
  /** The package.json about to be written. May edit it in place or return a replacement object. */
  'npm.package': (scaffold: ScaffoldLike, config: BuildConfig, packageJson: PackageJson, status: BuildStatus) => unknown;
  /** The output tar stream; may return a replacement stream, which is what `build()` resolves to. */
  'build.output': (scaffold: ScaffoldLike, config: BuildConfig, spawn: SpawnInfo, output: Readable, status: BuildStatus) => unknown;
}

/** Events notify. Listeners run synchronously; a throwing listener is logged and ignored. */
export interface EventFunctions {
  /** Right after npm is spawned (each npm command: install, then rebuild). */
  'npm.spawned': (scaffold: ScaffoldLike, child: ChildProcess, status: BuildStatus) => void;
  /** The bundle is built and about to be packed. */
  'build.complete': (scaffold: ScaffoldLike, config: BuildConfig, summary: BuildSummary, status: BuildStatus) => void;
}

export type HookName = keyof HookFunctions;
export type EventName = keyof EventFunctions;

/** A hook module's default export: hook and event names mapped to a function or a list of them. */
export type HookModule = {
  [K in HookName]?: HookFunctions[K] | HookFunctions[K][];
} & {
  [K in EventName]?: EventFunctions[K] | EventFunctions[K][];
};

/** The part of a Scaffold that hooks see. */
export interface ScaffoldLike {
  readonly defaults: Readonly<BuildConfig>;
}

/** The typed progress stream of a build (what the CLI renders and the builder forwards). */
export type BuildEvent =
  | { type: 'step'; buildId: string; step: StepName; state: 'started'; at: number }
  | { type: 'step'; buildId: string; step: StepName; state: 'finished' | 'failed'; at: number; durationMs: number }
  | { type: 'log'; buildId: string; step: StepName | 'hook'; at: number; stream: 'stdout' | 'stderr' | 'status'; message: string; data?: Record<string, unknown> }
  | { type: 'memory'; buildId: string; at: number; rss: number; peak: number }
  /** The input's package.json was read (right after unpacking): its name and version. */
  | { type: 'package'; buildId: string; at: number; name: string; version: string }
  | { type: 'complete'; buildId: string; at: number; summary: BuildSummary }
  | { type: 'error'; buildId: string; at: number; error: { code: string; message: string } };
