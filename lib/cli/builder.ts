/**
 * `bundle-dispatch builder`: the long-running build service. Prints the URL it listens on as
 * the first line of stdout, JSON logs on stderr, and stops gracefully on SIGTERM/SIGINT.
 */
import { mkdir } from 'node:fs/promises';
import { once } from 'node:events';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { createAuthenticator, readTokens, watchTokenFile } from '../builder/auth.js';
import { createDashboard } from '../builder/dashboard/index.js';
import { parseUidRange } from '../builder/resources.js';
import { findBlockingAncestor, unreachableError } from '../workflow/run-as.js';
import { startBuilder } from '../builder/server.js';
import { loadOrCreateSigningKey, publicKeyPath } from '../provenance/keys.js';
import { describeTargets, servedTargets } from '../builder/targets.js';
import { resolveToolchains } from '../workflow/toolchains.js';
import { BundleError } from '../errors.js';
import { openStore } from '../storage/index.js';
import { formatTarget, hostTarget } from '../target.js';
import { loadHookModules } from '../workflow/hooks.js';
import { locateNpm, readNpmVersion } from '../workflow/npm.js';
import { createSandbox } from '../workflow/sandbox.js';
import { knownSecrets } from '../redact.js';
import { createScaffold } from '../workflow/scaffold.js';
import { ownVersion } from '../package-root.js';
import { commaList, loadCliConfig, storeOptions, workflowDefaults } from './config.js';
import type { CliContext } from './context.js';
import { EXIT } from './errors.js';

export interface BuilderArgs {
  config?: string;
  host?: string;
  port?: number;
  store?: string;
  slots?: number;
  targets?: string[];
  id?: string;
  hooks?: string[];
  'token-file'?: string;
  'signing-key'?: string;
  'shutdown-grace'?: number;
  metrics?: string;
  'advertise-url'?: string;
  'allow-sources'?: string[];
  registry?: string;
  'cache-dir'?: string;
  sandbox?: string;
  'log-level'?: 'debug' | 'info' | 'warn' | 'error';
}

/** Environment variable with the builder's tokens (comma-separated). */
export const TOKENS_ENV = 'BUNDLE_DISPATCH_BUILDER_TOKENS';

/** Names that never reach the workflow's environment, even before its allow-list filters it. */
const WITHHELD_ENV = /^(BUNDLE_DISPATCH_BUILDER_TOKENS|AWS_.*|.*_TOKEN|.*_SECRET.*|.*PASSWORD.*)$/i;

/** The builder's own work area under `workDir`. */
export function builderWorkDir(workDir: string): string {
  return path.join(workDir, 'builder');
}

