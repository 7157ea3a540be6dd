/**
 * `bundle-dispatch <input> --targets …` (the default command) and `bundle-dispatch status`.
 * Wires config, stores, builder clients, the embedded default, the lock and the run history
 * around `dispatch()`, renders progress (listr2 on a TTY, plain lines otherwise, one JSON
 * document with --json) and picks the exit code (dispatchExitCode): 0 all ok · 1 a target
 * failed · 2 usage, config or bad input · 75 locked · 130 interrupted.
 */
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Writable } from 'node:stream';
import type { BuilderClient } from '../builder/client.js';
import type { PoolMember, ResolvedConfig } from '../config/load.js';
import { createEmbeddedBuilder, embeddedKeyPath, type EmbeddedBuilder } from '../dispatch/embedded.js';
import { loadOrCreateSigningKey } from '../provenance/keys.js';
import { RunHistory, runOutcome, targetStateOf, type RunDocument, type RunOutcome } from '../dispatch/history.js';
import { prepareInput, type ToolEnvironment } from '../dispatch/input.js';
import { acquireLock, lockFile, type HeldLock } from '../dispatch/lock.js';
import { ensureLockfile } from '../dispatch/lockfile.js';
import { loadHostNodeRules, parseTargets, planTargets, refuseUncompilable, resolvePools, withHostNode, type Pool } from '../dispatch/plan.js';
import { dispatch, newRunId, type DispatchEvent, type DispatchResult } from '../dispatch/run.js';
import { BundleError, isBundleError, toBundleError } from '../errors.js';
import { DEFAULT_GZIP_LEVEL, isTerminal, type BuildRecord, type RequestOverrides } from '../protocol.js';
import { knownSecrets, redact } from '../redact.js';
import { openStore, type ObjectStore } from '../storage/index.js';
import { hostTarget } from '../target.js';
import { loadHookModules } from '../workflow/hooks.js';
import { ENV_ALLOW_LIST, configSecrets, locateNpm, writeNpmrc } from '../workflow/npm.js';
import { createSandbox } from '../workflow/sandbox.js';
import { loadCliConfig, registryAuth, storeOptions, workflowDefaults } from './config.js';
import { EXIT, isUsageCode } from './errors.js';
import { ownVersion } from '../package-root.js';
import type { CliContext } from './context.js';
import { formatBytes, formatMs, STEP_TITLES } from './progress.js';

export interface DispatchArgs {
  input: string;
  targets?: string[];
  source?: string;
  destination?: string;
  'key-template'?: string;
  concurrency?: number;
  force?: boolean;
  overwrite?: boolean;
  'fail-fast'?: boolean;
  'wait-lock'?: number;
  notify?: string;
  label?: string;
  json: boolean;
  verbose: boolean;
  config?: string;
  registry?: string;
  'cache-dir'?: string;
  sandbox?: string;
  'gzip-level'?: number;
}

export interface StatusArgs {
  run: string;
  json: boolean;
  verbose: boolean;
  /** Follow a running run to its end (default); `--no-follow` shows it once. */
  follow?: boolean;
  /** Exit with the run's outcome (0 delivered, 1 failed, 130 cancelled or interrupted, 8 still running) instead of 0 for "shown". */
  'exit-status'?: boolean;
  config?: string;
  'cache-dir'?: string;
}

/** How long the webhook of --notify may take. */
const NOTIFY_TIMEOUT_MS = 10_000;


/** npm and git on the dispatching side: allow-listed env, a private npmrc, the shared npm cache. */
export async function toolEnvironment(config: ResolvedConfig, env: NodeJS.ProcessEnv, workDir: string): Promise<ToolEnvironment> {
  const auth = registryAuth(config, env);
  const npmrc = path.join(workDir, 'npmrc');
  await writeNpmrc(npmrc, { registry: config.registry, scopes: config.scopes, auth });
  await writeFile(path.join(workDir, 'global-npmrc'), '');
  const base: Record<string, string> = {};
  for (const name of [...ENV_ALLOW_LIST, 'PATH', 'HOME', 'USER', 'SSH_AUTH_SOCK', 'GIT_SSH_COMMAND', ...config.envAllow]) {
    const value = env[name];
    if (value !== undefined) base[name] = value;
  }
  return {
    node: process.execPath,
    npmCli: locateNpm(env.PATH),
    env: {
      ...base,
      npm_config_userconfig: npmrc,
      npm_config_globalconfig: path.join(workDir, 'global-npmrc'),
      npm_config_cache: path.join(config.cacheDir, 'npm'),
      npm_config_update_notifier: 'false',
      npm_config_fund: 'false',
      npm_config_audit: 'false',
      npm_config_progress: 'false',
      GIT_TERMINAL_PROMPT: '0',
    },
    secrets: configSecrets({ auth }),
    sandbox: createSandbox({ setting: config.sandbox, envPath: env.PATH }),
  };
}

function runsDir(config: ResolvedConfig): string {
  return path.join(config.cacheDir, 'dispatch', 'runs');
}

