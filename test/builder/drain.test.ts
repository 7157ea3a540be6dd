/**
 * The drain contract and the probes a load balancer and Kubernetes rely on: SIGTERM and
 * POST /v1/drain (readiness 503 at once, new builds refused with 503 + Retry-After, queued
 * builds handed back, reads and running builds go on, exit 0), a second signal that forces the
 * exit without leaving a record `running`, and readiness that follows the disk and the store.
 * The real bin as a child process for the signals; s3rver for an unreachable store.
 */
import { chmod, mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBuilderClient, type BuilderClient } from '../../lib/builder/client.js';
import type { BuildRecord, DrainResponse, LivenessResponse, ReadinessResponse } from '../../lib/protocol.js';
import { S3Store } from '../../lib/storage/s3-store.js';
import { createWithFailover } from '../../lib/dispatch/trigger.js';
import { TEST_UID_RANGES, childEnv, killChildBuilders, hostTargetSpec, newToken, spawnBuilder, startSourceServer, startTestBuilder, tgz, waitFor, type ChildBuilder, type SourceServer, type TestBuilder } from '../helpers/builder.js';
import { packageTar, tempDir, testCacheDir } from '../helpers/packages.js';
import { startS3 } from '../helpers/s3.js';

let root: { dir: string; remove: () => Promise<void> };
let sources: SourceServer;
const children: ChildBuilder[] = [];
const token = newToken();

beforeAll(async () => {
  root = await tempDir('bd-drain-');
  await chmod(root.dir, 0o711);
  sources = await startSourceServer();
});
afterAll(async () => {
  await killChildBuilders(children);
  await sources?.stop();
  await root?.remove();
});

/** A package whose install script runs `seconds` (forever when undefined), printing `STARTED` first. */
const timedPackage = (name: string, seconds?: number) => tgz(packageTar({ name, version: '1.0.0', scripts: { install: 'node wait.js' } }, {
  'wait.js': `console.log("STARTED"); ${seconds === undefined ? 'setInterval(() => {}, 1000);' : `setTimeout(() => console.log("DONE"), ${seconds * 1000});`}\n`,
}));

const submit = async (client: BuilderClient, name: string, seconds?: number) => {
  const source = await timedPackage(name, seconds);
  return client.createBuild({ source: { url: sources.add(`${name}.tgz`, source.body), sha256: source.sha256 }, target: hostTargetSpec() }, { idempotencyKey: `${name}-${Date.now()}` });
};

const startChild = async (name: string, grace: number) => {
  const dir = path.join(root.dir, name);
  await mkdir(path.join(dir, 'work'), { recursive: true });
  const child = await spawnBuilder(['--store', path.join(dir, 'store'), '--cache-dir', testCacheDir, '--slots', '1', '--shutdown-grace', String(grace)], childEnv({
    BUNDLE_DISPATCH_BUILDER_TOKENS: token,
    BUNDLE_DISPATCH_WORK_DIR: path.join(dir, 'work'),
    BUNDLE_DISPATCH_BUILDER_ID: name,
    BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: `${TEST_UID_RANGES.drain.first}-${TEST_UID_RANGES.drain.last}`,
  }));
  children.push(child);
  const storedRecord = async (id: string) => JSON.parse(await readFile(path.join(dir, 'store', 'builder', 'builds', id, 'record.json'), 'utf8')) as BuildRecord;
  return { child, client: createBuilderClient({ url: child.url, token }), storedRecord };
};

const probe = async <T>(url: string): Promise<{ status: number; body: T }> => {
  const response = await fetch(url);
  return { status: response.status, body: (await response.json()) as T };
};

const started = (client: BuilderClient, id: string) => waitFor(async () => (await client.getLog(id)).some((line) => line.message.includes('STARTED')) || undefined, 60_000, 100);

