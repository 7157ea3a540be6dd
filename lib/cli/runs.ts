/**
 * The operator's commands over the local run history (`<cacheDir>/dispatch/runs/`): `runs`
 * lists recent runs, `logs` prints each target's build log, `cancel` stops a run from another
 * terminal, `prune` removes what is older than the retention. They read the history first, so
 * they answer in the time Node starts: the builder client and the stores load only where a
 * command needs them.
 */
import path from 'node:path';
import { open } from 'node:fs/promises';
import type { ResolvedConfig } from '../config/load.js';
import { RunHistory, listRuns, localLogFile, readRun, requestCancel, resolveRunId, runAlive, runOutcome, runsDirOf, type RunDocument, type RunOutcome } from '../dispatch/history.js';
import { BundleError, abortError, toBundleError } from '../errors.js';
import type { LogLine } from '../protocol.js';
import { loadCliConfig } from './config.js';
import { EXIT } from './errors.js';
import type { CliContext } from './context.js';
import { formatBytes, formatMs } from './progress.js';

/** Flags every history command takes. */
interface HistoryArgs {
  json: boolean;
  config?: string;
  'cache-dir'?: string;
}

export interface RunsArgs extends HistoryArgs {
  limit: number;
  state?: RunOutcome;
}

/** One row of `bundle-dispatch runs`. */
export interface RunSummary {
  runId: string;
  state: RunOutcome;
  /** `name@version` of the input's package (absent for runs that failed before reading it). */
  package?: string;
  input: string;
  label?: string;
  startedAt: string;
  finishedAt?: string;
  /** The run's duration; for a running run, how long it has been running. */
  durationMs: number;
  /** `pending`: not finished while the run runs; `notStarted`: never built, the run having ended (its error says why). */
  targets: { ok: number; failed: number; cancelled: number; pending: number; notStarted: number };
  /** Why the run failed before or beside its targets (an input, store or lock error). */
  error?: { code: string; message: string };
  destination: string;
  pid: number;
}

export interface LogsArgs extends HistoryArgs {
  run: string;
  /** Labels or platforms, comma-separated (`--targets`, alias `--target`). */
  targets?: string;
  follow: boolean;
}

export interface CancelArgs extends HistoryArgs {
  run: string;
}

export interface PruneArgs extends HistoryArgs {
  /** Default: DEFAULT_RETENTION of lib/dispatch/prune.ts. */
  'older-than'?: string;
  'dry-run': boolean;
}

/** How often `logs --follow` looks at the local copies and the run document. */
const FOLLOW_POLL_MS = 300;
/** How long `cancel` waits for the dispatching process to stop and cancel its own builds before cancelling them itself. */
const CANCEL_ACK_MS = 10_000;
/** How long `cancel` waits for the dispatching process to stop at all. */
const CANCEL_WAIT_MS = 30_000;
/** How long one builder may take to answer a cancel. */
const CANCEL_REQUEST_MS = 10_000;

async function historyConfig(args: HistoryArgs, context: CliContext): Promise<ResolvedConfig> {
  return loadCliConfig(context, { cacheDir: args['cache-dir'] }, args.config);
}

async function historyDir(args: HistoryArgs, context: CliContext): Promise<string> {
  return runsDirOf((await historyConfig(args, context)).cacheDir);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(abortError(signal));
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal));
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** The run document of `runId`, or ERR_USAGE naming the recent ones (as `status` does). */
/** The run a user named: a run id, a unique prefix of one, or `latest`. */
export async function requireRun(dir: string, given: string): Promise<RunDocument> {
  const runId = await resolveRunId(dir, given);
  const doc = await readRun(dir, runId);
  if (doc) return doc;
  throw new BundleError('ERR_USAGE', `Run ${runId} in ${dir} cannot be read.`, { hint: 'Its document may be damaged: bundle-dispatch runs lists the others.' });
}

