/**
 * The operator's commands over the local run history (`<cacheDir>/dispatch/runs/`): `runs`
 * lists recent runs. It reads the history only, so it answers in the time Node starts.
 */
import type { ResolvedConfig } from '../config/load.js';
import { listRuns, readRun, runOutcome, runsDirOf, type RunDocument, type RunOutcome } from '../dispatch/history.js';
import { BundleError } from '../errors.js';
import { loadCliConfig } from './config.js';
import { EXIT } from './errors.js';
import type { CliContext } from './main.js';
import { formatMs } from './progress.js';

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
  targets: { ok: number; failed: number; cancelled: number; pending: number };
  destination: string;
  pid: number;
}

async function historyConfig(args: HistoryArgs, context: CliContext): Promise<ResolvedConfig> {
  return loadCliConfig(context, { cacheDir: args['cache-dir'] }, args.config);
}

async function historyDir(args: HistoryArgs, context: CliContext): Promise<string> {
  return runsDirOf((await historyConfig(args, context)).cacheDir);
}

/** The run document of `runId`, or ERR_USAGE naming the recent ones (as `status` does). */
export async function requireRun(dir: string, runId: string): Promise<RunDocument> {
  const doc = await readRun(dir, runId);
  if (doc) return doc;
  const recent = await listRuns(dir, 5);
  throw new BundleError('ERR_USAGE', `No run "${runId}" in ${dir}.`, { hint: recent.length > 0 ? `Recent runs: ${recent.join(', ')} (bundle-dispatch runs).` : 'No run has been recorded yet.' });
}

export function summarizeRun(doc: RunDocument, now = Date.now()): RunSummary {
  const targets = { ok: 0, failed: 0, cancelled: 0, pending: 0 };
  for (const entry of Object.values(doc.targets)) {
    if (entry.state === 'succeeded' || entry.state === 'cached') targets.ok += 1;
    else if (entry.state === 'failed') targets.failed += 1;
    else if (entry.state === 'cancelled') targets.cancelled += 1;
    else targets.pending += 1;
  }
  const pkg = doc.package ?? doc.result?.package;
  const state = runOutcome(doc);
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
  const parts = [['ok', counts.ok], ['failed', counts.failed], ['cancelled', counts.cancelled], ['pending', counts.pending]] as const;
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
  }
  return EXIT.ok;
}