// ---------------------------------------------------------------------------------------------
// Views

interface DispatchView {
  onEvent(event: DispatchEvent): void;
  done(): Promise<void>;
}

const TARGET_WORDS: Record<string, string> = {
  planned: 'waiting', cached: 'cached', reused: 'reusing a finished build', queued: 'queued', running: 'building', copying: 'copying', succeeded: 'delivered', failed: 'failed', cancelled: 'cancelled',
};

function currentStep(record: BuildRecord): string | undefined {
  const step = record.steps.findLast((candidate) => candidate.state === 'running') ?? record.steps.at(-1);
  if (!step) return undefined;
  return step.name === 'output' ? 'Upload the bundle' : STEP_TITLES[step.name];
}

/** Plain lines (no TTY, CI, logs): one per target state and step; full logs with --verbose. */
function createLineView(out: Writable, options: { verbose: boolean }): DispatchView {
  const steps = new Map<string, Set<string>>();
  return {
    onEvent(event) {
      if (event.type === 'phase') {
        if (event.state === 'finished' && event.detail) out.write(`${event.phase}: ${event.detail}\n`);
      } else if (event.type === 'target') {
        if (event.state === 'planned') return;
        const where = event.builder && event.builder !== 'embedded' ? ` on ${event.builder}` : '';
        out.write(`[${event.target}] ${TARGET_WORDS[event.state] ?? event.state}${where}${event.buildId ? ` (build ${event.buildId})` : ''}${event.detail ? `: ${event.detail}` : ''}\n`);
      } else if (event.type === 'record') {
        // Steps overlap (unpack ∥ configure): each is announced once, when it starts.
        const seen = steps.get(event.target) ?? new Set<string>();
        steps.set(event.target, seen);
        for (const step of event.record.steps) {
          if (seen.has(step.name)) continue;
          seen.add(step.name);
          out.write(`[${event.target}]   ▸ ${step.name === 'output' ? 'Upload the bundle' : STEP_TITLES[step.name]}\n`);
        }
      } else if (event.type === 'failover') {
        out.write(`[${event.target}] ! ${event.note.builder}: ${event.note.message}\n`);
        // A build sent again starts over: its steps are announced again.
        if (event.note.kind === 'redispatched') steps.delete(event.target);
      } else if (options.verbose || event.line.stream === 'status') {
        out.write(`[${event.target}]   ${event.line.step}: ${event.line.message}\n`);
      }
    },
    async done() {},
  };
}

/** listr2 on a terminal: a task per target showing its step and last log line. */
async function createListrView(labels: readonly string[], options: { verbose: boolean }): Promise<DispatchView> {
  // Loaded only for a terminal: cron, CI and --json never pay for it.
  const { Listr } = await import('listr2');
  type Waiter = { resolve: (skipped?: string) => void; reject: (error: Error) => void; promise: Promise<string | undefined> };
  const waiters = new Map<string, Waiter>();
  const outputs = new Map<string, (text: string) => void>();
  const titles = new Map<string, (text: string) => void>();
  const state = new Map<string, { step?: string; line?: string; word: string; failovers: number }>();
  for (const label of labels) {
    let resolve!: Waiter['resolve'];
    let reject!: Waiter['reject'];
    const promise = new Promise<string | undefined>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => undefined);
    waiters.set(label, { resolve, reject, promise });
    state.set(label, { word: 'waiting', failovers: 0 });
  }
  const render = (label: string) => {
    const current = state.get(label);
    if (!current) return;
    outputs.get(label)?.([current.step, current.line].filter(Boolean).join(' · '));
    titles.get(label)?.(`${label} — ${current.word}${current.failovers > 0 ? ` (${current.failovers} failover${current.failovers > 1 ? 's' : ''}: see the summary)` : ''}`);
  };
  const list = new Listr(labels.map((label) => ({
    title: `${label} — waiting`,
    task: async (_ctx: unknown, task: { output: string; title: string; skip: (message?: string) => void }) => {
      outputs.set(label, (text) => {
        task.output = text;
      });
      titles.set(label, (text) => {
        task.title = text;
      });
      render(label);
      const skipped = await waiters.get(label)?.promise;
      if (skipped) task.skip(`${label} — ${skipped}`);
    },
    rendererOptions: { outputBar: options.verbose ? 8 : 1, persistentOutput: false },
  })), { concurrent: true, exitOnError: false, registerSignalListeners: false, rendererOptions: { collapseSubtasks: false } });
  const running = list.run().catch(() => undefined);
  return {
    onEvent(event) {
      if (event.type === 'target') {
        const current = state.get(event.target);
        if (!current) return;
        current.word = TARGET_WORDS[event.state] ?? event.state;
        if (event.state === 'succeeded') {
          current.word = `delivered ${event.detail ?? ''}`;
          render(event.target);
          waiters.get(event.target)?.resolve();
        } else if (event.state === 'cached') {
          current.word = `cached ${event.detail ?? ''}`;
          render(event.target);
          waiters.get(event.target)?.resolve();
        } else if (event.state === 'failed') {
          render(event.target);
          waiters.get(event.target)?.reject(new Error(`${event.target} — ${event.detail ?? 'failed'}`));
        } else if (event.state === 'cancelled') {
          waiters.get(event.target)?.resolve('cancelled');
        } else {
          render(event.target);
        }
      } else if (event.type === 'record') {
        const current = state.get(event.target);
        if (!current) return;
        const step = currentStep(event.record);
        if (step) current.step = step;
        render(event.target);
      } else if (event.type === 'log') {
        const current = state.get(event.target);
        if (!current) return;
        current.line = event.line.message.slice(0, 160);
        render(event.target);
      } else if (event.type === 'failover') {
        const current = state.get(event.target);
        if (!current) return;
        current.failovers += 1;
        // The dead build's last step is not shown as if it were still running.
        if (event.note.kind === 'redispatched') current.step = undefined;
        current.line = `! ${event.note.builder}: ${event.note.message}`.slice(0, 200);
        render(event.target);
      }
    },
    async done() {
      for (const waiter of waiters.values()) waiter.resolve('not finished');
      await running;
    },
  };
}