describe('SIGTERM drains (the real bin)', () => {
  it('readiness 503 at once, new builds 503 draining with Retry-After, the queued build handed back, the running one finishes and is served, exit 0', async () => {
    const { child, client, storedRecord } = await startChild('drain-term', 60);
    expect((await probe<ReadinessResponse>(`${child.url}/v1/health/ready`)).status).toBe(200);
    const running = await submit(client, 'drain-running', 8);
    await started(client, running.id);
    const queued = await submit(client, 'drain-queued', 1);
    expect((await client.getBuild(queued.id)).state).toBe('queued');

    child.child.kill('SIGTERM');
    const ready = await waitFor(async () => {
      const answer = await probe<ReadinessResponse>(`${child.url}/v1/health/ready`);
      return answer.status === 503 ? answer.body : undefined;
    }, 10_000, 50);
    expect(ready.checks.find((check) => check.name === 'draining')).toMatchObject({ ok: false, message: expect.stringMatching(/^draining since /) });
    const live = await probe<LivenessResponse>(`${child.url}/v1/health/live`);
    expect(live).toMatchObject({ status: 200, body: { live: true, builder: 'drain-term' } });

    // A new build: 503, Retry-After, reason draining; nothing accepted.
    const source = await timedPackage('drain-late', 1);
    const refused = await fetch(`${child.url}/v1/builds`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': 'late' },
      body: JSON.stringify({ source: { url: sources.add('drain-late.tgz', source.body), sha256: source.sha256 }, target: hostTargetSpec() }),
    });
    expect(refused.status).toBe(503);
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(await refused.json()).toMatchObject({ error: { code: 'ERR_BUILDER_STOPPING', details: { reason: 'draining' } } });

    // The queued build went back at once, with a code of its own (dispatch re-sends it).
    const handedBack = await client.getBuild(queued.id);
    expect(handedBack).toMatchObject({ state: 'cancelled', error: { code: 'ERR_BUILD_HANDED_BACK' } });
    expect(handedBack.steps).toEqual([]);
    // Reads go on while the running build finishes: its record, its log, its event stream to the end.
    expect((await client.getBuild(running.id)).state).toBe('running');
    const lines: string[] = [];
    const final = await client.followBuild(running.id, { onLog: (line) => lines.push(line.message) });
    expect(final.state).toBe('succeeded');
    expect(lines.some((line) => line.includes('DONE'))).toBe(true);

    const exit = await child.exited;
    expect(exit.code).toBe(0);
    expect((await storedRecord(running.id)).state).toBe('succeeded');
    expect((await storedRecord(queued.id)).error?.code).toBe('ERR_BUILD_HANDED_BACK');
  }, 120_000);

  it('a second SIGTERM ends the grace period: the running build is cancelled and recorded (never left running), exit 130', async () => {
    const { child, client, storedRecord } = await startChild('drain-force', 600);
    const forever = await submit(client, 'drain-forever');
    await started(client, forever.id);
    child.child.kill('SIGTERM');
    await waitFor(async () => (await fetch(`${child.url}/v1/health/ready`)).status === 503 || undefined, 10_000, 50);
    // Still running: the first signal only drains (its grace is 600 s).
    expect((await client.getBuild(forever.id)).state).toBe('running');
    child.child.kill('SIGTERM');
    const exit = await child.exited;
    expect(exit.code).toBe(130);
    const record = await storedRecord(forever.id);
    expect(record).toMatchObject({ state: 'cancelled', error: { code: 'ERR_BUILDER_STOPPING', message: expect.stringContaining('second SIGTERM/SIGINT') } });
    expect(record.steps.some((step) => step.state === 'running')).toBe(false);
    expect(child.stderr()).toContain('second signal');
  }, 120_000);
});