export function summarizeRun(doc: RunDocument, now = Date.now()): RunSummary {
  const targets = { ok: 0, failed: 0, cancelled: 0, pending: 0, notStarted: 0 };
  const state = runOutcome(doc);
  for (const entry of Object.values(doc.targets)) {
    if (entry.state === 'succeeded' || entry.state === 'cached') targets.ok += 1;
    else if (entry.state === 'failed') targets.failed += 1;
    else if (entry.state === 'cancelled') targets.cancelled += 1;
    else if (state === 'running') targets.pending += 1;
    else targets.notStarted += 1;
  }
  const pkg = doc.package ?? doc.result?.package;
  const ended = doc.finishedAt ? Date.parse(doc.finishedAt) : undefined;
  return {
    runId: doc.runId,
    state,
    ...(pkg ? { package: `${pkg.name}@${pkg.version}` } : {}),
    input: doc.input,
    ...(doc.label ? { label: doc.label } : {}),
    startedAt: doc.startedAt,
    ...(doc.finishedAt ? { finishedAt: doc.finishedAt } : {}),
    durationMs: doc.result?.durationMs ?? Math.max(0, (ended ?? now) - Date.parse(doc.startedAt)),
    targets,
    destination: doc.destination,
    pid: doc.pid,
    ...(doc.error ? { error: doc.error } : {}),
  };
}

/** `45 s`, `12 min 5 s`, `3 h 20 min`. */
export function formatDuration(ms: number): string {
  if (ms < 60_000) return formatMs(ms);
  const minutes = Math.floor(ms / 60_000);
  if (minutes < 60) return `${minutes} min ${Math.floor((ms % 60_000) / 1000)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** `just now`, `12 min ago`, `3 h ago`, `5 d ago`. */
function formatAge(ms: number): string {
  if (ms < 60_000) return 'just now';
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min ago`;
  if (ms < 86_400_000) return `${Math.floor(ms / 3_600_000)} h ago`;
  return `${Math.floor(ms / 86_400_000)} d ago`;
}

function describeTargets(counts: RunSummary['targets']): string {
  const parts = [['ok', counts.ok], ['failed', counts.failed], ['cancelled', counts.cancelled], ['pending', counts.pending], ['not started', counts.notStarted]] as const;
  return parts.filter(([, count]) => count > 0).map(([word, count]) => `${count} ${word}`).join(', ') || 'none';
}

/** Columns padded to their widest cell; the last one is not padded. */
function table(rows: readonly string[][]): string {
  const widths = (rows[0] ?? []).map((_, index) => Math.max(...rows.map((row) => (row[index] ?? '').length)));
  return rows.map((row) => row.map((cell, index) => (index === row.length - 1 ? cell : cell.padEnd(widths[index] ?? 0))).join('  ').trimEnd()).join('\n');
}

/** `bundle-dispatch runs`: recent runs, newest first. */
export async function commandRuns(args: RunsArgs, context: CliContext): Promise<number> {
  const dir = await historyDir(args, context);
  const now = Date.now();
  const runs: RunSummary[] = [];
  // Run ids start with their start time: the listing's order is the runs' order.
  for (const id of await listRuns(dir, Number.POSITIVE_INFINITY)) {
    if (runs.length >= args.limit) break;
    const doc = await readRun(dir, id);
    if (!doc) continue;
    const summary = summarizeRun(doc, now);
    if (!args.state || summary.state === args.state) runs.push(summary);
  }
  if (args.json) {
    context.stdout.write(`${JSON.stringify({ runs }, null, 2)}\n`);
  } else if (runs.length === 0) {
    context.stderr.write(`No ${args.state ? `${args.state} ` : ''}runs in ${dir}.\n`);
  } else {
    context.stdout.write(`${table([
      ['RUN', 'PACKAGE', 'STARTED', 'TARGETS', 'DURATION', 'STATE', 'LABEL'],
      ...runs.map((run) => [run.runId, run.package ?? run.input, formatAge(now - Date.parse(run.startedAt)), describeTargets(run.targets), formatDuration(run.durationMs), run.state, run.label ?? '']),
    ])}\n`);
    // A run that failed before its builds did: its error, where the table has no room for it.
    const failedEarly = runs.filter((run) => run.error && run.targets.ok + run.targets.failed + run.targets.cancelled === 0);
    for (const run of failedEarly) context.stdout.write(`\n${run.runId}: ${run.error?.code}: ${run.error?.message.split('\n')[0] ?? ''}\n`);
  }
  return EXIT.ok;
}

// ---------------------------------------------------------------------------------------------
// logs

/** One target's log as `logs` found it. */
export interface TargetLog {
  target: string;
  /** `builder`: from the builder that ran it · `local`: the dispatching process's copy · `none`. */
  source: 'builder' | 'local' | 'none';
  lines: LogLine[];
  /** Why it is not from the builder, or why there is none. */
  note?: string;
}