export async function commandBuilder(args: BuilderArgs, context: CliContext, signal: AbortSignal): Promise<number> {
  // As root (a container's usual user) the default directories are the system's, which the
  // unprivileged build users can pass through; root's home is 0700.
  const asRoot = process.getuid?.() === 0;
  const config = await loadCliConfig(context, {
      'builder.host': args.host,
      'builder.port': args.port,
      'builder.store': args.store,
      'builder.slots': args.slots,
      // Comma-separated or repeated, as dispatch's --targets.
      'builder.targets': commaList(args.targets),
      'builder.id': args.id,
      'builder.tokenFile': args['token-file'],
      'builder.signingKey': args['signing-key'],
      'builder.shutdownGrace': args['shutdown-grace'],
      'builder.advertiseUrl': args['advertise-url'],
      'builder.metrics': args.metrics === undefined ? undefined : String(args.metrics),
      'builder.allowSources': commaList(args['allow-sources']),
      hooks: args.hooks,
      registry: args.registry,
      cacheDir: args['cache-dir'],
      sandbox: args.sandbox,
    }, args.config, { systemDirs: asRoot });
  const settings = config.builder;
  const { tokens, warnings } = await readTokens({ envValue: context.env[TOKENS_ENV], ...(settings.tokenFile ? { tokenFile: settings.tokenFile } : {}) });
  if (tokens.length === 0) {
    throw new BundleError('ERR_CONFIG', 'The builder has no token: every API call but /v1/health would be refused.', {
      hint: `Set ${TOKENS_ENV}=<token>[,<token>…] or --token-file <file> (one token per line, mode 0600).`,
    });
  }
  // JSON lines for log collectors; on a terminal, the same lines made readable (pino-pretty).
  const logSink = await builderLogSink(context.stderr);
  const logLine = (level: number, msg: string) => logSink.write(`${JSON.stringify({ level, time: Date.now(), msg })}\n`);
  for (const warning of warnings) logLine(40, warning);

  const host = hostTarget();
  const scaffoldEnv = Object.fromEntries(Object.entries(context.env).filter(([name]) => !WITHHELD_ENV.test(name)));
  // Foreign Linux CPUs this machine has a cross toolchain for are served by default.
  const targets = servedTargets(settings.targets, host, resolveToolchains({ host, env: scaffoldEnv, settings: config.toolchains }));
  const uidRange = asRoot ? parseUidRange(settings.runAsUids) : undefined;
  // Created passable (0755) here, so the build users can reach their caches under them.
  if (asRoot) await Promise.all([config.cacheDir, config.workDir].map((dir) => mkdir(dir, { recursive: true, mode: 0o755 })));
  if (uidRange) {
    // Build users need to pass through to their npm caches and the runtimes they execute.
    const blocking = await findBlockingAncestor(config.cacheDir);
    if (blocking) throw await unreachableError('cacheDir', config.cacheDir, blocking, `the build users (uids ${settings.runAsUids}, builder.runAsUids)`, '--cache-dir /var/cache/bundle-dispatch');
  }
  const hookModules = await loadHookModules(config.hooks, context.cwd);
  const defaults = workflowDefaults(config, context.env);
  const workDir = builderWorkDir(config.workDir);
  const scaffold = createScaffold(defaults, hookModules.map((hook) => hook.module), {
    env: scaffoldEnv,
    workRoot: path.join(workDir, 'builds'),
    npmCacheDir: path.join(config.cacheDir, 'npm'),
    runtimeCacheDir: path.join(config.cacheDir, 'runtimes'),
    host,
    sandbox: createSandbox({ setting: config.sandbox, envPath: context.env.PATH }),
    secrets: knownSecrets(context.env, tokens),
  });
  const store = await openStore(settings.store, storeOptions(config, context.cwd));
  await store.checkConfiguration?.();
  const npmVersion = await readNpmVersion(process.execPath, locateNpm(context.env.PATH), { PATH: context.env.PATH ?? '', npm_config_update_notifier: 'false' });

  // Loaded (or generated, mode 0600) before anything is served; build users never get a path to it.
  const signingKey = await loadOrCreateSigningKey(settings.signingKey);
  if (signingKey.created) logLine(30, `generated the provenance signing key ${settings.signingKey} (keyid ${signingKey.keyid}); public key in ${publicKeyPath(settings.signingKey)}`);
  const auth = createAuthenticator(tokens);
  const dashboard = createDashboard({ tokens, auth });
  const logLevel = args['log-level'] ?? 'info';
  const builder = await startBuilder({
    host: settings.host,
    port: settings.port,
    tokens,
    auth,
    redact: knownSecrets(context.env),
    store,
    scaffold,
    builderId: settings.id,
    slots: settings.slots,
    targets,
    workDir,
    buildTimeoutMs: settings.buildTimeout * 1000,
    maxSourceBytes: settings.maxSourceBytes,
    maxBodyBytes: settings.maxBodyBytes,
    minFreeDisk: settings.minFreeDisk,
    allowSources: settings.allowSources,
    ...(uidRange ? { uidRange } : {}),
    heartbeatMs: settings.heartbeat * 1000,
    logStream: logSink,
    logLevel,
    version: await ownVersion(),
    npmVersion,
    runtimes: [process.versions.node, ...config.runtimes],
    signingKey,
    ...(settings.advertiseUrl ? { advertiseUrl: settings.advertiseUrl } : {}),
    maxQueued: settings.maxQueued,
    ...(settings.metrics === 'api' ? {} : { metricsPort: settings.metrics === 'off' ? false : Number(settings.metrics) }),
    authorize: dashboard.authorize,
    register: dashboard.register,
  });
  context.stdout.write(`${builder.url}\n`);
  if (builder.metricsUrl) logLine(30, `metrics at ${builder.metricsUrl}`);
  // The same level as fastify's logger (pino: info = 30): `--log-level warn` keeps stderr quiet.
  if (logLevel === 'debug' || logLevel === 'info') logLine(30, `serving ${describeTargets(targets, Object.fromEntries(targets.map((target) => [formatTarget(target), scaffold.buildMethod(target)])))} with ${settings.slots} slot(s)${uidRange ? `, builds as uids ${uidRange.first}-${uidRange.last}` : ''}`);
  // Token rotation without a restart: the file is re-read when it changes, and on SIGHUP.
  const tokenWatch = settings.tokenFile ? watchTokenFile({
    tokenFile: settings.tokenFile,
    ...(context.env[TOKENS_ENV] !== undefined ? { envValue: context.env[TOKENS_ENV] } : {}),
    auth,
    onReload: (event) => (event.ok ? logLine(30, `builder.tokenFile re-read: ${event.tokens} token(s) accepted`) : logLine(40, `builder.tokenFile not re-read: ${event.message}`)),
    onWarning: (message) => logLine(40, message),
  }) : undefined;
  const onHangup = () => void tokenWatch?.reload();
  if (tokenWatch) context.signals?.on('SIGHUP', onHangup);
  try {
    if (!signal.aborted) await once(signal, 'abort');
  } finally {
    tokenWatch?.stop();
    context.signals?.off('SIGHUP', onHangup);
  }
  // The first SIGTERM/SIGINT drains; a second one ends the grace period at once (running builds
  // are cancelled and recorded, never left `running`) and the exit code says it was forced.
  let forced = false;
  const force = () => {
    if (forced) return;
    forced = true;
    logLine(40, 'second signal: cancelling the running builds now');
    builder.hurry();
  };
  context.signals?.on('SIGTERM', force);
  context.signals?.on('SIGINT', force);
  try {
    await builder.stop(settings.shutdownGrace * 1000);
  } finally {
    context.signals?.off('SIGTERM', force);
    context.signals?.off('SIGINT', force);
  }
  return forced ? EXIT.interrupted : EXIT.ok;
}

/**
 * Where the builder's log lines go: stderr as JSON lines (for journald, a log shipper), or on a
 * terminal through pino-pretty (`12:04:05 INFO: request POST /v1/builds 202`), loaded only then.
 */
async function builderLogSink(stderr: Writable & { isTTY?: boolean }): Promise<Writable> {
  if (!stderr.isTTY) return stderr;
  const { default: pretty } = await import('pino-pretty');
  return pretty({ destination: stderr, colorize: true, translateTime: 'SYS:HH:MM:ss', ignore: 'pid,hostname', singleLine: true, sync: true });
}
