/**
 * What the local run history and the embedded default keep under the cache dir, removed once
 * older than a retention (`bundle-dispatch prune --older-than 30d`): run documents with their
 * log copies, sources in the local source store (`<cacheDir>/dispatch/store/sources/`), and the
 * embedded builder's builds (records, logs, results, index and idempotency entries) in
 * `<cacheDir>/dispatch/store/builder/` and `<cacheDir>/dispatch/builder-store/builder/`.
 *
 * Never removed, whatever their age: what a manifest in a destination still points at (its
 * source, its targets' builds, the runs that wrote it — and the newest run naming each
 * manifest, so that the next prune finds it again), and what a running run needs (its document
 * and logs, its source, its builds; while any run is running, every unfinished build record).
 */
import { hostname } from 'node:os';
import { readFile, readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { keys } from '../builder/records.js';
import { BundleError, toBundleError } from '../errors.js';
import { isTerminal, type BuildRecord } from '../protocol.js';
import { DirStore } from '../storage/dir-store.js';
import { listAllObjects, readJsonObject, readWhole, type ObjectInfo, type ObjectStore } from '../storage/index.js';
import { cancelRequestFile, listRuns, readRun, runAlive, runsDirOf, type RunDocument } from './history.js';
import { processAlive, type LockOwner } from './lock.js';
import type { Manifest } from './manifest.js';

/** What `prune` removes when not told: anything older than this. */
export const DEFAULT_RETENTION = '30d';

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** `30d`, `12h`, `90m`, `45s`, `2w` → milliseconds; anything else is ERR_USAGE. */
export function parseRetention(text: string): number {
  const match = /^(\d+(?:\.\d+)?)([smhdw])$/.exec(text.trim());
  if (!match?.[1] || !match[2]) {
    throw new BundleError('ERR_USAGE', `--older-than "${text}" is not a duration.`, { hint: 'A number and a unit: 30d, 12h, 90m, 45s, 2w (s, m, h, d, w).' });
  }
  return Number(match[1]) * (UNIT_MS[match[2]] ?? 0);
}

export interface PruneOptions {
  cacheDir: string;
  olderThanMs: number;
  /** Report what would go, remove nothing. */
  dryRun: boolean;
  /** Opens a destination a run names, to read the manifest it wrote there. */
  openDestination: (location: string) => Promise<ObjectStore>;
  now?: number;
  signal?: AbortSignal;
}

export interface PrunedItem {
  kind: 'run' | 'source' | 'build';
  /** Run id, source sha256 or build id. */
  id: string;
  /** When it was last written (what its age is measured from). */
  at: string;
  /** Every file removed (or that would be), data and store metadata alike; `bytes` is their sum. */
  files: string[];
  bytes: number;
}

export interface PruneReport {
  dryRun: boolean;
  /** Items last written before this were candidates. */
  olderThan: string;
  removed: PrunedItem[];
  bytes: number;
  /** Runs whose dispatching process is alive: kept with everything they need. */
  running: string[];
  /** Manifests read (destination + key) whose source, builds and runs were kept. */
  manifests: string[];
  /** What could not be read, and what was kept because of it. */
  warnings: string[];
}

interface Protected {
  runs: Set<string>;
  sources: Set<string>;
  builds: Set<string>;
}

interface StoredRun {
  doc: RunDocument;
  /** The document's mtime: it is rewritten until the run ends. */
  at: number;
  /** What is removed: the document, the run's folder (log copies), a cancel request. */
  roots: string[];
  /** Every file under them. */
  files: string[];
  bytes: number;
}

/** Every file at or under `file`, with their total size. */
async function sizeOf(file: string): Promise<{ bytes: number; files: string[] }> {
  const info = await stat(file).catch(() => undefined);
  if (!info) return { bytes: 0, files: [] };
  if (!info.isDirectory()) return { bytes: info.size, files: [file] };
  const parts = await Promise.all((await readdir(file)).sort().map((name) => sizeOf(path.join(file, name))));
  return { bytes: parts.reduce((sum, part) => sum + part.bytes, 0), files: parts.flatMap((part) => part.files) };
}

async function storedRuns(dir: string): Promise<StoredRun[]> {
  const runs: StoredRun[] = [];
  for (const id of await listRuns(dir, Number.POSITIVE_INFINITY)) {
    const doc = await readRun(dir, id);
    const info = await stat(path.join(dir, `${id}.json`)).catch(() => undefined);
    if (!doc || !info) continue;
    const roots = [path.join(dir, `${id}.json`), path.join(dir, id), cancelRequestFile(dir, id)];
    const parts = await Promise.all(roots.map(sizeOf));
    runs.push({ doc, at: info.mtimeMs, roots, files: parts.flatMap((part) => part.files), bytes: parts.reduce((sum, part) => sum + part.bytes, 0) });
  }
  return runs;
}

/** Run ids of held locks (their owner is alive); a run holds its lock before its document exists. */
async function lockHolders(dir: string): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const owners = await Promise.all(names.filter((name) => name.endsWith('.lock')).map((name) => readFile(path.join(dir, name), 'utf8').then((text) => JSON.parse(text) as LockOwner, () => undefined)));
  return owners.flatMap((owner) => (owner && (owner.host !== hostname() || processAlive(owner.pid)) ? [owner.runId] : []));
}

