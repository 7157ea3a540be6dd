/**
 * `bundle-dispatch watch [input…]`: builds every new version of what it follows, through the
 * normal dispatch path (the same cache, lock, provenance, manifest and run history; `runs` lists
 * each dispatch with the entry's label). `--once` checks every entry once and exits (cron);
 * without it the watcher checks every `--interval` seconds until SIGTERM/SIGINT.
 * `bundle-dispatch watch status` shows what the watcher knows. docs/release-automation.md.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { BundleError, toBundleError } from '../errors.js';
import { acquireLock } from '../dispatch/lock.js';
import { renderKey } from '../dispatch/keys.js';
import { newRunId } from '../dispatch/run.js';
import { redact } from '../redact.js';
import { openStore, type ObjectStore } from '../storage/index.js';
import { checkEntries, type EntryReport, type GaveUpEvent, type WatchEntry } from '../watch/check.js';
import { candidates, dispatchSpec, parseWatchInput, type WatchSource } from '../watch/sources.js';
import { readState, stateFile, writeState, type WatchState } from '../watch/state.js';
import { normalizeRepository, startWebhookListener, type WebhookListener } from '../watch/webhooks.js';
import { loadCliConfig, storeOptions } from './config.js';
import type { CliContext } from './context.js';
import { commandDispatch, notify, toolEnvironment, type DispatchArgs } from './dispatch.js';
import { EXIT } from './errors.js';

/** The main command's flags that mean the same here, and the watcher's own. */
export interface WatchArgs extends Pick<DispatchArgs, 'targets' | 'destination' | 'label' | 'notify' | 'json' | 'verbose' | 'config' | 'registry' | 'cache-dir' | 'sandbox'> {
  inputs?: string[];
  once?: boolean;
  interval?: number;
  backfill?: number;
  'max-tries'?: number;
  /** host:port for webhooks (long-running only). */
  listen?: string;
}


