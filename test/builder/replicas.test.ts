import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Store } from '../../lib/storage/s3-store.js';
import type { LogLine } from '../../lib/protocol.js';
import { TEST_UID_RANGES, hostTargetSpec, newToken, startSourceServer, startTestBuilder, tgz, waitFor, type SourceServer, type TestBuilder } from '../helpers/builder.js';
import { readJsonObject } from '../../lib/storage/read.js';
import { packageTar } from '../helpers/packages.js';
import { startS3, type S3TestServer } from '../helpers/s3.js';

let s3: S3TestServer;
let sources: SourceServer;
let a: TestBuilder;
let b: TestBuilder;
let stores: S3Store[] = [];
/** Where a replica keeps an Idempotency-Key (lib/builder/records.ts keys.idempotency). */
const idempotencyObject = (key: string) => `builder/idempotency/${createHash('sha256').update(key).digest('hex')}`;

beforeAll(async () => {
  [s3, sources] = await Promise.all([startS3({ buckets: ['builds'] }), startSourceServer()]);
  stores = [new S3Store({ ...s3.storeOptions, bucket: 'builds', prefix: 'linux' }), new S3Store({ ...s3.storeOptions, bucket: 'builds', prefix: 'linux' })];
  const token = newToken();
  a = await startTestBuilder({ uids: TEST_UID_RANGES.replicaA, store: stores[0], builderId: 'replica-a', token });
  b = await startTestBuilder({ uids: TEST_UID_RANGES.replicaB, store: stores[1], builderId: 'replica-b', token });
});
afterAll(async () => {
  await a?.stop();
  await b?.stop();
  for (const store of stores) store.close();
  await sources?.stop();
  await s3?.stop();
});

