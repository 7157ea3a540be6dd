/**
 * The embedded default: with no builder pools configured, dispatch starts a builder for this
 * machine IN-PROCESS on 127.0.0.1, port 0, and talks to it over HTTP with the same client as
 * to a remote one — one code path. Its store is the (directory) source store, so it reads the
 * source by key and leaves its result there for dispatch to copy: no presigned URLs needed.
 * It starts lazily, on the first request: a run whose targets are all cached starts nothing.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import type { BuilderClient } from '../builder/client.js';
import type { RunningBuilder } from '../builder/server.js';
import { servedTargets } from '../builder/targets.js';
import { resolveToolchains, type ToolchainSettings } from '../workflow/toolchains.js';
import type { SigningKey } from '../provenance/keys.js';
import type { ObjectStore } from '../storage/index.js';
import { knownSecrets } from '../redact.js';
import { hostTarget, sameTarget, type Target } from '../target.js';
import { locateNpm, readNpmVersion } from '../workflow/npm.js';
import type { SandboxSetting } from '../workflow/sandbox.js';
import type { BuildOverrides, HookModule } from '../workflow/types.js';
import type { Pool } from './plan.js';

/** Names that never reach the workflow's environment (as in `bundle-dispatch builder`). */
const WITHHELD_ENV = /^(BUNDLE_DISPATCH_BUILDER_TOKENS|AWS_.*|.*_TOKEN|.*_SECRET.*|.*PASSWORD.*)$/i;

/** Where the embedded default keeps its signing key (`…/embedded-builder.pub.pem` beside it). */
export function embeddedKeyPath(cacheDir: string): string {
  return path.join(cacheDir, 'keys', 'embedded-builder.pem');
}

export interface EmbeddedBuilderOptions {
  /** Signs its provenance; dispatch trusts exactly this key for the embedded pools. */
  signingKey: SigningKey;
  store: ObjectStore;
  /** Parent of the builder's own work area (a fresh directory per run is made in it). */
  workDir: string;
  cacheDir: string;
  env: NodeJS.ProcessEnv;
  /** Where the builds' npm and install scripts run (the `sandbox` setting). */
  sandbox?: SandboxSetting;
  defaults: BuildOverrides;
  hooks: HookModule[];
  /** Builds at once. */
  slots: number;
  runtimes: string[];
  version: string;
  /** Unique per run: a builder marks its own unfinished builds failed when it starts. */
  builderId: string;
  host?: Target;
  /** Host names or CIDRs the builder may fetch from besides loopback (the S3 endpoint's host). */
  allowSources?: string[];
  /**
   * The targets this run asks for. When the host and the cross targets cover them, the foreign
   * Linux CPUs' toolchains (which only add targets such as linux-arm) are not looked for: ~8 ms
   * of a cached re-run. Without it, the builder serves every target it can.
   */
  requested?: readonly Target[];
}

export interface EmbeddedBuilder {
  /** One pool per served target (the host natively, plus cross targets), all this builder. */
  pools: Pool[];
  /** True once the builder was started. */
  readonly started: boolean;
  stop(): Promise<void>;
}

/** A client that starts the builder on its first call. */
function lazyClient(start: () => Promise<BuilderClient>): BuilderClient {
  const forward = <K extends keyof BuilderClient>(name: K) => (async (...args: unknown[]) => {
    const client = await start();
    return (client[name] as (...inner: unknown[]) => unknown)(...args);
  }) as BuilderClient[K];
  return {
    get url() {
      return 'embedded';
    },
    createBuild: forward('createBuild'),
    getBuild: forward('getBuild'),
    listBuilds: forward('listBuilds'),
    getLog: forward('getLog'),
    cancelBuild: forward('cancelBuild'),
    health: forward('health'),
    downloadArtifact: forward('downloadArtifact'),
    followBuild: forward('followBuild'),
  };
}

export function createEmbeddedBuilder(options: EmbeddedBuilderOptions): EmbeddedBuilder {
  const host = options.host ?? hostTarget();
  // Served like any builder's defaults: this machine, the foreign Linux CPUs it has a cross
  // toolchain for, and the cross targets (the scaffold decides how each is built).
  const withoutToolchains = servedTargets([], host);
  const covered = options.requested?.every((target) => withoutToolchains.some((served) => sameTarget(served, target))) ?? false;
  const targets = covered ? withoutToolchains : servedTargets([], host, resolveToolchains({ host, env: options.env, ...(options.defaults.toolchains ? { settings: options.defaults.toolchains as ToolchainSettings } : {}) }));
  let running: Promise<{ builder: RunningBuilder; client: BuilderClient; workDir: string }> | undefined;
  const start = () => {
    running ??= (async () => {
      // The server, its client and the workflow load with the first build: a run whose
      // targets are all cached never loads fastify or got.
      const [{ startBuilder }, { createBuilderClient }, { createScaffold }, { createSandbox }] = await Promise.all([import('../builder/server.js'), import('../builder/client.js'), import('../workflow/scaffold.js'), import('../workflow/sandbox.js')]);
      await mkdir(options.workDir, { recursive: true });
      const workDir = await mkdtemp(path.join(options.workDir, 'embedded-builder-'));
      const token = randomBytes(24).toString('hex');
      const env = Object.fromEntries(Object.entries(options.env).filter(([name]) => !WITHHELD_ENV.test(name)));
      const scaffold = createScaffold(options.defaults, options.hooks, {
        env,
        workRoot: path.join(workDir, 'builds'),
        npmCacheDir: path.join(options.cacheDir, 'npm'),
        runtimeCacheDir: path.join(options.cacheDir, 'runtimes'),
        host,
        sandbox: createSandbox({ setting: options.sandbox ?? 'auto', envPath: options.env.PATH }),
        // The dispatching process's own secrets (withheld from the env above) are still scrubbed.
        secrets: knownSecrets(options.env),
      });
      const npmVersion = await readNpmVersion(process.execPath, locateNpm(options.env.PATH), { PATH: options.env.PATH ?? '', npm_config_update_notifier: 'false' }).catch(() => 'unknown');
      const builder = await startBuilder({
        host: '127.0.0.1',
        port: 0,
        tokens: [token],
        redact: knownSecrets(options.env),
        store: options.store,
        scaffold,
        builderId: options.builderId,
        slots: options.slots,
        targets,
        workDir,
        buildTimeoutMs: 30 * 60_000,
        maxSourceBytes: 512 * 1024 ** 2,
        maxBodyBytes: 64 * 1024,
        minFreeDisk: 64 * 1024 ** 2,
        // What it is handed itself: loopback, plus the source store's S3 endpoint when one is set.
        allowSources: ['127.0.0.0/8', '::1', ...(options.allowSources ?? [])],
        heartbeatMs: 10_000,
        version: options.version,
        npmVersion,
        runtimes: [process.versions.node, ...options.runtimes],
        signingKey: options.signingKey,
        // One builder in this process: no replica to forward cancels to it, no store write before a build.
        registerReplica: false,
        metricsPort: false,
      });
      return { builder, client: createBuilderClient({ url: builder.url, token }), workDir };
    })();
    return running;
  };
  const client = lazyClient(async () => (await start()).client);
  return {
    pools: targets.map((platform) => ({ platform, builders: [{ url: 'embedded', client, keys: [options.signingKey] }] })),
    get started() {
      return running !== undefined;
    },
    async stop() {
      if (!running) return;
      const { builder, workDir } = await running.catch(() => ({ builder: undefined, workDir: undefined }));
      await builder?.stop(0);
      if (workDir) await rm(workDir, { recursive: true, force: true });
    },
  };
}
