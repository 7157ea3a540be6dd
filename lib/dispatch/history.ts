/**
 * The local run history: one JSON document per run under `<cacheDir>/dispatch/runs/`, written
 * as the run goes (which builder, which build id), so `bundle-dispatch status <run-id>` can
 * show and re-attach to it later — from another terminal, or after the dispatching process
 * died — and `bundle-dispatch runs` can list it.
 */
import { hostname } from 'node:os';
import { appendFile, mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BundleError } from '../errors.js';
import { isTerminal, type BuildState } from '../protocol.js';
import { processAlive } from './lock.js';
import type { DispatchEvent, DispatchResult, FailoverNote, TargetState } from './run.js';

export interface RunTargetEntry {
  state: TargetState;
  detail?: string;
  builderUrl?: string;
  buildId?: string;
  step?: string;
  /** Builders skipped, requests retried or sent elsewhere, lost builds sent again. */
  failovers?: FailoverNote[];
}

export interface RunDocument {
  runId: string;
  pid: number;
  /** The machine the dispatching process runs on (its pid means nothing elsewhere). */
  host?: string;
  startedAt: string;
  /** Set when the run ends. */
  finishedAt?: string;
  state: 'running' | 'finished' | 'interrupted' | 'failed' | 'cancelled';
  input: string;
  /** The input's package, known once the input is inspected (before the run document is written). */
  package?: { name: string; version: string };
  /** The source tarball's sha256: what the run needs from the source store while it runs. */
  sourceSha256?: string;
  label?: string;
  /** Who cancelled the run (`bundle-dispatch cancel`), when it was. */
  cancel?: CancelRequest;
  destination: string;
  targets: Record<string, RunTargetEntry>;
  result?: DispatchResult;
  error?: { code: string; message: string };
}

/** What a run looks like to an operator (`bundle-dispatch runs --state`). */
export type RunOutcome = 'running' | 'succeeded' | 'failed' | 'cancelled' | 'interrupted';

/** True while the run's dispatching process is alive (a run on another host counts as alive). */
export function runAlive(doc: Pick<RunDocument, 'state' | 'pid' | 'host'>): boolean {
  return doc.state === 'running' && (doc.host !== undefined && doc.host !== hostname() ? true : processAlive(doc.pid));
}

/** `finished` split by whether every target was delivered; a `running` run whose process died is `interrupted`. */
export function runOutcome(doc: RunDocument): RunOutcome {
  if (doc.state === 'running') return runAlive(doc) ? 'running' : 'interrupted';
  if (doc.state === 'finished') return doc.result?.ok ? 'succeeded' : 'failed';
  return doc.state;
}

const FLUSH_MS = 200;
/** How often a running dispatch looks for a cancel request. */
const CANCEL_POLL_MS = 300;

/** What `bundle-dispatch cancel` leaves for a run's dispatching process: who asks, and when. */
export interface CancelRequest {
  pid: number;
  host: string;
  at: string;
}

/** Where `bundle-dispatch cancel <run-id>` asks that run's dispatching process to stop. */
export function cancelRequestFile(dir: string, runId: string): string {
  return path.join(dir, `${runId}.cancel`);
}

/** Leaves a cancel request for the run (a running dispatch sees it within CANCEL_POLL_MS). */
export async function requestCancel(dir: string, runId: string): Promise<CancelRequest> {
  const request: CancelRequest = { pid: process.pid, host: hostname(), at: new Date().toISOString() };
  await writeFile(cancelRequestFile(dir, runId), `${JSON.stringify(request)}\n`, { mode: 0o600 });
  return request;
}

/**
 * Where the dispatching process keeps a copy of a target's build log (NDJSON, one LogLine a
 * line, as the builder sent it): `bundle-dispatch logs` reads it when the builder is gone — the
 * embedded default's always is once its run has ended.
 */
export function localLogFile(dir: string, runId: string, target: string): string {
  // Labels are `os-cpu[-libc][@range]`; a range may hold characters a file name should not.
  const name = target.replace(/[^\w.@-]/g, (char) => `%${char.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`);
  return path.join(dir, runId, `${name}.ndjson`);
}

/**
 * Keeps one run's document up to date (writes are coalesced; the last one always lands) and
 * appends each target's log lines to its local copy (localLogFile).
 */
export class RunHistory {
  readonly file: string;
  private writing: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  /** The document changed since it was last written (log lines alone do not rewrite it). */
  private changed = false;
  private readonly logLines = new Map<string, string[]>();
  private cancelPoll: NodeJS.Timeout | undefined;
  private cancelRequest: CancelRequest | undefined;

  constructor(readonly dir: string, readonly doc: RunDocument) {
    this.file = path.join(dir, `${doc.runId}.json`);
    doc.host ??= hostname();
  }

  onEvent(event: DispatchEvent): void {
    if (event.type === 'target') {
      const entry = (this.doc.targets[event.target] ??= { state: event.state });
      entry.state = event.state;
      if (event.detail !== undefined) entry.detail = event.detail;
      if (event.builder) entry.builderUrl = event.builder;
      if (event.buildId) entry.buildId = event.buildId;
      this.schedule();
    } else if (event.type === 'record') {
      const entry = this.doc.targets[event.target];
      const step = event.record.steps.at(-1)?.name;
      if (entry && step && entry.step !== step) {
        entry.step = step;
        this.schedule();
      }
    } else if (event.type === 'failover') {
      const entry = this.doc.targets[event.target];
      if (entry) {
        (entry.failovers ??= []).push(event.note);
        // A build sent again starts over: its last step was the lost build's.
        if (event.note.kind === 'redispatched') delete entry.step;
        this.schedule();
      }
    } else if (event.type === 'log') {
      const lines = this.logLines.get(event.target) ?? [];
      lines.push(JSON.stringify(event.line));
      this.logLines.set(event.target, lines);
      this.schedule(false);
    }
  }