describe('replicas sharing an S3 store', () => {
  it('answer for each other\'s builds: record, log, event stream (from the store) and history', async () => {
    const script = 'for (let i = 0; i < 5; i++) console.log("line " + i); setTimeout(() => {}, 2500);';
    const source = await tgz(packageTar({ name: 'shared', version: '1.0.0', scripts: { install: 'node lines.js' } }, { 'lines.js': script }));
    const url = sources.add('shared.tgz', source.body);
    const { id } = await a.client.createBuild({ source: { url, sha256: source.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'shared' });
    // The same key at B: B finds A's build in the store (its source fetch, started meanwhile, is
    // dropped and leaves no file in B's spool).
    const again = await b.client.createBuild({ source: { url, sha256: source.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'shared' });
    expect(again).toMatchObject({ id, existing: true });
    await expect.poll(async () => readdir(path.join(b.dir, 'work', 'spool')), { timeout: 5000 }).toEqual([]);
    // B follows A's build while it runs: B polls the store and streams what A wrote.
    const seen: LogLine[] = [];
    const fromB = await b.client.followBuild(id, { onLog: (line) => seen.push(line) });
    expect(fromB.state).toBe('succeeded');
    expect(fromB.builder).toBe('replica-a');
    expect(seen.some((line) => line.message === 'line 4')).toBe(true);
    expect(seen.map((line) => line.seq)).toEqual([...seen.map((line) => line.seq)].sort((x, y) => x - y));
    const fromA = await a.client.getBuild(id);
    expect(await b.client.getBuild(id)).toEqual(fromA);
    expect((await b.client.getLog(id)).map((line) => line.seq)).toEqual((await a.client.getLog(id)).map((line) => line.seq));
    expect((await b.client.listBuilds()).builds.map((record) => record.id)).toContain(id);
    // B cannot cancel a build it does not run; an ended one it returns as it is.
    expect((await b.client.cancelBuild(id)).state).toBe('succeeded');
  }, 90_000);

  it('a DELETE landing on the replica that does not run the build is forwarded to the one that does (once); an unknown owner is a 409', async () => {
    const source = await tgz(packageTar({ name: 'forever', version: '1.0.0', scripts: { install: 'node -e "console.log(\'UP\'); setInterval(() => {}, 1000)"' } }, {}));
    const url = sources.add('forever.tgz', source.body);
    const { id } = await a.client.createBuild({ source: { url, sha256: source.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'forever' });
    await waitFor(async () => (await a.client.getLog(id)).some((line) => line.message.includes('UP')) || undefined, 60_000, 100);
    // Each replica wrote where it answers.
    expect(await readJsonObject(stores[0] as S3Store, 'builder/replicas/replica-a.json')).toMatchObject({ builder: 'replica-a', url: a.url });
    // A forwarded request is not forwarded again: B answers 409 itself.
    const loop = await fetch(`${b.url}/v1/builds/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${b.token}`, 'x-bundle-dispatch-forwarded': 'replica-c' } });
    expect(loop.status).toBe(409);
    expect((await a.client.getBuild(id)).state).toBe('running');

    const cancelled = await b.client.cancelBuild(id);
    expect(cancelled).toMatchObject({ id, state: 'cancelled', builder: 'replica-a', error: { code: 'ERR_ABORTED', message: expect.stringContaining('forwarded by replica replica-b') } });
    expect((await a.client.getBuild(id)).state).toBe('cancelled');
    expect(b.logs.join('')).toContain('cancel forwarded to the replica that runs the build');

    // A running build of a replica that never wrote its address: 409, and it says why.
    const orphan = { ...cancelled, id: 'zzzzzzzzzorphan0000000001', builder: 'replica-gone', state: 'running' };
    await (stores[0] as S3Store).put(`builder/builds/${orphan.id}/record.json`, JSON.stringify(orphan));
    await expect(b.client.cancelBuild(orphan.id)).rejects.toMatchObject({ message: expect.stringContaining('replica-gone, which has not written its address') });
  }, 90_000);

  it('the same Idempotency-Key at the other replica while the first still downloads the source: one build; a claim whose download fails is taken over', async () => {
    const source = await tgz(packageTar({ name: 'claimed', version: '1.0.0' }, { 'index.js': 'module.exports = 1;\n' }));
    // A source that takes 1.5 s to answer: the window in which a second replica used to start a second build.
    const slow = createServer((_request, response) => {
      setTimeout(() => response.writeHead(200, { 'content-length': source.body.length }).end(source.body), 1500);
    });
    await new Promise<void>((resolve) => slow.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(slow.address() as AddressInfo).port}/claimed.tgz`;
    const request = { source: { url, sha256: source.sha256 }, target: hostTargetSpec() };
    try {
      const first = a.client.createBuild(request, { idempotencyKey: 'claimed' });
      // 0.5 s in, A is still downloading (1.5 s) and has claimed the key in the store already.
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(await stores[1]?.exists(idempotencyObject('claimed'))).toBe(true);
      const second = await b.client.createBuild(request, { idempotencyKey: 'claimed' });
      const created = await first;
      expect(created.existing).toBe(false);
      expect(second).toMatchObject({ id: created.id, existing: true });
      expect((await a.client.followBuild(created.id)).state).toBe('succeeded');

      // A claims, then fails the download (wrong sha256); B, waiting on the claim, builds it.
      const failing = a.client.createBuild({ ...request, source: { url, sha256: '0'.repeat(64) } }, { idempotencyKey: 'taken-over' }).then(() => undefined, (error: unknown) => error);
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(await stores[1]?.exists(idempotencyObject('taken-over'))).toBe(true);
      const taken = await b.client.createBuild(request, { idempotencyKey: 'taken-over' });
      expect(await failing).toMatchObject({ code: 'ERR_INTEGRITY' });
      expect(taken.existing).toBe(false);
      expect(await b.client.followBuild(taken.id)).toMatchObject({ state: 'succeeded', builder: 'replica-b' });
      // And the key now names B's build, for whoever asks next.
      expect(await a.client.createBuild(request, { idempotencyKey: 'taken-over' })).toMatchObject({ id: taken.id, existing: true });
    } finally {
      slow.closeAllConnections();
      await new Promise<void>((resolve) => slow.close(() => resolve()));
    }
  }, 90_000);
});