/** Everything a running run needs, and everything the manifests its history names point at. */
async function protectedItems(runs: readonly StoredRun[], running: ReadonlySet<string>, options: PruneOptions, warnings: string[], manifests: string[]): Promise<Protected> {
  const keep: Protected = { runs: new Set(running), sources: new Set(), builds: new Set() };
  const protectRun = (doc: RunDocument) => {
    keep.runs.add(doc.runId);
    for (const sha of [doc.sourceSha256, doc.result?.source.sha256]) if (sha) keep.sources.add(sha);
    for (const entry of Object.values(doc.targets)) if (entry.buildId) keep.builds.add(entry.buildId);
    for (const outcome of doc.result?.targets ?? []) if (outcome.buildId) keep.builds.add(outcome.buildId);
  };
  for (const { doc } of runs) if (running.has(doc.runId)) protectRun(doc);

  // Each manifest once, however many runs name it; runs newest first, so [0] is the newest.
  const named = new Map<string, { destination: string; key: string; docs: RunDocument[] }>();
  for (const { doc } of runs) {
    const key = doc.result?.manifest;
    if (!key) continue;
    const destination = doc.result?.destination ?? doc.destination;
    const id = `${destination}${key}`;
    const group = named.get(id) ?? { destination, key, docs: [] };
    group.docs.push(doc);
    named.set(id, group);
  }
  const stores = new Map<string, Promise<ObjectStore>>();
  try {
    for (const [id, group] of named) {
      let manifest: Manifest | undefined;
      try {
        let store = stores.get(group.destination);
        if (!store) {
          store = options.openDestination(group.destination);
          stores.set(group.destination, store);
        }
        manifest = await readJsonObject<Manifest>(await store, group.key, options.signal ? { signal: options.signal } : {});
      } catch (error) {
        // What it points at is unknown: everything its runs made stays.
        warnings.push(`${id}: ${toBundleError(error).message} — kept what its ${group.docs.length} run(s) made`);
        for (const doc of group.docs) protectRun(doc);
        continue;
      }
      if (!manifest) continue;
      manifests.push(id);
      keep.sources.add(manifest.source.sha256);
      keep.runs.add(manifest.runId);
      for (const target of Object.values(manifest.targets)) {
        keep.runs.add(target.runId);
        if (target.buildId) keep.builds.add(target.buildId);
      }
      // The next prune finds this manifest through its newest run.
      if (group.docs[0]) keep.runs.add(group.docs[0].runId);
    }
  } finally {
    for (const store of stores.values()) void store.then((opened) => opened.close(), () => undefined);
  }
  return keep;
}