  private schedule(documentChanged = true): void {
    this.changed ||= documentChanged;
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      void this.write();
    }, FLUSH_MS);
  }

  /** Writes the document now (atomically: temp file + rename), and the log lines waiting. */
  flush(): Promise<void> {
    this.changed = true;
    return this.write();
  }

  private write(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const text = this.changed ? `${JSON.stringify(this.doc, null, 2)}\n` : undefined;
    this.changed = false;
    const logs = [...this.logLines];
    this.logLines.clear();
    this.writing = this.writing.then(async () => {
      await mkdir(this.dir, { recursive: true });
      for (const [target, lines] of logs) {
        const file = localLogFile(this.dir, this.doc.runId, target);
        await mkdir(path.dirname(file), { recursive: true });
        await appendFile(file, `${lines.join('\n')}\n`, { mode: 0o600 });
      }
      if (text === undefined) return;
      const temporary = `${this.file}.${process.pid}.tmp`;
      await writeFile(temporary, text, { mode: 0o600 });
      await rename(temporary, this.file);
    }).catch(() => undefined);
    return this.writing;
  }

  /**
   * A signal that aborts when `bundle-dispatch cancel <run-id>` asks this run to stop (its
   * request file is polled until finish()); the run then ends as Ctrl-C would, and finish()
   * records it as cancelled.
   */
  watchCancel(): AbortSignal {
    const controller = new AbortController();
    const file = cancelRequestFile(this.dir, this.doc.runId);
    clearInterval(this.cancelPoll);
    this.cancelPoll = setInterval(() => {
      void readFile(file, 'utf8').then((text) => {
        if (controller.signal.aborted) return;
        const request = JSON.parse(text) as CancelRequest;
        this.cancelRequest = request;
        clearInterval(this.cancelPoll);
        controller.abort(new BundleError('ERR_ABORTED', `Cancelled by bundle-dispatch cancel (pid ${request.pid} on ${request.host} at ${request.at}).`));
      }, () => undefined);
    }, CANCEL_POLL_MS);
    // The poll alone does not keep the process alive.
    this.cancelPoll.unref();
    return controller.signal;
  }

  async finish(state: RunDocument['state'], result?: DispatchResult, error?: { code: string; message: string }): Promise<void> {
    clearInterval(this.cancelPoll);
    const cancelled = this.cancelRequest !== undefined && (state === 'interrupted' || state === 'failed');
    if (cancelled) this.doc.cancel = this.cancelRequest;
    this.doc.state = cancelled ? 'cancelled' : state;
    this.doc.finishedAt = new Date().toISOString();
    if (result) this.doc.result = result;
    if (error) this.doc.error = error;
    await this.flush();
    // Answered (or too late to matter): the request goes.
    await rm(cancelRequestFile(this.dir, this.doc.runId), { force: true });
  }
}

/** Where the run documents of a cache dir are. */
export function runsDirOf(cacheDir: string): string {
  return path.join(cacheDir, 'dispatch', 'runs');
}

export async function readRun(dir: string, runId: string): Promise<RunDocument | undefined> {
  if (!/^[\w.-]+$/.test(runId)) return undefined;
  return readFile(path.join(dir, `${runId}.json`), 'utf8').then((text) => JSON.parse(text) as RunDocument, () => undefined);
}

/**
 * The run a user means: `latest` (the newest run), a whole run id, or a unique prefix of one
 * (`20261207T0430`); an ambiguous prefix or no match is ERR_USAGE naming what there is.
 *
 * @example
 * await resolveRunId(dir, 'latest')          // '20261207T043057Z-6b1c95af'
 * await resolveRunId(dir, '20261207T0430')   // the one run started in that minute
 */
export async function resolveRunId(dir: string, given: string): Promise<string> {
  const all = await listRuns(dir, Number.POSITIVE_INFINITY);
  if (given === 'latest') {
    if (all[0]) return all[0];
    throw new BundleError('ERR_USAGE', `No run has been recorded in ${dir} yet.`, { hint: 'Dispatch something first (bundle-dispatch <input>), or give --cache-dir where its runs are.' });
  }
  if (all.includes(given)) return given;
  const matches = /^[\w.-]+$/.test(given) ? all.filter((id) => id.startsWith(given)) : [];
  if (matches.length === 1 && matches[0]) return matches[0];
  if (matches.length > 1) {
    throw new BundleError('ERR_USAGE', `"${given}" matches ${matches.length} runs: ${matches.slice(0, 5).join(', ')}${matches.length > 5 ? ', …' : ''}.`, { hint: 'Give more of the run id (bundle-dispatch runs lists them), or latest.' });
  }
  throw new BundleError('ERR_USAGE', `No run "${given}" in ${dir}.`, { hint: all.length > 0 ? `Recent runs: ${all.slice(0, 5).join(', ')} (bundle-dispatch runs), or latest.` : 'No run has been recorded yet.' });
}

/** Run ids, newest first. */
export async function listRuns(dir: string, limit = 10): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  return names.filter((name) => name.endsWith('.json')).map((name) => name.slice(0, -5)).sort().reverse().slice(0, limit);
}

/** Target states that a build's state maps to, for re-attached builds. */
export function targetStateOf(state: BuildState): TargetState {
  return isTerminal(state) ? (state === 'succeeded' ? 'succeeded' : state === 'failed' ? 'failed' : 'cancelled') : state;
}
