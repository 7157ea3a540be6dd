/**
 * Three builder replicas of one target behind one URL, all real parts: the real bin three
 * times, one shared S3 store (s3rver), and Debian's HAProxy running the configuration
 * docs/builder.md gives (addresses replaced), health-checking GET /v1/health/ready.
 * Any replica answers for any build (record, event stream resumed elsewhere, artifact, DELETE),
 * and SIGTERM on one replica while builds run on all three loses nothing and builds nothing twice.
 * HAProxy missing → these tests fail, they do not skip.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBuilderClient, type BuilderClient } from '../../lib/builder/client.js';
import { prepareInput } from '../../lib/dispatch/input.js';
import { ensureLockfile } from '../../lib/dispatch/lockfile.js';
import { parseTargets, planTargets } from '../../lib/dispatch/plan.js';
import { dispatch, type DispatchResult } from '../../lib/dispatch/run.js';
import type { HealthResponse } from '../../lib/protocol.js';
import { loadTrustedKey, publicKeyPath } from '../../lib/provenance/keys.js';
import { S3Store } from '../../lib/storage/s3-store.js';
import { parseTarget } from '../../lib/target.js';
import { TEST_SIGNING_KEY, TEST_UID_RANGES, childEnv, freePort, hostTargetSpec, killChildBuilders, newToken, spawnBuilder, startSourceServer, tgz, waitFor, type ChildBuilder, type SourceServer } from '../helpers/builder.js';
import { NODE, dispatchTools, writeFixture } from '../helpers/dispatch.js';
import { packageTar, repoRoot, tempDir, testCacheDir } from '../helpers/packages.js';
import { startS3, type S3TestServer } from '../helpers/s3.js';

const NAMES = ['fleet-1', 'fleet-2', 'fleet-3'] as const;
const RANGES = [TEST_UID_RANGES.fleet1, TEST_UID_RANGES.fleet2, TEST_UID_RANGES.fleet3];

let root: { dir: string; remove: () => Promise<void> };
let s3: S3TestServer;
let sources: SourceServer;
let replicas: ChildBuilder[] = [];
let haproxy: ChildProcess | undefined;
let lb: string;
let client: BuilderClient;
const token = newToken();


const startReplica = async (index: number) => {
  const name = NAMES[index] as string;
  const range = RANGES[index] as { first: number; last: number };
  await mkdir(path.join(root.dir, name), { recursive: true });
  return spawnBuilder(['--store', 's3://fleet/linux', '--cache-dir', testCacheDir, '--slots', '1', '--shutdown-grace', '60'], childEnv({
    BUNDLE_DISPATCH_BUILDER_TOKENS: token,
    BUNDLE_DISPATCH_BUILDER_ID: name,
    BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, name, 'work'),
    BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: `${range.first}-${range.last}`,
    BUNDLE_DISPATCH_S3_ENDPOINT: s3.endpoint,
    BUNDLE_DISPATCH_S3_REGION: s3.region,
    BUNDLE_DISPATCH_S3_FORCE_PATH_STYLE: 'true',
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    AWS_EC2_METADATA_DISABLED: 'true',
    BUNDLE_DISPATCH_BUILDER_SHUTDOWN_GRACE: '60',
  }));
};

/** GET through the balancer; returns the answering replica (X-Builder) and the body. */
const viaBalancer = async <T>(pathname: string, init: RequestInit = {}): Promise<{ status: number; builder: string; body: T }> => {
  const response = await fetch(`${lb}${pathname}`, { ...init, headers: { authorization: `Bearer ${token}`, ...(init.headers as Record<string, string> | undefined) } });
  return { status: response.status, builder: response.headers.get('x-builder') ?? '', body: (await response.json()) as T };
};

beforeAll(async () => {
  root = await tempDir('bd-fleet-');
  // Build users pass through to their replica's work dir.
  await chmod(root.dir, 0o711);
  [s3, sources] = await Promise.all([startS3({ buckets: ['fleet', 'sources', 'releases'] }), startSourceServer()]);
  replicas = await Promise.all(NAMES.map((_name, index) => startReplica(index)));

  // The configuration the docs give, with this test's addresses.
  const doc = await readFile(path.join(repoRoot, 'docs', 'builder.md'), 'utf8');
  const documented = /## Replicas behind one URL[^]*?```haproxy\n([^]*?)```/.exec(doc)?.[1];
  expect(documented).toContain('option httpchk GET /v1/health/ready');
  const port = await freePort();
  const config = (documented as string)
    .replace('bind 127.0.0.1:7420', `bind 127.0.0.1:${port}`)
    .replace(/server replica-(\d) 10\.0\.3\.1\d:7420/g, (_line, n: string) => `server replica-${n} ${new URL((replicas[Number(n) - 1] as ChildBuilder).url).host}`);
  expect(config).not.toContain('10.0.3.');
  const file = path.join(root.dir, 'haproxy.cfg');
  await writeFile(file, config);
  haproxy = spawn('haproxy', ['-db', '-f', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  lb = `http://127.0.0.1:${port}`;
  client = createBuilderClient({ url: lb, token });
  // Up once the balancer has seen all three healthy (rise 2, a check a second).
  await waitFor(async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 6; i += 1) seen.add((await viaBalancer<HealthResponse>('/v1/health').catch(() => ({ builder: '' }))).builder);
    return seen.size === 3 && !seen.has('') ? true : undefined;
  }, 30_000, 250);
}, 120_000);