export async function commandWatch(args: WatchArgs, context: CliContext, signal: AbortSignal): Promise<number> {
  const config = await loadCliConfig(context, {
    registry: args.registry,
    cacheDir: args['cache-dir'],
    sandbox: args.sandbox,
    'dispatch.destination': args.destination,
    'dispatch.notify': args.notify,
    'watch.interval': args.interval,
    'watch.backfill': args.backfill,
    'watch.maxTries': args['max-tries'],
  }, args.config);
  const file = stateFile(config.cacheDir);
  const inputs = args.inputs ?? [];
  if (inputs.length === 1 && inputs[0] === 'status') return watchStatus(await readState(file), args.json, context);

  const entries: WatchEntry[] = inputs.length > 0
    ? inputs.map((input) => ({ input, ...(args.targets?.length ? { targets: args.targets } : {}), ...(args.destination ? { destination: args.destination } : {}), ...(args.label ? { label: args.label } : {}) }))
    : config.watch.entries;
  if (entries.length === 0) {
    throw new BundleError('ERR_USAGE', 'watch: nothing to watch.', { hint: 'Name what to follow (bundle-dispatch watch my-app@latest --targets linux-x64 --once) or list watch.entries in .bundlerc.' });
  }
  const sources = new Map(entries.map((entry) => [entry, parseWatchInput(entry.input)]));
  const settings = config.watch;
  if (args.listen && args.once) throw new BundleError('ERR_USAGE', 'watch: --listen needs a long-running watcher; drop --once.');
  const listenAt = args.listen ? parseListen(args.listen) : undefined;

  // One watcher per state: a second one exits 75 (ERR_LOCKED) instead of building twice.
  const lock = await acquireLock(path.join(path.dirname(file), 'lock'), { runId: `watch-${newRunId()}`, waitMs: 0, signal });
  await mkdir(config.workDir, { recursive: true });
  const workDir = await mkdtemp(path.join(config.workDir, 'watch-'));
  const stores = new Map<string, ObjectStore>();
  let listener: WebhookListener | undefined;
  try {
    const tools = await toolEnvironment(config, context.env, workDir);
    const destinationOf = async (entry: WatchEntry) => {
      const location = entry.destination ?? config.dispatch.destination;
      let store = stores.get(location);
      if (!store) {
        store = await openStore(location, storeOptions(config, context.cwd));
        stores.set(location, store);
      }
      return store;
    };
    const log = (line: string) => {
      if (!args.json) context.stderr.write(`${line}\n`);
    };
    const state = await readState(file);
    const deps = {
      now: () => new Date(),
      candidates: (entry: WatchEntry) => candidates(sources.get(entry) as WatchSource, tools, { cwd: context.cwd, signal }),
      published: async (entry: WatchEntry, version: string) => {
        const source = sources.get(entry) as WatchSource;
        // A git ref's package version is known only once it is packed: dispatch decides.
        if (source.kind === 'git') return false;
        const name = source.name;
        // A template that names the source's hash or commit cannot be checked before packing: dispatch decides.
        if (/\{(sourceSha|commit|buildKey)\}/.test(config.dispatch.manifestTemplate)) return false;
        const key = renderKey(config.dispatch.manifestTemplate, { name, version, sourceSha: '' });
        return (await destinationOf(entry)).exists(key, { signal });
      },
      dispatch: (entry: WatchEntry, version: string) => dispatchVersion(entry, dispatchSpec(sources.get(entry) as WatchSource, version), args, context, signal),
      save: (next: WatchState) => writeState(file, next),
      ...(config.dispatch.notify ? { notify: (event: GaveUpEvent) => postNotification(config.dispatch.notify as string, event, context) } : {}),
      log,
    };
    const options = { backfill: settings.backfill, maxTries: settings.maxTries, retryBaseMs: settings.retryDelay * 1000, signal };
    // Webhooks name a repository; the entries that follow it are checked at once.
    const pending = new Set<WatchEntry>();
    let wake: (() => void) | undefined;
    if (listenAt) {
      const followed = () => new Set([...sources.values()].flatMap((source) => (source.kind === 'git' ? [normalizeRepository(source.url)] : [])));
      listener = await startWebhookListener({
        ...listenAt, env: context.env, repositories: followed, status: () => ({ entries: statusEntries(state) }), log: (line) => context.stderr.write(`${line}\n`),
        onPush: (repository) => {
          for (const [entry, source] of sources) if (source.kind === 'git' && normalizeRepository(source.url) === repository) pending.add(entry);
          wake?.();
        },
      });
      context.stderr.write(`listening for webhooks on ${listener.url} (POST /hooks/github, /hooks/gitlab, /hooks/gitea)\n`);
    }
    let due = entries;
    let fullCheckAt = Date.now();
    for (;;) {
      const { reports, interrupted } = await checkEntries(due, state, deps, options);
      report(reports, args.json, context);
      if (interrupted || signal.aborted) return args.once ? EXIT.interrupted : EXIT.ok;
      if (args.once) return reports.some((entry) => entry.error || entry.failed.length > 0) ? EXIT.failed : EXIT.ok;
      if (pending.size === 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.max(0, fullCheckAt + settings.interval * 1000 - Date.now()));
          const done = () => {
            clearTimeout(timer);
            signal.removeEventListener('abort', done);
            wake = undefined;
            resolve();
          };
          wake = done;
          signal.addEventListener('abort', done, { once: true });
        });
      }
      if (signal.aborted) return EXIT.ok;
      if (Date.now() >= fullCheckAt + settings.interval * 1000) {
        due = entries;
        fullCheckAt = Date.now();
      } else {
        due = [...pending];
      }
      pending.clear();
    }
  } finally {
    await listener?.close();
    for (const store of stores.values()) store.close();
    await rm(workDir, { recursive: true, force: true }).catch(() => undefined);
    await lock.release();
  }
}

/** One version through the main command's own code path, as `bundle-dispatch <spec> --json` would run it. */
async function dispatchVersion(entry: WatchEntry, spec: string, args: WatchArgs, context: CliContext, signal: AbortSignal): Promise<{ ok: boolean; runId?: string; error?: string; interrupted?: boolean }> {
  let out = '';
  const stdout = Object.assign(new Writable({
    write(chunk: Buffer, _encoding, callback) {
      out += chunk.toString();
      callback();
    },
  }), { isTTY: false });
  const quiet = new Writable({ write: (_chunk, _encoding, callback) => callback() });
  try {
    const code = await commandDispatch({
      input: spec,
      ...(entry.targets?.length ? { targets: entry.targets } : {}),
      ...(entry.destination ? { destination: entry.destination } : {}),
      label: entry.label ?? entry.input,
      json: true,
      verbose: false,
      ...(args.config ? { config: args.config } : {}),
      ...(args.registry ? { registry: args.registry } : {}),
      ...(args['cache-dir'] ? { 'cache-dir': args['cache-dir'] } : {}),
      ...(args.sandbox ? { sandbox: args.sandbox } : {}),
    }, { ...context, stdout, stderr: args.verbose ? context.stderr : quiet }, signal);
    const result = JSON.parse(out) as { ok: boolean; runId?: string; targets?: Array<{ ok: boolean; error?: { code: string; message: string } }> };
    if (code === EXIT.interrupted || signal.aborted) return { ok: false, interrupted: true };
    const failure = result.targets?.find((target) => !target.ok)?.error;
    return { ok: code === EXIT.ok && result.ok, ...(result.runId ? { runId: result.runId } : {}), ...(failure ? { error: `${failure.code}: ${failure.message}` } : code === EXIT.ok ? {} : { error: `exit ${code}` }) };
  } catch (error) {
    const failure = toBundleError(error, signal);
    if (failure.code === 'ERR_ABORTED') return { ok: false, interrupted: true };
    return { ok: false, error: `${failure.code}: ${failure.message}` };
  }
}

