/**
 * One pass of the watcher over its entries: what each follows is listed, what is new is
 * decided (against the destination first, then the state), and each new version goes through
 * the normal dispatch path. Failures back off and are given up on after `maxTries`, with a
 * notification. The parts that touch the world (registry, destination, dispatch) come in as
 * functions, so the rules here are tested on their own as well as end to end.
 */
import type { EntryState, WatchState } from './state.js';

export interface WatchEntry {
  /** What it follows: `my-app@latest`, `@acme/app@^2`. */
  input: string;
  targets?: string[];
  /** Destination store; undefined: dispatch.destination. */
  destination?: string;
  /** Shown in `runs` for every dispatch of this entry (default: the input). */
  label?: string;
}

export interface DispatchOutcome {
  ok: boolean;
  runId?: string;
  error?: string;
  /** Stopped by a signal: not a failure, tried again next time. */
  interrupted?: boolean;
}

export interface CheckDeps {
  now(): Date;
  candidates(entry: WatchEntry): Promise<string[]>;
  /** A manifest for this version is in the entry's destination: it is done. */
  published(entry: WatchEntry, version: string): Promise<boolean>;
  dispatch(entry: WatchEntry, version: string): Promise<DispatchOutcome>;
  /** After each change, so a watcher killed mid-pass loses nothing it did. */
  save(state: WatchState): Promise<void>;
  notify?(event: GaveUpEvent): Promise<void>;
  log?(line: string): void;
}

export interface GaveUpEvent {
  event: 'watch.gave-up';
  input: string;
  label?: string;
  version: string;
  tries: number;
  error: string;
}

export interface CheckOptions {
  /** On an entry's first check: how many of the newest matches to build (the rest are passed over). */
  backfill: number;
  /** Tries of a failing version before it is given up on. */
  maxTries: number;
  /** First back-off; each further failure waits four times longer (at most a day). */
  retryBaseMs: number;
  signal?: AbortSignal;
}

export interface EntryReport {
  input: string;
  label?: string;
  newest?: string;
  dispatched: Array<{ version: string; runId?: string }>;
  published: string[];
  passedOver: string[];
  failed: Array<{ version: string; error: string; tries: number; nextAt?: string; gaveUp: boolean }>;
  backingOff: Array<{ version: string; nextAt: string }>;
  error?: string;
}

const DAY_MS = 24 * 3600_000;

/** The state key of an entry: the same input to another destination or targets is another entry. */
export function entryKey(entry: WatchEntry): string {
  return `${entry.input} -> ${entry.destination ?? '(dispatch.destination)'} [${(entry.targets ?? []).join(',') || 'host'}]`;
}

export async function checkEntries(entries: readonly WatchEntry[], state: WatchState, deps: CheckDeps, options: CheckOptions): Promise<{ reports: EntryReport[]; interrupted: boolean }> {
  const reports: EntryReport[] = [];
  for (const entry of entries) {
    if (options.signal?.aborted) return { reports, interrupted: true };
    const key = entryKey(entry);
    const current: EntryState = state.entries[key] ?? { input: entry.input, seen: {}, failures: {} };
    if (entry.label) current.label = entry.label;
    state.entries[key] = current;
    const report: EntryReport = { input: entry.input, ...(entry.label ? { label: entry.label } : {}), dispatched: [], published: [], passedOver: [], failed: [], backingOff: [] };
    reports.push(report);
    const firstCheck = current.lastCheck === undefined;
    let list: string[];
    try {
      list = await deps.candidates(entry);
    } catch (error) {
      report.error = (error as Error).message;
      current.lastCheckError = report.error;
      current.lastCheck = deps.now().toISOString();
      await deps.save(state);
      continue;
    }
    delete current.lastCheckError;
    current.lastCheck = deps.now().toISOString();
    if (list.length > 0) current.newest = list.at(-1) as string;
    report.newest = current.newest;
    let todo = list.filter((version) => !current.seen[version] && !current.failures[version]?.gaveUp);
    if (firstCheck && todo.length > Math.max(1, options.backfill)) {
      // A first check builds the newest match (or the newest `backfill`), not the whole history.
      const passed = todo.slice(0, todo.length - Math.max(1, options.backfill));
      for (const version of passed) current.seen[version] = { at: current.lastCheck, how: 'passed-over' };
      report.passedOver.push(...passed);
      todo = todo.slice(passed.length);
    }
    await deps.save(state);
    for (const version of todo) {
      if (options.signal?.aborted) return { reports, interrupted: true };
      const failure = current.failures[version];
      if (failure && Date.parse(failure.nextAt) > deps.now().getTime()) {
        report.backingOff.push({ version, nextAt: failure.nextAt });
        continue;
      }
      if (await deps.published(entry, version).catch(() => false)) {
        current.seen[version] = { at: deps.now().toISOString(), how: 'published' };
        delete current.failures[version];
        report.published.push(version);
        await deps.save(state);
        continue;
      }
      deps.log?.(`${entry.label ?? entry.input}: ${version} is new; dispatching`);
      const outcome = await deps.dispatch(entry, version);
      const at = deps.now();
      if (outcome.interrupted) return { reports, interrupted: true };
      if (outcome.ok) {
        current.seen[version] = { at: at.toISOString(), how: 'dispatched', ...(outcome.runId ? { runId: outcome.runId } : {}) };
        current.lastDispatched = { version, at: at.toISOString(), ...(outcome.runId ? { runId: outcome.runId } : {}) };
        delete current.failures[version];
        report.dispatched.push({ version, ...(outcome.runId ? { runId: outcome.runId } : {}) });
      } else {
        const tries = (failure?.tries ?? 0) + 1;
        const error = outcome.error ?? 'the dispatch failed';
        const gaveUp = tries >= options.maxTries;
        const nextAt = new Date(at.getTime() + Math.min(DAY_MS, options.retryBaseMs * 4 ** (tries - 1))).toISOString();
        current.failures[version] = { tries, lastError: error, nextAt, ...(gaveUp ? { gaveUp: true } : {}) };
        current.lastFailure = { version, at: at.toISOString(), error };
        report.failed.push({ version, error, tries, gaveUp, ...(gaveUp ? {} : { nextAt }) });
        if (gaveUp) await deps.notify?.({ event: 'watch.gave-up', input: entry.input, ...(entry.label ? { label: entry.label } : {}), version, tries, error }).catch(() => undefined);
      }
      await deps.save(state);
    }
  }
  return { reports, interrupted: false };
}