describe('POST /v1/drain and the probes (a builder in this process)', () => {
  let builder: TestBuilder;
  beforeAll(async () => {
    builder = await startTestBuilder({ uids: TEST_UID_RANGES.probes, slots: 1 });
  });
  afterAll(async () => {
    await builder?.stop();
  });

  it('drain needs the token; ?wait=true answers once the running build has ended; readiness then says draining', async () => {
    expect((await fetch(`${builder.url}/v1/drain`, { method: 'POST' })).status).toBe(401);
    const ready = await probe<ReadinessResponse>(`${builder.url}/v1/health/ready`);
    expect(ready.status).toBe(200);
    expect(ready.body.checks.map((check) => [check.name, check.ok])).toEqual([['draining', true], ['disk', true], ['store', true]]);

    const running = await submit(builder.client, 'drain-wait', 2);
    await started(builder.client, running.id);
    const queued = await submit(builder.client, 'drain-wait-queued', 1);
    const response = await fetch(`${builder.url}/v1/drain?wait=true`, { method: 'POST', headers: { authorization: `Bearer ${builder.token}` } });
    expect(response.status).toBe(200);
    const drained = (await response.json()) as DrainResponse;
    expect(drained).toMatchObject({ draining: true, handedBack: [queued.id], running: 0 });
    // It waited: the build had ended when the answer came.
    expect((await builder.client.getBuild(running.id)).state).toBe('succeeded');
    expect((await builder.client.getBuild(queued.id)).error?.code).toBe('ERR_BUILD_HANDED_BACK');

    const after = await probe<ReadinessResponse>(`${builder.url}/v1/health/ready`);
    expect(after.status).toBe(503);
    expect(after.body.ready).toBe(false);
    expect((await probe<LivenessResponse>(`${builder.url}/v1/health/live`)).status).toBe(200);
    // Asked again: the same drain, nothing more handed back.
    const again = (await (await fetch(`${builder.url}/v1/drain`, { method: 'POST', headers: { authorization: `Bearer ${builder.token}` } })).json()) as DrainResponse;
    expect(again).toMatchObject({ draining: true, since: drained.since, handedBack: [] });
    await expect(submit(builder.client, 'drain-after', 1)).rejects.toMatchObject({ code: 'ERR_BUILDER_STOPPING' });
  }, 120_000);

  it('readiness is 503 while the work disk is below builder.minFreeDisk, and while the store cannot be reached; liveness stays 200', async () => {
    const s3 = await startS3({ buckets: ['probes'] });
    const store = new S3Store({ ...s3.storeOptions, bucket: 'probes', retries: 0 });
    const onS3 = await startTestBuilder({ uids: TEST_UID_RANGES.probes, slots: 1, store, builderId: 'probe-s3' });
    const fullDisk = await startTestBuilder({ uids: TEST_UID_RANGES.probes, slots: 1, minFreeDisk: Number.MAX_SAFE_INTEGER, builderId: 'probe-disk' });
    try {
      const disk = await probe<ReadinessResponse>(`${fullDisk.url}/v1/health/ready`);
      expect(disk.status).toBe(503);
      expect(disk.body.checks.find((check) => check.name === 'disk')).toMatchObject({ ok: false, message: expect.stringContaining('builder.minFreeDisk') });
      expect(disk.body.checks.filter((check) => !check.ok).map((check) => check.name)).toEqual(['disk']);

      expect((await probe<ReadinessResponse>(`${onS3.url}/v1/health/ready`)).status).toBe(200);
      await s3.kill();
      // The store probe is reused for a few seconds: readiness follows within that.
      const down = await waitFor(async () => {
        const answer = await probe<ReadinessResponse>(`${onS3.url}/v1/health/ready`);
        return answer.status === 503 ? answer.body : undefined;
      }, 20_000, 250);
      expect(down.checks.find((check) => check.name === 'store')).toMatchObject({ ok: false, message: expect.stringContaining('cannot be reached') });
      expect(JSON.stringify(down)).not.toContain('S3RVER');
      expect((await probe<LivenessResponse>(`${onS3.url}/v1/health/live`)).status).toBe(200);
    } finally {
      await onS3.stop();
      await fullDisk.stop();
      store.close();
      await s3.stop();
    }
  }, 120_000);

  it('a full queue (builder.maxQueued) answers 503 ERR_BUILDER_BUSY with Retry-After; dispatch sends the build to the next builder of the pool', async () => {
    // Two builders in one process: each its own uids, or the second's start-up sweep would kill
    // the first's running build, freeing its queue (a CI run saw the full builder take the build).
    const probes = TEST_UID_RANGES.probes;
    const full = await startTestBuilder({ uids: { first: probes.first, last: probes.first + 2 }, slots: 1, maxQueued: 1, builderId: 'probe-full' });
    try {
      const running = await submit(full.client, 'full-running');
      await started(full.client, running.id);
      const waiting = await submit(full.client, 'full-waiting', 1);
      const source = await timedPackage('full-third', 1);
      const request = { source: { url: sources.add('full-third.tgz', source.body), sha256: source.sha256 }, target: hostTargetSpec() };
      const refused = await fetch(`${full.url}/v1/builds`, { method: 'POST', headers: { authorization: `Bearer ${full.token}`, 'content-type': 'application/json', 'idempotency-key': 'third' }, body: JSON.stringify(request) });
      expect(refused.status).toBe(503);
      expect(refused.headers.get('retry-after')).toBe('5');
      expect(await refused.json()).toMatchObject({ error: { code: 'ERR_BUILDER_BUSY', message: expect.stringContaining('builder.maxQueued 1'), details: { reason: 'queue_full' } } });
      // Readiness stays 200: a full queue is busy, not broken (the balancer's retry-on 503 moves the request).
      expect((await fetch(`${full.url}/v1/health/ready`)).status).toBe(200);

      // dispatch's create: the full builder turns it away, the next member of the pool takes it.
      const other = await startTestBuilder({ uids: { first: probes.first + 3, last: probes.last }, slots: 1, builderId: 'probe-other' });
      try {
        const notes: string[] = [];
        const created = await createWithFailover([{ url: full.url, client: full.client, keys: [] }, { url: other.url, client: other.client, keys: [] }], request, 'third-failover', AbortSignal.timeout(30_000), {
          onSent: () => undefined, onCreated: () => undefined, note: (note) => notes.push(`${note.kind}: ${note.message}`),
        });
        expect(created.builder.url).toBe(other.url);
        expect(notes).toEqual([expect.stringMatching(new RegExp(`^failed-over: queue full: Builder ${full.url}: The builder's queue is full.*; sending it to ${other.url}$`))]);
        expect((await other.client.followBuild(created.id)).state).toBe('succeeded');
      } finally {
        await other.stop();
      }
      await full.client.cancelBuild(waiting.id);
      await full.client.cancelBuild(running.id);
    } finally {
      await full.stop();
    }
  }, 60_000);
});