/** `native`, `cross-compiled (emulated)`, `cross`: how a bundle was made and its addons proven. */
function describeMethod(outcome: { method?: string; verification?: string; prebuilt?: readonly unknown[] }): string {
  if (!outcome.method) return '';
  if (outcome.prebuilt && outcome.prebuilt.length > 0) return `${outcome.method}, prebuilt (${outcome.verification ?? 'headers'})`;
  return outcome.method === 'cross-compiled' && outcome.verification && outcome.verification !== 'none' ? `${outcome.method} (${outcome.verification})` : outcome.method;
}

/**
 * The builder's line saying which Node it chose and why (data.kind 'runtime-choice'), when that
 * is not the major this machine runs: a user who did not ask for it should not be surprised.
 */
function nodeChoiceOf(event: DispatchEvent): { target: string; message: string } | undefined {
  if (event.type !== 'log' || event.line.data?.kind !== 'runtime-choice') return undefined;
  const version = String(event.line.data.version ?? '');
  if (version.split('.')[0] === process.versions.node.split('.')[0]) return undefined;
  return { target: event.target, message: event.line.message };
}

/** What the summary adds to the result: the command's wall time and per-target notes (the Node chosen, and why). */
interface SummaryExtras {
  /** Since the process started: what the user waited, start-up and runtime fetches included. */
  wallMs: number;
  nodeChoices: ReadonlyMap<string, string>;
  /** The terminal's width, when stdout is one: the table is fitted to it (gh run list style). */
  columns?: number;
}