/** The targets `--target` names: a label, or a label's platform without its `@range`. */
function selectTargets(doc: RunDocument, wanted: string | undefined): string[] {
  const labels = Object.keys(doc.targets);
  if (wanted === undefined) return labels;
  const chosen: string[] = [];
  for (const one of wanted.split(',').map((text) => text.trim()).filter(Boolean)) {
    const matches = labels.filter((label) => label === one || label.replace(/@.*$/, '') === one);
    if (matches.length === 0) throw new BundleError('ERR_USAGE', `Run ${doc.runId} has no target "${one}".`, { hint: `Its targets: ${labels.join(', ')}.` });
    chosen.push(...matches.filter((label) => !chosen.includes(label)));
  }
  return chosen;
}

/** Complete lines of a local copy from byte `offset` on; `next` is where the next read starts. */
async function readLocalLog(file: string, offset: number): Promise<{ exists: boolean; lines: LogLine[]; next: number }> {
  const handle = await open(file, 'r').catch(() => undefined);
  if (!handle) return { exists: false, lines: [], next: offset };
  try {
    const { size } = await handle.stat();
    if (size <= offset) return { exists: true, lines: [], next: offset };
    const buffer = Buffer.alloc(size - offset);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
    // A line being appended right now is read on the next look.
    const end = buffer.subarray(0, bytesRead).lastIndexOf(0x0a) + 1;
    const lines = buffer.subarray(0, end).toString('utf8').split('\n').flatMap((text) => {
      try {
        return text ? [JSON.parse(text) as LogLine] : [];
      } catch {
        return [];
      }
    });
    return { exists: true, lines, next: offset + end };
  } finally {
    await handle.close();
  }
}

/** A target's whole log: from its builder when that is a remote one that answers, else the local copy. */
async function targetLog(doc: RunDocument, label: string, dir: string, config: ResolvedConfig, context: CliContext, signal: AbortSignal): Promise<TargetLog> {
  const entry = doc.targets[label];
  let note: string | undefined;
  if (entry?.builderUrl && entry.builderUrl !== 'embedded' && entry.buildId) {
    try {
      const { clientFor } = await import('./dispatch.js');
      const lines = await (await clientFor(config, context.env, entry.builderUrl)).getLog(entry.buildId, { signal });
      return { target: label, source: 'builder', lines };
    } catch (error) {
      if (signal.aborted) throw abortError(signal);
      note = `build ${entry.buildId} on ${entry.builderUrl}: ${toBundleError(error).message}`;
    }
  }
  const local = await readLocalLog(localLogFile(dir, doc.runId, label), 0);
  if (local.exists) return { target: label, source: 'local', lines: local.lines, ...(note ? { note: `${note}; the local copy instead` } : {}) };
  const outcome = doc.result?.targets.find((candidate) => candidate.target === label);
  const why = entry?.state === 'cached' ? 'cached: no build ran in this run'
    : outcome?.ok && outcome.reused ? `reused build ${outcome.buildId ?? ''} of an earlier run: no build ran in this run`
      : !entry?.buildId ? `no build was started (${entry?.state ?? 'unknown'})`
        : note ?? `no local copy of build ${entry.buildId}'s log`;
  return { target: label, source: 'none', lines: [], note: why };
}

/** True when a log should exist and was found nowhere (exit 1). */
function missing(log: TargetLog, doc: RunDocument): boolean {
  const entry = doc.targets[log.target];
  const reused = doc.result?.targets.some((outcome) => outcome.target === log.target && outcome.ok && outcome.reused);
  return log.source === 'none' && Boolean(entry?.buildId) && entry?.state !== 'cached' && !reused;
}

function logLine(target: string, line: LogLine): string {
  return `[${target}] ${line.step}: ${line.message}\n`;
}

/**
 * `bundle-dispatch logs <run-id>`: every (or one) target's build log, prefixed by target. With
 * --follow on a running run, the local copies are followed until the dispatching process ends.
 */