/** The builds of a builder store older than `before`, each with every object that names it. */
async function oldBuilds(store: DirStore, before: number, skip: (id: string, record: BuildRecord | undefined) => boolean): Promise<Array<{ item: PrunedItem; objects: string[] }>> {
  const byBuild = new Map<string, ObjectInfo[]>();
  for await (const info of listAllObjects(store, { prefix: keys.buildsPrefix() })) {
    const id = info.key.slice(keys.buildsPrefix().length).split('/')[0] ?? '';
    byBuild.set(id, [...(byBuild.get(id) ?? []), info]);
  }
  if (byBuild.size === 0) return [];
  // Index, active and idempotency entries hold a build's id: they go with it.
  const references = new Map<string, ObjectInfo[]>();
  const refer = (id: string, info: ObjectInfo) => references.set(id, [...(references.get(id) ?? []), info]);
  for await (const info of listAllObjects(store, { prefix: keys.indexPrefix() })) refer(info.key.slice(keys.indexPrefix().length).replace(/^\d+-/, ''), info);
  for await (const info of listAllObjects(store, { prefix: keys.activeRoot() })) refer(info.key.split('/').at(-1) ?? '', info);
  for await (const info of listAllObjects(store, { prefix: keys.idempotencyPrefix() })) refer((await readWhole(store, info.key))?.toString('utf8').trim() ?? '', info);

  const found: Array<{ item: PrunedItem; objects: string[] }> = [];
  for (const [id, objects] of byBuild) {
    const record = await readJsonObject<BuildRecord>(store, keys.record(id)).catch(() => undefined);
    const written = record ? Date.parse(record.finishedAt ?? record.heartbeatAt ?? record.createdAt) : Math.max(...objects.map((info) => info.lastModified?.getTime() ?? 0));
    if (written >= before || skip(id, record)) continue;
    const all = [...objects, ...(references.get(id) ?? [])];
    const files = (await Promise.all(all.map((info) => store.files(info.key)))).flat();
    found.push({ item: { kind: 'build', id, at: new Date(written).toISOString(), files: files.map((file) => file.path), bytes: files.reduce((sum, file) => sum + file.bytes, 0) }, objects: all.map((info) => info.key) });
  }
  return found;
}

/**
 * Removes (or, dry, lists) what is older than `olderThanMs` and protected by nothing.
 *
 * @example
 * const report = await prune({ cacheDir, olderThanMs: parseRetention('30d'), dryRun: false, openDestination: (location) => openStore(location) });
 * report.removed // [{kind: 'run' | 'source' | 'build', id, at, bytes}]
 */
export async function prune(options: PruneOptions): Promise<PruneReport> {
  const now = options.now ?? Date.now();
  const before = now - options.olderThanMs;
  const warnings: string[] = [];
  const manifests: string[] = [];
  const runsDir = runsDirOf(options.cacheDir);
  const runs = await storedRuns(runsDir);
  const holders = await lockHolders(path.join(options.cacheDir, 'dispatch', 'locks'));
  const running = new Set([...runs.filter(({ doc }) => runAlive(doc)).map(({ doc }) => doc.runId), ...holders]);
  // A run that holds its lock but has not written its document yet may be about to use any source.
  const starting = holders.some((runId) => !runs.some(({ doc }) => doc.runId === runId));
  const keep = await protectedItems(runs, running, options, warnings, manifests);
  const removed: PrunedItem[] = [];

  for (const run of runs) {
    if (run.at >= before || keep.runs.has(run.doc.runId)) continue;
    if (!options.dryRun) for (const root of run.roots) await rm(root, { recursive: true, force: true });
    removed.push({ kind: 'run', id: run.doc.runId, at: new Date(run.at).toISOString(), files: run.files, bytes: run.bytes });
  }

  const shared = new DirStore({ root: path.join(options.cacheDir, 'dispatch', 'store') });
  if (starting) {
    warnings.push(`a run holding a lock has not written its document yet: no source was pruned`);
  } else {
    for await (const info of listAllObjects(shared, { prefix: 'sources/' })) {
      const sha = /([0-9a-f]{64})\.tgz$/.exec(info.key)?.[1];
      const at = info.lastModified?.getTime() ?? now;
      if (!sha || at >= before || keep.sources.has(sha)) continue;
      const files = await shared.files(info.key);
      if (!options.dryRun) await shared.delete(info.key);
      removed.push({ kind: 'source', id: sha, at: new Date(at).toISOString(), files: files.map((file) => file.path), bytes: files.reduce((sum, file) => sum + file.bytes, 0) });
    }
  }

  const anyRunning = running.size > 0 || starting;
  for (const store of [shared, new DirStore({ root: path.join(options.cacheDir, 'dispatch', 'builder-store') })]) {
    const builds = await oldBuilds(store, before, (id, record) => keep.builds.has(id)
      // An embedded builder's id is `embedded-<run id>`; while a run is running, no unfinished build is touched.
      || (record !== undefined && (running.has(record.builder.replace(/^embedded-/, '')) || (anyRunning && !isTerminal(record.state)))));
    for (const { item, objects } of builds) {
      if (!options.dryRun) for (const key of objects) await store.delete(key);
      removed.push(item);
    }
  }

  return { dryRun: options.dryRun, olderThan: new Date(before).toISOString(), removed, bytes: removed.reduce((sum, item) => sum + item.bytes, 0), running: [...running], manifests, warnings };
}