async function postNotification(url: string, event: GaveUpEvent, context: CliContext): Promise<void> {
  const problem = await notify(url, event);
  if (problem) context.stderr.write(`! --notify ${redact(url)}: ${problem}\n`);
}

function report(reports: EntryReport[], json: boolean, context: CliContext): void {
  if (json) {
    context.stdout.write(`${JSON.stringify({ checkedAt: new Date().toISOString(), entries: reports })}\n`);
    return;
  }
  for (const entry of reports) {
    const name = entry.label ?? entry.input;
    if (entry.error) {
      context.stdout.write(`${name}: check failed: ${entry.error}\n`);
      continue;
    }
    const parts = [
      ...entry.dispatched.map((item) => `${item.version} delivered (run ${item.runId ?? '?'})`),
      ...entry.published.map((version) => `${version} already in the destination`),
      ...entry.failed.map((item) => `${item.version} failed (try ${item.tries}${item.gaveUp ? ', given up' : `, next try ${item.nextAt}`}): ${item.error}`),
      ...entry.backingOff.map((item) => `${item.version} waits until ${item.nextAt}`),
      ...(entry.passedOver.length > 0 ? [`${entry.passedOver.length} older version(s) passed over (--backfill)`] : []),
    ];
    context.stdout.write(`${name}: newest ${entry.newest ?? 'none'}; ${parts.length > 0 ? parts.join('; ') : 'nothing new'}\n`);
  }
}

/** `host:port` of --listen. */
function parseListen(text: string): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text);
  if (!match || Number(match[2]) > 65535) throw new BundleError('ERR_USAGE', `watch: --listen ${text} is not host:port (127.0.0.1:8789, 0.0.0.0:8789; port 0: any free port).`);
  return { host: (match[1] as string).replace(/^\[|\]$/g, ''), port: Number(match[2]) };
}

function statusEntries(state: WatchState) {
  return Object.entries(state.entries).map(([key, entry]) => ({
    key, input: entry.input, ...(entry.label ? { label: entry.label } : {}), lastCheck: entry.lastCheck ?? null, newest: entry.newest ?? null,
    lastDispatched: entry.lastDispatched ?? null, lastFailure: entry.lastFailure ?? null, lastCheckError: entry.lastCheckError ?? null,
    failing: Object.entries(entry.failures).map(([version, failure]) => ({ version, ...failure })),
  }));
}

function watchStatus(state: WatchState, json: boolean, context: CliContext): number {
  const entries = statusEntries(state);
  if (json) {
    context.stdout.write(`${JSON.stringify({ entries }, null, 2)}\n`);
    return EXIT.ok;
  }
  if (entries.length === 0) context.stdout.write('No entry has been checked yet (bundle-dispatch watch <input> --once).\n');
  for (const entry of entries) {
    context.stdout.write(`${entry.label ?? entry.input}\n  last check ${entry.lastCheck ?? 'never'} · newest ${entry.newest ?? '—'} · last dispatched ${entry.lastDispatched ? `${entry.lastDispatched.version} (run ${entry.lastDispatched.runId ?? '?'})` : '—'}\n`);
    if (entry.lastCheckError) context.stdout.write(`  check failed: ${entry.lastCheckError}\n`);
    for (const failure of entry.failing) context.stdout.write(`  ${failure.version}: ${failure.tries} failed tr${failure.tries === 1 ? 'y' : 'ies'}${failure.gaveUp ? ', given up' : `, next try ${failure.nextAt}`}: ${failure.lastError}\n`);
  }
  return EXIT.ok;
}

