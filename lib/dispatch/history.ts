/**
 * The local run history: one JSON document per run under `<cacheDir>/dispatch/runs/`, written
 * as the run goes (which builder, which build id), so `bundle-dispatch status <run-id>` can
 * show and re-attach to it later — from another terminal, or after the dispatching process died.
 */
import { mkdir, readFile, readdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { isTerminal, type BuildState } from '../protocol.js';
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
  startedAt: string;
  state: 'running' | 'finished' | 'interrupted' | 'failed';
  input: string;
  destination: string;
  targets: Record<string, RunTargetEntry>;
  result?: DispatchResult;
  error?: { code: string; message: string };
}

const FLUSH_MS = 200;

/** Keeps one run's document up to date (writes are coalesced; the last one always lands). */
export class RunHistory {
  readonly file: string;
  private writing: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;

  constructor(readonly dir: string, readonly doc: RunDocument) {
    this.file = path.join(dir, `${doc.runId}.json`);
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
    }
  }

  private schedule(): void {
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, FLUSH_MS);
  }

  /** Writes the document now (atomically: temp file + rename). */
  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const text = `${JSON.stringify(this.doc, null, 2)}\n`;
    this.writing = this.writing.then(async () => {
      await mkdir(this.dir, { recursive: true });
      const temporary = `${this.file}.${process.pid}.tmp`;
      await writeFile(temporary, text, { mode: 0o600 });
      await rename(temporary, this.file);
    }).catch(() => undefined);
    return this.writing;
  }

  async finish(state: RunDocument['state'], result?: DispatchResult, error?: { code: string; message: string }): Promise<void> {
    this.doc.state = state;
    if (result) this.doc.result = result;
    if (error) this.doc.error = error;
    await this.flush();
  }
}

export async function readRun(dir: string, runId: string): Promise<RunDocument | undefined> {
  if (!/^[\w.-]+$/.test(runId)) return undefined;
  return readFile(path.join(dir, `${runId}.json`), 'utf8').then((text) => JSON.parse(text) as RunDocument, () => undefined);
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