export async function commandLogs(args: LogsArgs, context: CliContext, signal: AbortSignal): Promise<number> {
  const config = await historyConfig(args, context);
  const dir = runsDirOf(config.cacheDir);
  let doc = await requireRun(dir, args.run);
  const labels = selectTargets(doc, args.targets);
  const out = args.json ? undefined : context.stdout;
  let logs: TargetLog[];
  if (args.follow && runAlive(doc)) {
    // The dispatching process appends every line it receives (from a remote builder or the
    // embedded one) to the local copies: following them follows every target, re-dispatches included.
    const found = new Map(labels.map((label) => [label, { target: label, source: 'local' as TargetLog['source'], lines: [] as LogLine[], offset: 0 }]));
    for (;;) {
      // The document first: lines written before it says the run ended are still read below.
      doc = (await readRun(dir, doc.runId)) ?? doc;
      const alive = runAlive(doc);
      for (const current of found.values()) {
        const next = await readLocalLog(localLogFile(dir, doc.runId, current.target), current.offset);
        current.offset = next.next;
        current.lines.push(...next.lines);
        for (const line of next.lines) out?.write(logLine(current.target, line));
      }
      if (!alive) break;
      await sleep(FOLLOW_POLL_MS, signal);
    }
    logs = [...found.values()].map(({ target, lines }) => (lines.length > 0 ? { target, source: 'local', lines } : { target, source: 'none', lines, note: 'no log line was written' }));
  } else {
    logs = [];
    for (const label of labels) {
      const log = await targetLog(doc, label, dir, config, context, signal);
      logs.push(log);
      for (const line of log.lines) out?.write(logLine(label, line));
      if (log.note && out) context.stderr.write(`[${label}] (${log.note})\n`);
    }
  }
  if (args.json) context.stdout.write(`${JSON.stringify({ runId: doc.runId, state: runOutcome(doc), targets: logs }, null, 2)}\n`);
  return logs.some((log) => missing(log, doc)) ? EXIT.failed : EXIT.ok;
}

// ---------------------------------------------------------------------------------------------
// cancel

/** One remote build `cancel` stopped on its builder (or could not). */
export interface CancelledBuild {
  target: string;
  builder: string;
  buildId: string;
  /** The build's state once cancelled (`cancelled`, or how it had already ended). */
  state?: string;
  error?: { code: string; message: string };
}

const FINAL_TARGET_STATES: ReadonlySet<string> = new Set(['succeeded', 'failed', 'cancelled', 'cached']);

/** DELETE on its builder for every unfinished remote build of the run (embedded ones are its process's). */
async function cancelRemoteBuilds(doc: RunDocument, config: ResolvedConfig, context: CliContext, signal: AbortSignal): Promise<CancelledBuild[]> {
  const unfinished = Object.entries(doc.targets).flatMap(([target, entry]) => (entry.builderUrl && entry.builderUrl !== 'embedded' && entry.buildId && !FINAL_TARGET_STATES.has(entry.state) ? [{ target, builder: entry.builderUrl, buildId: entry.buildId }] : []));
  if (unfinished.length === 0) return [];
  const { clientFor } = await import('./dispatch.js');
  return Promise.all(unfinished.map(async (build): Promise<CancelledBuild> => {
    try {
      const client = await clientFor(config, context.env, build.builder);
      const record = await client.cancelBuild(build.buildId, { signal: AbortSignal.any([signal, AbortSignal.timeout(CANCEL_REQUEST_MS)]) });
      return { ...build, state: record.state };
    } catch (error) {
      const failure = toBundleError(error);
      return { ...build, error: { code: failure.code, message: failure.message } };
    }
  }));
}

/** Re-reads the run document until the run has ended, its process is gone, or `ms` have passed. */
async function waitForEnd(dir: string, doc: RunDocument, ms: number, signal: AbortSignal): Promise<RunDocument> {
  const deadline = Date.now() + ms;
  let current = doc;
  while (current.state === 'running' && runAlive(current) && Date.now() < deadline) {
    await sleep(FOLLOW_POLL_MS, signal);
    current = (await readRun(dir, current.runId)) ?? current;
  }
  return current;
}

/**
 * `bundle-dispatch cancel <run-id>`: leaves a cancel request that the run's dispatching process
 * polls; it then stops as on Ctrl-C (cancelling its remote and embedded builds), records the
 * run as cancelled and exits 130. When that process is gone, or has not stopped within
 * CANCEL_ACK_MS, the run's unfinished remote builds are cancelled from here (DELETE on their
 * builders); a run whose process is gone is marked cancelled here. A run that already ended is
 * left as it is (exit 0).
 */
