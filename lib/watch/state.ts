/**
 * The watcher's memory: per entry, the versions it has seen (built, found published, or passed
 * over on a first run), the failures it is backing off from, and when it last checked. One JSON
 * file under the cache dir, replaced atomically (written beside, then renamed), so a watcher
 * killed mid-write leaves the previous state whole. The destination stays the authority: a
 * manifest there means done, whatever this file says.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BundleError } from '../errors.js';

export interface VersionFailure {
  tries: number;
  lastError: string;
  /** ISO time before which the version is not tried again. */
  nextAt: string;
  /** Given up on after the last allowed try: not tried again (a notification was sent). */
  gaveUp?: boolean;
}

export interface EntryState {
  input: string;
  label?: string;
  lastCheck?: string;
  /** The newest version (or commit) the last check found. */
  newest?: string;
  /** Versions done or deliberately passed over, with why. */
  seen: Record<string, { at: string; how: 'dispatched' | 'published' | 'passed-over'; runId?: string }>;
  failures: Record<string, VersionFailure>;
  lastDispatched?: { version: string; at: string; runId?: string };
  lastFailure?: { version: string; at: string; error: string };
  /** An error of the check itself (the registry did not answer…). */
  lastCheckError?: string;
}

export interface WatchState {
  version: 1;
  entries: Record<string, EntryState>;
}

export function stateFile(cacheDir: string): string {
  return path.join(cacheDir, 'watch', 'state.json');
}

export async function readState(file: string): Promise<WatchState> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { version: 1, entries: {} };
    throw error;
  }
  try {
    const parsed = JSON.parse(text) as WatchState;
    if (parsed.version !== 1 || typeof parsed.entries !== 'object') throw new Error('not a watch state');
    return parsed;
  } catch (error) {
    throw new BundleError('ERR_CONFIG', `The watch state ${file} is not readable (${(error as Error).message}); move it aside to start over (every entry then starts with its newest version).`, { cause: error });
  }
}

/** Writes the whole state beside the file and renames it into place. */
export async function writeState(file: string, state: WatchState): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const temporary = `${file}.${process.pid}.tmp`;
  await writeFile(temporary, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
  await rename(temporary, file);
}