afterAll(async () => {
  haproxy?.kill('SIGKILL');
  await killChildBuilders(replicas);
  await sources?.stop();
  await s3?.stop();
  await root?.remove();
});

/** Reads an event stream until its first `log` event; returns that event's id and the replica that served it. */
const firstLogEvent = async (id: string, lastEventId: number): Promise<{ id: number; builder: string }> => {
  const controller = new AbortController();
  const response = await fetch(`${lb}/v1/builds/${id}/events`, { headers: { authorization: `Bearer ${token}`, 'last-event-id': String(lastEventId) }, signal: controller.signal });
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  let text = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`stream ended before a log event: ${text}`);
      text += Buffer.from(value).toString();
      const match = /event: log\nid: (\d+)\n/.exec(text);
      if (match) return { id: Number(match[1]), builder: response.headers.get('x-builder') ?? '' };
    }
  } finally {
    controller.abort();
  }
};

describe('three replicas behind HAProxy', () => {
  it('prerequisite: Debian\'s haproxy is installed and the documented configuration is valid', async () => {
    const check = spawn('haproxy', ['-c', '-f', path.join(root.dir, 'haproxy.cfg')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    check.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => check.on('exit', resolve));
    expect(code, output).toBe(0);
  });

  it('any replica answers for any build: its record, its event stream resumed with Last-Event-ID, its artifact, and a DELETE', async () => {
    const ticker = await tgz(packageTar({ name: 'fleet-ticker', version: '1.0.0', scripts: { install: 'node -e "let n = 0; const t = setInterval(() => { console.log(\'tick \' + (++n)); if (n === 40) clearInterval(t); }, 100)"' } }, {}));
    const { id } = await client.createBuild({ source: { url: sources.add('fleet-ticker.tgz', ticker.body), sha256: ticker.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'fleet-ticker' });
    await waitFor(async () => (await client.getLog(id)).filter((line) => line.message.startsWith('tick ')).length >= 10 || undefined, 60_000, 100);

    // Six reads in a row: every replica answers, each with the same build.
    const reads = [];
    for (let i = 0; i < 6; i += 1) reads.push(await viaBalancer<{ id: string; builder: string }>(`/v1/builds/${id}`));
    expect(new Set(reads.map((read) => read.builder))).toEqual(new Set(NAMES));
    expect(reads.every((read) => read.status === 200 && read.body.id === id)).toBe(true);
    const owner = reads[0]?.body.builder as string;

    // The event stream resumed after id 5, three times in a row (three replicas): it goes on at 6 on each.
    const resumed = [];
    for (let i = 0; i < 3; i += 1) resumed.push(await firstLogEvent(id, 5));
    expect(resumed.map((event) => event.id)).toEqual([6, 6, 6]);
    expect(new Set(resumed.map((event) => event.builder)).size).toBe(3);

    // Followed live to its end through the balancer: every line once, in order.
    const seqs: number[] = [];
    const final = await client.followBuild(id, { onLog: (line) => seqs.push(line.seq) });
    expect(final.state).toBe('succeeded');
    expect(seqs).toEqual([...new Set(seqs)].sort((a, b) => a - b));
    // The artifact from whichever replica: the same bytes' hash.
    for (let i = 0; i < 3; i += 1) {
      const response = await fetch(`${lb}/v1/builds/${id}/artifact`, { headers: { authorization: `Bearer ${token}` } });
      expect(response.status).toBe(200);
      expect(response.headers.get('x-sha256')).toBe(final.artifact?.sha256);
      await response.arrayBuffer();
    }
    expect(NAMES).toContain(owner);

    // A DELETE that lands on a replica that does not run the build. Round robin: after a read
    // answered by the owner, the next request goes to another replica.
    const forever = await tgz(packageTar({ name: 'fleet-forever', version: '1.0.0', scripts: { install: 'node -e "console.log(\'UP\'); setInterval(() => {}, 1000)"' } }, {}));
    const running = await client.createBuild({ source: { url: sources.add('fleet-forever.tgz', forever.body), sha256: forever.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'fleet-forever' });
    await waitFor(async () => (await client.getLog(running.id)).some((line) => line.message.includes('UP')) || undefined, 60_000, 100);
    const runningOwner = (await client.getBuild(running.id)).builder;
    await waitFor(async () => ((await viaBalancer(`/v1/builds/${running.id}`)).builder === runningOwner ? true : undefined), 10_000, 0);
    const cancel = await viaBalancer<{ state: string; builder: string; error?: { message: string } }>(`/v1/builds/${running.id}`, { method: 'DELETE' });
    expect(cancel.builder).not.toBe(runningOwner);
    expect(cancel.body).toMatchObject({ state: 'cancelled', builder: runningOwner, error: { message: expect.stringContaining(`forwarded by replica ${cancel.builder}`) } });
  }, 120_000);

  it('SIGTERM on a replica while builds run on all three: the balancer stops sending it work, its running build is delivered, its queued one is built by another, nothing is built twice', async () => {
    const keys = [await loadTrustedKey(publicKeyPath(TEST_SIGNING_KEY))];
    const pools = [{ platform: parseTarget('linux-x64'), builders: [{ url: lb, client, keys }] }];
    const sourceStore = new S3Store({ ...s3.storeOptions, bucket: 'sources' });
    const releases = new S3Store({ ...s3.storeOptions, bucket: 'releases' });
    const names = ['drain-a', 'drain-b', 'drain-c', 'drain-d', 'drain-e', 'drain-f'];
    try {
      const runs: Array<Promise<DispatchResult>> = names.map(async (name) => {
        const fixture = await writeFixture(path.join(root.dir, `${name}-1.0.0.tgz`), { name, version: '1.0.0', scripts: { install: 'node -e "setTimeout(() => {}, 20000)"' } });
        const work = await tempDir('bd-fleet-run-');
        try {
          const prepared = await prepareInput(fixture, { cwd: root.dir, workDir: work.dir, tools: dispatchTools() });
          const source = await ensureLockfile(prepared, { tools: dispatchTools(), workDir: work.dir });
          return await dispatch({
            input: prepared, source, targets: planTargets(parseTargets([`linux-x64@${NODE}`]), pools), sourceStore, destination: releases,
            keyTemplate: '{name}/{version}/{file}', manifestTemplate: '{name}/{version}/manifest.json', presignExpiry: 3600,
            force: false, failFast: false, signal: new AbortController().signal, tmpDir: work.dir, onEvent: () => undefined,
          });
        } finally {
          await work.remove();
        }
      });
      // Six builds on three single-slot replicas: three run, three wait, so one replica has both.
      // The victim: such a replica whose running build started recently (builds take 20 s), so
      // the SIGTERM lands while that build still runs and the other one still waits. Each
      // replica is asked for its own builds (from memory: no store lag).
      const pick = await waitFor(async () => {
        for (const [index, replica] of replicas.entries()) {
          const own = (await createBuilderClient({ url: replica.url, token }).listBuilds({ limit: 50 })).builds.filter((build) => build.builder === NAMES[index]);
          const runningHere = own.filter((build) => build.state === 'running');
          const waitingHere = own.filter((build) => build.state === 'queued');
          if (runningHere.length === 1 && waitingHere.length >= 1 && Date.now() - Date.parse(runningHere[0]?.startedAt ?? '') < 10_000) return { index, running: runningHere[0], queued: waitingHere };
        }
        return undefined;
      }, 90_000, 200);
      const victim = replicas[pick.index] as ChildBuilder;
      const victimName = NAMES[pick.index] as string;
      const ranThere = pick.running?.package?.name;
      const queuedThere = pick.queued.map((build) => build.id);

      victim.child.kill('SIGTERM');
      // Within a few health checks the balancer sends it nothing, while it still drains.
      await waitFor(async () => {
        for (let i = 0; i < 6; i += 1) if ((await viaBalancer('/v1/health')).builder === victimName) return undefined;
        return true;
      }, 10_000, 200);
      expect(victim.child.exitCode).toBe(null);

      const results = await Promise.all(runs);
      expect(results.map((result) => result.ok)).toEqual(names.map(() => true));
      const outcomes = results.map((result) => result.targets[0]);
      // What ran on the victim was delivered from it; what waited there was built elsewhere, and the summary says so.
      const byName = (name: string | undefined) => outcomes.find((outcome) => outcome?.ok && outcome.key.startsWith(`${name}/`));
      if (ranThere) expect(byName(ranThere)).toMatchObject({ ok: true, builder: victimName });
      expect(queuedThere.length).toBeGreaterThanOrEqual(1);
      const moved = outcomes.filter((outcome) => outcome?.failovers?.some((note) => note.kind === 'redispatched' && note.message.includes('ERR_BUILD_HANDED_BACK')));
      expect(moved.length).toBe(queuedThere.length);
      for (const outcome of moved) expect(outcome).toMatchObject({ ok: true, builder: expect.not.stringMatching(victimName) });
      expect((await victim.exited).code).toBe(0);

      // Nothing built twice: one succeeded build per package in the shared store, one bundle each in the bucket.
      const history = (await client.listBuilds({ limit: 100 })).builds.filter((build) => names.includes(build.package?.name ?? ''));
      for (const name of names) expect(history.filter((build) => build.package?.name === name && build.state === 'succeeded'), name).toHaveLength(1);
      const bundles = (await releases.list({ prefix: 'drain-' })).items.filter((item) => item.key.endsWith('.tgz'));
      expect(bundles).toHaveLength(6);
    } finally {
      sourceStore.close();
      releases.close();
    }
  }, 240_000);
});