export async function commandCancel(args: CancelArgs, context: CliContext, signal: AbortSignal): Promise<number> {
  const config = await historyConfig(args, context);
  const dir = runsDirOf(config.cacheDir);
  let doc = await requireRun(dir, args.run);
  if (doc.state !== 'running') {
    if (args.json) context.stdout.write(`${JSON.stringify({ runId: doc.runId, cancelled: false, state: runOutcome(doc), targets: doc.targets, builds: [] }, null, 2)}\n`);
    else context.stdout.write(`run ${doc.runId} had already ended (${runOutcome(doc)}): nothing to cancel\n`);
    return EXIT.ok;
  }
  const request = await requestCancel(dir, doc.runId);
  // One actor cancels a build: the dispatching process when it answers, else this command.
  doc = await waitForEnd(dir, doc, CANCEL_ACK_MS, signal);
  let builds: CancelledBuild[] = [];
  if (doc.state === 'running') {
    builds = await cancelRemoteBuilds(doc, config, context, signal);
    doc = await waitForEnd(dir, doc, CANCEL_WAIT_MS - CANCEL_ACK_MS, signal);
  }
  if (doc.state === 'running' && runAlive(doc)) {
    throw new BundleError('ERR_CANCEL_TIMEOUT', `Run ${doc.runId} (pid ${doc.pid} on ${doc.host ?? 'this host'}) has not stopped within ${CANCEL_WAIT_MS / 1000} s of the cancel request${builds.length > 0 ? '; its unfinished remote builds were cancelled' : ''}.`, {
      hint: `Its process may be stuck: see bundle-dispatch status ${doc.runId}, or stop it with kill ${doc.pid}.`,
      details: { builds },
    });
  }
  if (doc.state === 'running') {
    // Its process died without ending the document: it is ended here, as cancelled.
    for (const entry of Object.values(doc.targets)) if (!FINAL_TARGET_STATES.has(entry.state)) entry.state = 'cancelled';
    doc.cancel = request;
    await new RunHistory(dir, doc).finish('cancelled');
  }
  // It may also have ended on its own just before it saw the request.
  const cancelled = doc.state === 'cancelled';
  if (args.json) {
    context.stdout.write(`${JSON.stringify({ runId: doc.runId, cancelled, state: runOutcome(doc), targets: doc.targets, builds }, null, 2)}\n`);
  } else {
    for (const [label, entry] of Object.entries(doc.targets)) {
      const cancelledHere = builds.find((build) => build.target === label);
      const where = entry.buildId ? ` (build ${entry.buildId}${entry.builderUrl && entry.builderUrl !== 'embedded' ? ` on ${entry.builderUrl}` : ''})` : '';
      context.stdout.write(`  [${label}] ${entry.state}${where}${cancelledHere?.error ? `: could not cancel it: ${cancelledHere.error.code}: ${cancelledHere.error.message}` : ''}\n`);
    }
    context.stdout.write(cancelled ? `✔ run ${doc.runId} cancelled\n` : `run ${doc.runId} ended before the cancel took effect (${runOutcome(doc)})\n`);
  }
  return EXIT.ok;
}

// ---------------------------------------------------------------------------------------------
// prune

/** `bundle-dispatch prune [--older-than 30d] [--dry-run]`: see lib/dispatch/prune.ts for what goes and what stays. */
export async function commandPrune(args: PruneArgs, context: CliContext, signal: AbortSignal): Promise<number> {
  const config = await historyConfig(args, context);
  const [{ DEFAULT_RETENTION, parseRetention, prune }, { storeOptions }, { openStore }] = await Promise.all([import('../dispatch/prune.js'), import('./config.js'), import('../storage/index.js')]);
  const retention = args['older-than'] ?? DEFAULT_RETENTION;
  const report = await prune({
    cacheDir: config.cacheDir,
    olderThanMs: parseRetention(retention),
    dryRun: args['dry-run'],
    openDestination: (location) => openStore(location, storeOptions(config, context.cwd)),
    signal,
  });
  if (args.json) {
    context.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return EXIT.ok;
  }
  for (const warning of report.warnings) context.stderr.write(`! ${warning}\n`);
  const verb = report.dryRun ? 'would remove' : 'removed';
  for (const item of report.removed) {
    context.stdout.write(`${verb} ${item.kind} ${item.id} (${formatBytes(item.bytes)}, last written ${item.at})\n`);
    // Every file, store metadata included, so a dry run shows exactly what the real one removes.
    for (const file of item.files) context.stdout.write(`    ${path.relative(config.cacheDir, file)}\n`);
  }
  const count = (kind: string) => report.removed.filter((item) => item.kind === kind).length;
  const kept = [report.running.length > 0 ? `${report.running.length} running run(s)` : '', report.manifests.length > 0 ? `what ${report.manifests.length} manifest(s) point at` : ''].filter(Boolean);
  context.stdout.write(`✔ ${verb} ${count('run')} run(s), ${count('source')} source(s), ${count('build')} build(s) older than ${retention} (before ${report.olderThan}): ${formatBytes(report.bytes)}${report.dryRun ? ' would be' : ''} freed${kept.length > 0 ? `; kept ${kept.join(' and ')}` : ''}\n`);
  return EXIT.ok;
}