function summaryTable(result: DispatchResult, extras: SummaryExtras): string {
  // Where the bundle is, as the user would open it: a path for a local directory, else the URL.
  const where = (key: string) => (result.destination.startsWith('file:') ? path.join(fileURLToPath(result.destination), key) : `${result.destination}${key}`);
  const rows = result.targets.map((outcome) => outcome.ok
    ? [outcome.target, outcome.cached ? 'cached' : outcome.reused ? 'reused' : 'built', describeMethod(outcome), outcome.node ?? '', formatBytes(outcome.size), outcome.cached ? '' : formatMs(outcome.durations.buildMs ?? outcome.durations.totalMs), where(outcome.key)]
    : [outcome.target, outcome.cancelled ? 'cancelled' : 'FAILED', '', '', '', '', `${outcome.error.code}: ${outcome.error.message.split('\n')[0] ?? ''}`]);
  const header = ['target', 'result', 'how', 'node', 'size', 'build', 'bundle / error'];
  const widths = header.map((title, index) => Math.max(title.length, ...rows.map((row) => (row[index] ?? '').length)));
  const line = (row: string[]) => row.map((cell, index) => (index === row.length - 1 ? cell : cell.padEnd(widths[index] ?? 0))).join('  ').trimEnd();
  const fits = extras.columns === undefined || [header, ...rows].every((row) => line(row).length <= (extras.columns ?? 0));
  let body: string[];
  let below: string[] = [];
  let headerLine = line(header);
  if (fits) {
    // A message's first line rarely names the cause (npm's own lines follow it): a failed row
    // is followed by the rest of its message, indented under the error column.
    const indent = ' '.repeat(widths.slice(0, -1).reduce((sum, width) => sum + width + 2, 0));
    body = rows.flatMap((row, index) => {
      const outcome = result.targets[index];
      const more = outcome && !outcome.ok ? outcome.error.message.split('\n').slice(1).map((text) => text.trim()).filter(Boolean) : [];
      return [line(row), ...more.map((text) => `${indent}${text}`)];
    });
  } else {
    // Too wide for the terminal: the table keeps the short columns (cut to fit), and each full
    // path or error goes below it on lines of its own, where the terminal may wrap them whole.
    const short = fitColumns([header.slice(0, -1), ...rows.map((row) => row.slice(0, -1))], extras.columns ?? 80);
    headerLine = short[0] ?? '';
    body = short.slice(1);
    below = ['', ...result.targets.flatMap((outcome) => (outcome.ok
      ? [`${outcome.target}  ${where(outcome.key)}`]
      : [`${outcome.target}  ${outcome.error.code}:`, ...outcome.error.message.split('\n').map((text) => text.trim()).filter(Boolean).map((text) => `  ${text}`)]))];
  }
  // Footnotes: what a row alone would hide — the builders skipped, retried or lost on the way,
  // and a Node chosen other than the host's.
  const notes = result.targets.flatMap((outcome) => [
    ...(extras.nodeChoices.has(outcome.target) ? [`  ${outcome.target}: ${extras.nodeChoices.get(outcome.target)}`] : []),
    ...(outcome.failovers ?? []).map((note) => `  ${outcome.target}: ${note.kind} · ${note.builder}: ${note.message}`),
    ...(outcome.ok && outcome.isolation === 'none' ? [`  ${outcome.target}: install scripts ran without a sandbox on ${outcome.builder ?? 'the builder'} (docs/sandbox.md)`] : []),
  ]);
  const isolations = result.targets.flatMap((outcome) => (outcome.ok && outcome.isolation ? [`${outcome.target} ${outcome.isolation}`] : []));
  const sameIsolation = new Set(isolations.map((entry) => entry.split(' ')[1]));
  const ok = result.targets.filter((outcome) => outcome.ok).length;
  const builds = result.targets.flatMap((outcome) => (outcome.ok && !outcome.cached && outcome.durations.buildMs !== undefined ? [outcome.durations.buildMs] : []));
  return [
    headerLine,
    ...body,
    ...below,
    ...(notes.length > 0 ? ['', 'notes:', ...notes] : []),
    '',
    ...fitParts([
      `${result.ok ? '✔' : '✖'} ${ok}/${result.targets.length} target(s) ok`, `${result.package.name}@${result.package.version}`, `source ${result.source.sha256.slice(0, 12)}`,
      ...(result.input.commit ? [`commit ${result.input.commit.slice(0, 12)}`] : []), `${formatMs(extras.wallMs)} wall${builds.length > 0 ? ` (longest build ${formatMs(Math.max(...builds))})` : ''}`,
    ], extras.columns),
    ...(result.manifest ? [`  manifest ${where(result.manifest)}`] : []),
    ...(isolations.length === 0 ? [] : [`  isolation ${sameIsolation.size === 1 ? [...sameIsolation][0] : isolations.join(', ')}`]),
    ...(extras.columns === undefined || `  run ${result.runId} (bundle-dispatch status ${result.runId})`.length <= extras.columns
      ? [`  run ${result.runId} (bundle-dispatch status ${result.runId})`]
      : [`  run ${result.runId}`, `    bundle-dispatch status ${result.runId}`]),
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------
// dispatch

/** POSTs a JSON document to a --notify URL; answers what went wrong, if anything (a notice never fails the run). */
export async function notify(url: string, payload: unknown): Promise<string | undefined> {
  try {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'user-agent': 'bundle-dispatch' },
      body: JSON.stringify(payload),
      signal: AbortSignal.timeout(NOTIFY_TIMEOUT_MS),
    });
    return response.ok ? undefined : `HTTP ${response.status}`;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

/**
 * 130 interrupted · 0 every target delivered · 2 when nothing was delivered and every target
 * that failed failed for a usage or bad-input reason (running it again fails the same way) ·
 * 1 otherwise: some target failed to build, whatever the others did.
 */
export function dispatchExitCode(result: Pick<DispatchResult, 'interrupted' | 'ok' | 'targets'>): number {
  if (result.interrupted) return EXIT.interrupted;
  if (result.ok) return EXIT.ok;
  const codes = result.targets.flatMap((outcome) => (outcome.ok || outcome.cancelled ? [] : [outcome.error.code]));
  const delivered = result.targets.some((outcome) => outcome.ok);
  return !delivered && codes.length > 0 && codes.every(isUsageCode) ? EXIT.usage : EXIT.failed;
}

/** The commands besides the main one: an input that is one of them mistyped is a usage error. */
const COMMAND_NAMES = ['bundle', 'builder', 'dispatch', 'status', 'runs', 'logs', 'cancel', 'prune', 'verify'];

/**
 * `bundle-dispatch stauts`: yargs takes an unknown word for the main command's input (a registry
 * spec). A bare word one or two edits from a command, naming no file here, is refused with a
 * "did you mean"; a package of that name is still reachable as `name@latest`.
 */
export async function refuseMistypedCommand(input: string, cwd: string): Promise<void> {
  if (!/^[a-z][a-z-]*$/.test(input) || COMMAND_NAMES.includes(input)) return;
  const { editDistance } = await import('../edit-distance.js');
  const meant = COMMAND_NAMES.find((name) => editDistance(input, name) <= (name.length >= 4 ? 2 : 1));
  if (!meant || (await stat(path.resolve(cwd, input)).then(() => true, () => false))) return;
  throw new BundleError('ERR_USAGE', `Unknown command "${input}". Did you mean bundle-dispatch ${meant}?`, {
    hint: `Run bundle-dispatch --help for the commands. To bundle the registry package "${input}", give it with a version or tag: ${input}@latest.`,
  });
}

export async function commandDispatch(args: DispatchArgs, context: CliContext, signal: AbortSignal): Promise<number> {
  await refuseMistypedCommand(args.input, context.cwd);
  const config = await loadCliConfig(context, {
    registry: args.registry,
    cacheDir: args['cache-dir'],
    sandbox: args.sandbox,
    gzipLevel: args['gzip-level'],
    'dispatch.source': args.source,
    'dispatch.destination': args.destination,
    'dispatch.keyTemplate': args['key-template'],
    'dispatch.concurrency': args.concurrency,
    'dispatch.waitLock': args['wait-lock'],
    'dispatch.notify': args.notify,
  }, args.config);
  const settings = config.dispatch;
  const runId = newRunId();
  const cleanups: Array<() => Promise<unknown>> = [];
  const stores: ObjectStore[] = [];
  // The input is read (and, without a lockfile, resolved by npm) while the stores and builders
  // are set up: neither needs the other. A failure of the set-up still comes first, and stops it.
  const inputAbort = new AbortController();
  const inputSignal = AbortSignal.any([signal, inputAbort.signal]);
  const hostTargetOnly = !args.targets || args.targets.length === 0;
  // withHostNode's Node-range rules load meanwhile too.
  if (hostTargetOnly) loadHostNodeRules().catch(() => undefined);
  const inputReady = (async () => {
    await mkdir(config.workDir, { recursive: true });
    const workDir = await mkdtemp(path.join(config.workDir, 'dispatch-'));
    cleanups.push(() => rm(workDir, { recursive: true, force: true }));
    const tools = await toolEnvironment(config, context.env, workDir);
    // Inspect and resolve the input: a bad one fails here, before anything is uploaded.
    const input = await prepareInput(args.input, { cwd: context.cwd, workDir, tools, limits: config.limits, signal: inputSignal });
    const source = await ensureLockfile(input, { tools, workDir, signal: inputSignal, checkedDir: path.join(config.cacheDir, 'dispatch', 'lockfiles-in-sync') });
    return { workDir, tools, input, source };
  })();
  inputReady.catch(() => undefined);
  try {
    // Plan first: targets and pools are checked before the input is even packed.
    const targetList = args.targets && args.targets.length > 0 ? parseTargets(args.targets) : [hostTarget()];
    const options = storeOptions(config, context.cwd);
    const sourceLocation = settings.source ?? path.join(config.cacheDir, 'dispatch', 'store');
    const sourceStore = await openStore(sourceLocation, options);
    stores.push(sourceStore);
    const destination = await openStore(settings.destination, options);
    stores.push(destination);
    // An S3 store with no region or credentials is a configuration error (exit 2), found before any work.
    await Promise.all([sourceStore, destination].map((store) => store.checkConfiguration?.({ signal })));
    let embedded: EmbeddedBuilder | undefined;
    let pools: Pool[];
    if (Object.keys(settings.pools).length > 0) {
      // got loads only for remote builders (the embedded default loads it with its first build).
      const { createBuilderClient } = await import('../builder/client.js');
      pools = await resolvePools(settings.pools, context.env, (url, token) => createBuilderClient({ url, ...(token ? { token } : {}) }));
    } else {
      const builderStore = sourceStore.kind === 'dir' ? sourceStore : await openStore(path.join(config.cacheDir, 'dispatch', 'builder-store'), options);
      if (builderStore !== sourceStore) stores.push(builderStore);
      const defaults = workflowDefaults(config, context.env);
      const hooks = await loadHookModules(config.hooks, context.cwd);
      // The embedded default's own key pair; consumers get <cacheDir>/keys/embedded-builder.pub.pem.
      const signingKey = await loadOrCreateSigningKey(embeddedKeyPath(config.cacheDir));
      embedded = createEmbeddedBuilder({
        signingKey,
        store: builderStore,
        workDir: config.workDir,
        cacheDir: config.cacheDir,
        env: context.env,
        sandbox: config.sandbox,
        defaults,
        hooks: hooks.map((hook) => hook.module),
        slots: Math.max(1, Math.min(availableParallelism(), targetList.length)),
        runtimes: config.runtimes,
        version: await ownVersion(),
        builderId: `embedded-${runId}`,
        requested: targetList,
        // Presigned URLs of an S3 source store point at its endpoint (often a local MinIO).
        ...(config.dispatch.s3.endpoint ? { allowSources: [new URL(config.dispatch.s3.endpoint).hostname.replace(/^\[|\]$/g, '')] } : {}),
      });
      cleanups.push(() => embedded?.stop() ?? Promise.resolve());
      pools = embedded.pools;
    }
    let plan = planTargets(targetList, pools);

    const { workDir, tools, input, source } = await inputReady;
    // No --targets: this machine, and its own Node major where the package allows it, so the
    // bundle installs here (a named target without a range keeps the newest-LTS rule).
    if (hostTargetOnly) plan = await withHostNode(plan, input.packageJson, process.versions.node);
    // A native package for a target no builder can compile for: refused now, not after an upload.
    await refuseUncompilable(plan, input.dir, input.packageJson, signal);

    const progress = args.json ? undefined : context.stderr;
    const lock: HeldLock = await acquireLock(lockFile(path.join(config.cacheDir, 'dispatch', 'locks'), destination.location, source.sha256), {
      runId,
      waitMs: settings.waitLock * 1000,
      signal,
      onWait: (owner) => progress?.write(`waiting for run ${owner.runId} (pid ${owner.pid}) to finish (--wait-lock ${settings.waitLock})…\n`),
    });
    cleanups.push(() => lock.release());

    const history = new RunHistory(runsDir(config), {
      runId, pid: process.pid, startedAt: new Date().toISOString(), state: 'running', input: redact(args.input), destination: destination.location,
      package: { name: input.packageJson.name, version: input.packageJson.version }, sourceSha256: source.sha256, ...(args.label ? { label: args.label } : {}),
      targets: Object.fromEntries(plan.map((target) => [target.label, { state: 'planned' as const }])),
    });
    await history.flush();
    // `bundle-dispatch cancel <run-id>` from another terminal stops the run as Ctrl-C does (exit 130).
    const runSignal = AbortSignal.any([signal, history.watchCancel()]);
    const interactive = !args.json && Boolean(context.stderr.isTTY) && !context.env.CI;
    const view = args.json ? undefined : interactive ? await createListrView(plan.map((target) => target.label), { verbose: args.verbose }) : createLineView(context.stderr, { verbose: args.verbose });
    const nodeChoices = new Map<string, string>();
    // The second line behind the builders' sandboxes: no secret of this process (AWS
    // credentials, pool and registry tokens) is shown or kept, whatever a build printed.
    const secrets = knownSecrets(context.env, [
      ...Object.values(settings.pools).flat().map((member) => (member.tokenEnv ? context.env[member.tokenEnv] : undefined)),
      ...tools.secrets,
    ]);
    const scrub = (event: DispatchEvent): DispatchEvent => {
      if (event.type !== 'log') return event;
      const message = redact(event.line.message, secrets);
      return message === event.line.message ? event : { ...event, line: { ...event.line, message } };
    };
    const overrides: RequestOverrides = {
      ...(context.env.SOURCE_DATE_EPOCH ? { sourceDateEpoch: Number(context.env.SOURCE_DATE_EPOCH) } : {}),
      // Only a level that is not the default is sent: the build keys of runs that never set one stay as they were.
      ...(config.gzipLevel !== DEFAULT_GZIP_LEVEL ? { gzipLevel: config.gzipLevel } : {}),
    };
    let result: DispatchResult;
    try {
      result = await dispatch({
        runId,
        input,
        source,
        targets: plan,
        sourceStore,
        destination,
        keyTemplate: settings.keyTemplate,
        manifestTemplate: settings.manifestTemplate,
        concurrency: settings.concurrency,
        force: Boolean(args.force),
        overwrite: Boolean(args.overwrite),
        failFast: Boolean(args['fail-fast']),
        presignExpiry: settings.presignExpiry,
        ...(Object.keys(overrides).length > 0 ? { overrides } : {}),
        ...(args.label ? { label: args.label } : {}),
        signal: runSignal,
        tmpDir: workDir,
        onEvent: (raw) => {
          const event = scrub(raw);
          view?.onEvent(event);
          history.onEvent(event);
          const choice = nodeChoiceOf(event);
          if (choice) nodeChoices.set(choice.target, choice.message);
        },
      });
    } catch (error) {
      await view?.done();
      const failure = toBundleError(error, runSignal);
      await history.finish(failure.code === 'ERR_ABORTED' ? 'interrupted' : 'failed', undefined, { code: failure.code, message: failure.message });
      throw failure;
    }
    await view?.done();
    await history.finish(result.interrupted ? 'interrupted' : 'finished', result);
    if (settings.notify) {
      const problem = await notify(settings.notify, result);
      if (problem) context.stderr.write(`! --notify ${redact(settings.notify)}: ${problem}\n`);
    }
    if (args.json) context.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    else context.stdout.write(summaryTable(result, { wallMs: Math.round(performance.now()), nodeChoices, ...(context.stdout.isTTY && (context.stdout as { columns?: number }).columns ? { columns: (context.stdout as { columns?: number }).columns as number } : {}) }));
    return dispatchExitCode(result);
  } finally {
    // The set-up failed (or the run ended) while the input was still being read: stop that first.
    inputAbort.abort(new BundleError('ERR_ABORTED', 'The dispatch stopped before its input was read.'));
    await inputReady.catch(() => undefined);
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    for (const store of stores) store.close();
  }
}

// ---------------------------------------------------------------------------------------------
// status

/** A client for a builder URL, with the token of the pool member at that origin (none for others). */
export async function clientFor(config: ResolvedConfig, env: NodeJS.ProcessEnv, url: string): Promise<BuilderClient> {
  const { createBuilderClient } = await import('../builder/client.js');
  const origin = new URL(url).origin;
  const member = poolMemberAt(config, origin);
  if (!member) return createBuilderClient({ url: origin });
  return createBuilderClient({ url: member.url, ...(member.tokenEnv && env[member.tokenEnv] ? { token: env[member.tokenEnv] } : {}) });
}

/** The pool member of .bundlerc whose URL has this origin (its token is the one to send there). */
function poolMemberAt(config: ResolvedConfig, origin: string): PoolMember | undefined {
  return Object.values(config.dispatch.pools).flat().find((member) => new URL(member.url).origin === origin);
}

/**
 * A builder's 401 to `status <build-url>`, saying where the token comes from: the pool member of
 * that origin in .bundlerc and its `tokenEnv` variable.
 */
function unauthorizedHint(config: ResolvedConfig, env: NodeJS.ProcessEnv, origin: string, error: BundleError): BundleError {
  const member = poolMemberAt(config, origin);
  const why = !member
    ? `no pool member of .bundlerc has the URL ${origin}, so no token was sent`
    : !member.tokenEnv ? `its pool member in .bundlerc names no tokenEnv, so no token was sent`
      : !env[member.tokenEnv] ? `the token comes from $${member.tokenEnv} (its pool member's tokenEnv), which is not set` : `the token in $${member.tokenEnv} (its pool member's tokenEnv) was refused`;
  return new BundleError('ERR_UNAUTHORIZED', `Builder ${origin} refused the request (401): ${why}.`, {
    hint: member?.tokenEnv
      ? `Set ${member.tokenEnv} to one of the builder's tokens (BUNDLE_DISPATCH_BUILDER_TOKENS or its --token-file), then run status again.`
      : `Add the builder to dispatch.pools in .bundlerc with { "url": "${origin}", "tokenEnv": "MY_BUILDER_TOKEN", "publicKey": … } and set MY_BUILDER_TOKEN to one of its tokens (or give --config with such a file).`,
    cause: error,
  });
}

function describeRecord(record: BuildRecord): string {
  const step = currentStep(record);
  return `${record.state}${step && !isTerminal(record.state) ? ` · ${step}` : ''}${record.error ? ` · ${record.error.code}: ${record.error.message}` : ''}${record.artifact ? ` · ${record.artifact.file} sha256 ${record.artifact.sha256}` : ''}`;
}

export async function commandStatus(args: StatusArgs, context: CliContext, signal: AbortSignal): Promise<number> {
  const config = await loadCliConfig(context, { cacheDir: args['cache-dir'] }, args.config);
  const out = args.json ? undefined : context.stdout;
  if (/^https?:\/\//i.test(args.run)) {
    const match = /^(https?:\/\/[^/]+)(?:\/.*)?\/v1\/builds\/([\w-]+)/i.exec(args.run);
    if (!match?.[1] || !match[2]) throw new BundleError('ERR_USAGE', `"${args.run}" is not a build URL (…/v1/builds/<id>).`);
    const client = await clientFor(config, context.env, match[1]);
    const record = await client.followBuild(match[2], {
      signal,
      onLog: (line) => {
        if (args.verbose || line.stream === 'status') out?.write(`  ${line.step}: ${line.message}\n`);
      },
    }).catch((error: unknown) => {
      throw isBundleError(error, 'ERR_UNAUTHORIZED') ? unauthorizedHint(config, context.env, match[1] as string, error) : error;
    });
    if (args.json) context.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
    else out?.write(`${record.id} ${describeRecord(record)}\n`);
    if (!args['exit-status']) return EXIT.ok;
    return record.state === 'succeeded' ? EXIT.ok : record.state === 'cancelled' ? EXIT.interrupted : EXIT.failed;
  }
  const { requireRun } = await import('./runs.js');
  const dir = runsDir(config);
  let doc: RunDocument = await requireRun(dir, args.run ?? 'latest');
  // A run whose dispatching process is alive: followed to its end (gh run watch), as that process writes it.
  if (args.follow !== false && runOutcome(doc) === 'running') doc = await followRun(dir, doc, out, signal);
  // Re-attach: builds a run left unfinished when its dispatcher died are followed to their end on their builders.
  if (args.follow !== false && runOutcome(doc) === 'interrupted') {
    await Promise.all(Object.entries(doc.targets).map(async ([label, entry]) => {
      if (!entry.builderUrl || !entry.buildId || entry.builderUrl === 'embedded' || ['succeeded', 'failed', 'cancelled', 'cached'].includes(entry.state)) return;
      try {
        const record = await (await clientFor(config, context.env, entry.builderUrl)).followBuild(entry.buildId, {
          signal,
          onStatus: (status) => {
            const step = currentStep(status);
            if (step && step !== entry.step) {
              entry.step = step;
              out?.write(`[${label}]   ▸ ${step}\n`);
            }
          },
        });
        entry.state = targetStateOf(record.state);
        entry.detail = describeRecord(record);
      } catch (error) {
        entry.detail = `could not follow: ${toBundleError(error).message}`;
      }
    }));
  }
  const outcome = runOutcome(doc);
  if (args.json) {
    context.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
  } else {
    // One state model with `runs`: running, succeeded, failed, cancelled, interrupted.
    out?.write(`run ${doc.runId} · ${outcome} · started ${doc.startedAt} · ${doc.input} → ${doc.destination}\n`);
    if (doc.error) out?.write(`  error: ${doc.error.code}: ${doc.error.message}\n`);
    for (const [label, entry] of Object.entries(doc.targets)) {
      out?.write(`  ${label.padEnd(20)} ${targetWord(entry.state, outcome)}${entry.buildId ? ` (build ${entry.buildId}${entry.builderUrl && entry.builderUrl !== 'embedded' ? ` on ${entry.builderUrl}` : ''})` : ''}${entry.detail ? ` ${entry.detail}` : ''}\n`);
      for (const note of entry.failovers ?? []) out?.write(`  ${''.padEnd(20)} ! ${note.kind} · ${note.builder}: ${note.message}\n`);
    }
    if (outcome === 'running') out?.write(`  still running (pid ${doc.pid}): bundle-dispatch status ${doc.runId} follows it to its end\n`);
  }
  // gh's convention: 0 when the run could be shown; --exit-status: the run's outcome.
  if (!args['exit-status']) return EXIT.ok;
  return { succeeded: EXIT.ok, failed: EXIT.failed, cancelled: EXIT.interrupted, interrupted: EXIT.interrupted, running: EXIT.running }[outcome];
}

/** Parts joined by " · " on one line, or on as many as `columns` needs (continuations indented). */
function fitParts(parts: readonly string[], columns?: number): string[] {
  const lines: string[] = [];
  for (const part of parts) {
    const last = lines.at(-1);
    if (last !== undefined && (columns === undefined || last.length + 3 + part.length <= columns)) lines[lines.length - 1] = `${last} · ${part}`;
    else lines.push(last === undefined ? part : `  ${part}`);
  }
  return lines;
}

/**
 * Rows (the header first) padded into columns no wider together than `columns`: the widest
 * column gives up characters first, its cells cut with "…".
 */
export function fitColumns(rows: string[][], columns: number): string[] {
  const widths = (rows[0] ?? []).map((_, index) => Math.max(...rows.map((row) => (row[index] ?? '').length)));
  const total = () => widths.reduce((sum, width) => sum + width, 0) + 2 * Math.max(0, widths.length - 1);
  while (total() > columns) {
    const widest = widths.indexOf(Math.max(...widths));
    if ((widths[widest] ?? 0) <= 4) break;
    widths[widest] = (widths[widest] ?? 0) - 1;
  }
  const cut = (cell: string, width: number) => (cell.length <= width ? cell : `${cell.slice(0, Math.max(0, width - 1))}…`);
  return rows.map((row) => {
    const cells = row.map((cell, index) => cut(cell, widths[index] ?? 0));
    return cells.map((cell, index) => (index === cells.length - 1 ? cell : cell.padEnd(widths[index] ?? 0))).join('  ').trimEnd();
  });
}

/** A target's state in words; a target that never started in a run that ended says so. */
function targetWord(state: string, outcome: RunOutcome): string {
  if (outcome !== 'running' && ['planned', 'queued', 'running', 'copying'].includes(state)) return state === 'planned' ? 'not started' : `unfinished (${TARGET_WORDS[state] ?? state})`;
  return TARGET_WORDS[state] ?? state;
}

/** How often `status` re-reads a running run's document (the run writes it every 200 ms). */
const FOLLOW_POLL_MS = 500;

/**
 * Follows a running run's document until the run ends (or its process dies), printing each
 * target's state and step as they change; returns the last document.
 */
async function followRun(dir: string, first: RunDocument, out: Writable | undefined, signal: AbortSignal): Promise<RunDocument> {
  const { readRun } = await import('../dispatch/history.js');
  const seen = new Map<string, { state: string; step?: string | undefined }>();
  out?.write(`run ${first.runId} · running (pid ${first.pid}) · following it to its end (Ctrl-C stops following, not the run)\n`);
  let doc = first;
  for (;;) {
    for (const [label, entry] of Object.entries(doc.targets)) {
      const before = seen.get(label);
      if (before?.state !== entry.state) out?.write(`[${label}] ${TARGET_WORDS[entry.state] ?? entry.state}${entry.buildId ? ` (build ${entry.buildId})` : ''}\n`);
      if (entry.step && before?.step !== entry.step) out?.write(`[${label}]   ▸ ${entry.step}\n`);
      seen.set(label, { state: entry.state, step: entry.step });
    }
    if (runOutcome(doc) !== 'running') return doc;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(resolve, FOLLOW_POLL_MS);
      signal.addEventListener('abort', () => {
        clearTimeout(timer);
        reject(toBundleError(signal.reason));
      }, { once: true });
    });
    doc = (await readRun(dir, doc.runId)) ?? doc;
  }
}
