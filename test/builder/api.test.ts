import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import got from 'got';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isBundleError } from '../../lib/errors.js';
import { formatTarget, hostTarget, parseTarget } from '../../lib/target.js';
import { resolveToolchains, toolchainFor } from '../../lib/workflow/toolchains.js';
import type { BuildRecord, CreateBuildRequest, LogLine } from '../../lib/protocol.js';
import { createBuilderClient } from '../../lib/builder/client.js';
import { TEST_UID_RANGES, hostTargetSpec, isRoot, startSourceServer, startTestBuilder, tgz, waitFor, type SourceServer, type TestBuilder } from '../helpers/builder.js';
import { packageTar, readTar, tempDir } from '../helpers/packages.js';
import { liveProcessesWith } from '../helpers/processes.js';
import { startS3, type S3TestServer } from '../helpers/s3.js';
import { S3Store } from '../../lib/storage/s3-store.js';
import { DirStore } from '../../lib/storage/dir-store.js';
import type { ObjectStore } from '../../lib/storage/index.js';

let builder: TestBuilder;
let sources: SourceServer;
let small: { url: string; sha256: string };
let s3: S3TestServer | undefined;

beforeAll(async () => {
  [builder, sources] = await Promise.all([startTestBuilder({ uids: TEST_UID_RANGES.api, slots: 2, sseHeartbeatMs: 200 }), startSourceServer()]);
  const source = await tgz(packageTar({ name: 'small-app', version: '1.2.3', main: 'index.js', dependencies: { ms: '2.1.3' } }, { 'index.js': 'module.exports = require("ms")("2h");\n' }));
  small = { url: sources.add('small-app-1.2.3.tgz', source.body), sha256: source.sha256 };
});
afterAll(async () => {
  await builder?.stop();
  await sources?.stop();
  await s3?.stop();
});

const request = (overrides: Partial<CreateBuildRequest> = {}): CreateBuildRequest => ({ source: { url: small.url, sha256: small.sha256 }, target: hostTargetSpec(), ...overrides });
/** A request as it is, without the client's error mapping (to see status codes and bodies). */
const raw = (pathname: string, options: { method?: 'GET' | 'POST'; body?: string; headers?: Record<string, string> } = {}) =>
  got(`${builder.url}${pathname}`, { method: options.method ?? 'GET', headers: options.headers ?? {}, ...(options.body === undefined ? {} : { body: options.body }), throwHttpErrors: false, retry: { limit: 0 } });
const auth = () => ({ authorization: `Bearer ${builder.token}` });

describe('builder API', () => {
  it('builds a small real package over HTTP: record, steps, log, SSE, artifact', async () => {
    const created = await builder.client.createBuild(request({ label: 'api test' }), { idempotencyKey: `full-${Date.now()}` });
    expect(created.existing).toBe(false);
    const lines: LogLine[] = [];
    const statuses: string[] = [];
    const final = await builder.client.followBuild(created.id, { onLog: (line) => lines.push(line), onStatus: (record) => statuses.push(record.state) });
    expect(final.error).toBeUndefined();
    expect(final.state).toBe('succeeded');
    expect(final.package).toEqual({ name: 'small-app', version: '1.2.3' });
    expect(final.resolved).toEqual({ node: process.versions.node, abi: process.versions.modules, npm: expect.any(String), method: 'native', verification: 'none', isolation: isRoot ? 'bubblewrap+build-user' : 'bubblewrap' });
    expect(final.steps.map((step) => step.name)).toEqual(expect.arrayContaining(['unpack', 'configure', 'runtime', 'install', 'bundle', 'verify', 'pack', 'output']));
    expect(final.steps.every((step) => step.state === 'finished' && typeof step.durationMs === 'number')).toBe(true);
    expect(final.label).toBe('api test');
    expect(final.startedAt && final.finishedAt && final.heartbeatAt).toBeTruthy();
    // npm and its scripts, sandboxed in a session of their own, not bwrap alone (~2 MB).
    expect(final.peakMemory).toBeGreaterThan(30 * 1024 * 1024);
    expect(final.freeDisk).toBeGreaterThan(0);
    expect(final.artifact?.key).toMatch(/small-app-1\.2\.3-linux-.*-node20\.tgz$/);
    // SSE delivered every line in order, and the NDJSON log agrees.
    expect(lines.map((line) => line.seq)).toEqual(Array.from({ length: lines.length }, (_, index) => index + 1));
    expect(lines.some((line) => line.step === 'install')).toBe(true);
    const log = await builder.client.getLog(created.id);
    expect(log.map((line) => line.seq)).toEqual(lines.map((line) => line.seq));
    expect(await builder.client.getLog(created.id, { since: 3 })).toEqual(log.slice(3));
    // The artifact: download, sha256, and the bundle inside.
    const dir = await tempDir('bd-artifact-');
    const file = path.join(dir.dir, 'bundle.tgz');
    const got1 = await builder.client.downloadArtifact(created.id, file);
    expect(got1).toEqual({ sha256: final.artifact?.sha256, size: final.artifact?.size });
    const files = await readTar(Readable.from([gunzipSync(await readFile(file))]));
    const packageJson = JSON.parse(files.get('package/package.json')!.content.toString()) as { bundleDependencies: string[] };
    expect(packageJson.bundleDependencies).toEqual(['ms']);
    expect(files.has('package/node_modules/ms/index.js')).toBe(true);
    await dir.remove();
    // The record persisted in the store as served.
    const stored = JSON.parse(await readFile(path.join(builder.dir, 'store', 'builder', 'builds', created.id, 'record.json'), 'utf8')) as BuildRecord;
    expect(stored.state).toBe('succeeded');
    expect(stored.artifact).toEqual(final.artifact);
    // Resume: Last-Event-ID 5 replays from line 6, then the final status and end.
    const resumed: number[] = [];
    await builder.client.followBuild(created.id, { since: 5, onLog: (line) => resumed.push(line.seq) });
    expect(resumed[0]).toBe(6);
    // The polling fallback (what followBuild does when event streams keep failing) sees the same.
    const polled: number[] = [];
    const viaPolling = await builder.client.followBuild(created.id, { maxStreamFailures: 0, onLog: (line) => polled.push(line.seq) });
    expect(viaPolling.state).toBe('succeeded');
    expect(polled).toEqual(lines.map((line) => line.seq));
    // History: newest first.
    const second = await builder.client.createBuild(request(), { idempotencyKey: `full-2-${Date.now()}` });
    const page = await builder.client.listBuilds({ limit: 1 });
    expect(page.builds.map((record) => record.id)).toEqual([second.id]);
    expect(page.cursor).toBeTruthy();
    const next = await builder.client.listBuilds({ limit: 1, cursor: page.cursor as string });
    expect(next.builds.map((record) => record.id)).toEqual([created.id]);
    await builder.client.followBuild(second.id);
  });

  it('writes a running build\'s record to the store at most once a second, and its end at once', async () => {
    // A real directory store, watched: every write of a record.json is noted (nothing is faked).
    const root = await tempDir('bd-record-writes-');
    const inner = new DirStore({ root: root.dir });
    const writes: string[] = [];
    const store = new Proxy(inner, {
      get(target, property) {
        if (property === 'put') {
          return (key: string, ...rest: Parameters<ObjectStore['put']> extends [string, ...infer R] ? R : never) => {
            if (key.endsWith('/record.json')) writes.push(key);
            return target.put(key, ...rest);
          };
        }
        const value: unknown = Reflect.get(target, property, target);
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    }) as ObjectStore;
    const watched = await startTestBuilder({ uids: TEST_UID_RANGES.records, slots: 1, store });
    try {
      const created = await watched.client.createBuild(request(), { idempotencyKey: `writes-${Date.now()}` });
      const final = await watched.client.followBuild(created.id);
      expect(final.state).toBe('succeeded');
      // The end is in the store as soon as a follower hears of it.
      const stored = JSON.parse((await readFile(path.join(root.dir, 'builder', 'builds', created.id, 'record.json'))).toString()) as BuildRecord;
      expect(stored.state).toBe('succeeded');
      expect(stored.steps).toEqual(final.steps);
      // Every step starting and ending is a change (8 steps: 16 changes, plus running and complete);
      // the store got the first record, at most one write per second of the build for its
      // changes and one for its heartbeat (every second here), and the end.
      expect(final.steps.length).toBeGreaterThanOrEqual(8);
      const seconds = Math.ceil((Date.parse(final.finishedAt as string) - Date.parse(final.createdAt)) / 1000);
      const mine = writes.filter((key) => key.includes(created.id));
      expect(mine.length).toBeGreaterThanOrEqual(2);
      expect(mine.length).toBeLessThanOrEqual(2 + 2 * seconds);
      expect(mine.length).toBeLessThan(2 * final.steps.length);
    } finally {
      await watched.stop();
      await root.remove();
    }
  });

  it('takes the source from a presigned S3 GET and PUTs the bundle to a presigned S3 URL; or a key in its own store', async () => {
    s3 = await startS3({ buckets: ['sources', 'results'] });
    const sourceStore = new S3Store({ ...s3.storeOptions, bucket: 'sources' });
    const resultStore = new S3Store({ ...s3.storeOptions, bucket: 'results' });
    const source = await tgz(packageTar({ name: 'via-s3', version: '2.0.0' }, { 'index.js': 'module.exports = 2;\n' }));
    await sourceStore.put('src/via-s3.tgz', source.body, { sha256: source.sha256 });
    const get = await sourceStore.presignGet('src/via-s3.tgz', { expiresIn: 60 });
    const put = await resultStore.presignPut('out/via-s3.tgz', { expiresIn: 600 });
    expect(put.url).not.toMatch(/x-amz-checksum/i);
    const { id } = await builder.client.createBuild({ source: { url: get.url, sha256: source.sha256 }, target: hostTargetSpec(), output: { url: put.url, headers: put.headers } }, { idempotencyKey: `s3-${Date.now()}` });
    const record = await builder.client.followBuild(id);
    expect(record.error).toBeUndefined();
    expect(record.artifact?.url).toBe(put.url.split('?')[0]);
    expect(JSON.stringify(record)).not.toMatch(/X-Amz-Signature/i);
    expect(record.source.url).toBe(get.url.split('?')[0]);
    const { body } = await resultStore.get('out/via-s3.tgz');
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    const uploaded = Buffer.concat(chunks);
    expect(uploaded.length).toBe(record.artifact?.size);
    expect(createHash('sha256').update(uploaded).digest('hex')).toBe(record.artifact?.sha256);

    // A key in the builder's own store: verified like a URL.
    await builder.store.put('sources/via-key.tgz', source.body);
    const wrong = builder.client.createBuild({ source: { key: 'sources/via-key.tgz', sha256: small.sha256 }, target: hostTargetSpec() }, { idempotencyKey: `key-wrong-${Date.now()}` });
    await expect(wrong).rejects.toMatchObject({ code: 'ERR_INTEGRITY' });
    await expect(builder.client.createBuild({ source: { key: 'sources/none.tgz', sha256: small.sha256 }, target: hostTargetSpec() }, { idempotencyKey: `key-none-${Date.now()}` })).rejects.toMatchObject({ code: 'ERR_STORE_NOT_FOUND' });
    const viaKey = await builder.client.createBuild({ source: { key: 'sources/via-key.tgz', sha256: source.sha256 }, target: hostTargetSpec() }, { idempotencyKey: `key-${Date.now()}` });
    expect((await builder.client.followBuild(viaKey.id)).state).toBe('succeeded');
    sourceStore.close();
    resultStore.close();
  });

  it('returns the existing build for the same Idempotency-Key, also when both arrive at once', async () => {
    const key = `idem-${Date.now()}`;
    const [a, b] = await Promise.all([
      builder.client.createBuild(request(), { idempotencyKey: key }),
      builder.client.createBuild(request(), { idempotencyKey: key }),
    ]);
    expect(a.id).toBe(b.id);
    expect([a.existing, b.existing].sort()).toEqual([false, true]);
    const again = await builder.client.createBuild(request(), { idempotencyKey: key });
    expect(again).toMatchObject({ id: a.id, existing: true });
    const record = await builder.client.getBuild(a.id);
    expect(record.idempotencyKey).toBe(key);
    await builder.client.cancelBuild(a.id);
  });

  it('answers 401 without detail unless the token is right; health and openapi are public', async () => {
    for (const headers of [{}, { authorization: 'Bearer wrong-token-wrong-token' }, { authorization: `Basic ${builder.token}` }] as Array<Record<string, string>>) {
      for (const pathname of ['/v1/builds', '/v1/builds/0000000000000000000000000', '/v1/nothing-here']) {
        const response = await raw(pathname, { headers });
        expect(response.statusCode).toBe(401);
        expect(JSON.parse(response.body)).toEqual({ error: { code: 'ERR_UNAUTHORIZED', message: 'Unauthorized.' } });
      }
    }
    const post = await raw('/v1/builds', { method: 'POST', body: '{not json', headers: { 'content-type': 'application/json' } });
    expect(post.statusCode).toBe(401);
    const wrong = createBuilderClient({ url: builder.url, token: 'x'.repeat(40) });
    await expect(wrong.getBuild('0000000000000000')).rejects.toMatchObject({ code: 'ERR_UNAUTHORIZED' });
    const health = await wrong.health();
    expect(health).toMatchObject({ ok: true, builder: 'test-builder', queue: { capacity: 2 }, node: process.versions.node });
    expect(health.targets).toContain('darwin-arm64');
    // How each target is built: this machine natively, linux-arm64 cross-compiled where the
    // machine has the toolchain (CI installs it), darwin with zig (an optional dependency), a
    // musl target only without natives.
    const host = hostTarget();
    const toolchains = resolveToolchains({ host, env: process.env });
    const arm64Toolchain = host.cpu === 'x64' && toolchainFor(parseTarget('linux-arm64'), toolchains) !== undefined;
    const zig = toolchainFor(parseTarget('darwin-arm64'), toolchains) !== undefined;
    expect(health.methods).toMatchObject({ [formatTarget(host)]: 'native', 'darwin-arm64': zig ? 'cross-compiled' : 'cross', 'linux-arm64': arm64Toolchain ? 'cross-compiled' : 'cross', 'linux-arm64-musl': 'cross' });
    expect(Object.keys(health.methods).sort()).toEqual([...health.targets].sort());
    const openapi = JSON.parse((await raw('/v1/openapi.json')).body) as { openapi: string; info: Record<string, unknown>; paths: Record<string, Record<string, { requestBody?: unknown }>> };
    expect(openapi.openapi).toBe('3.1.0');
    expect(openapi.info['x-targets']).toEqual(health.methods);
    // Builds run in bubblewrap (CI installs it), as a build user of their own when the builder is root.
    expect(health.isolation).toBe(isRoot ? 'bubblewrap+build-user' : 'bubblewrap');
    expect(openapi.info['x-isolation']).toBe(health.isolation);
    expect(openapi.info.description).toContain(`isolated by: ${health.isolation}`);
    expect(Object.keys(openapi.paths)).toEqual(expect.arrayContaining(['/v1/builds', '/v1/builds/{id}', '/v1/builds/{id}/events', '/v1/builds/{id}/log', '/v1/health']));
    expect(openapi.paths['/v1/builds']?.post?.requestBody).toBeTruthy();
    // The token never reaches the builder's own logs.
    expect(builder.logs.join('')).not.toContain(builder.token);
  });

  it('rejects malformed JSON, schema violations and oversized bodies with coded 4xx', async () => {
    const post = (body: string, headers: Record<string, string> = {}) => raw('/v1/builds', { method: 'POST', body, headers: { ...auth(), 'content-type': 'application/json', ...headers } });
    const malformed = await post('{"source": ');
    expect(malformed.statusCode).toBe(400);
    expect(JSON.parse(malformed.body).error.code).toBe('ERR_REQUEST_INVALID');
    const unknownField = await post(JSON.stringify({ ...request(), extra: 1 }));
    expect(unknownField.statusCode).toBe(400);
    expect(JSON.parse(unknownField.body).error.message).toMatch(/additional/i);
    const badSha = await post(JSON.stringify(request({ source: { url: small.url, sha256: 'abc' } })));
    expect(badSha.statusCode).toBe(400);
    const noSource = await post(JSON.stringify({ target: hostTargetSpec(), source: { sha256: small.sha256 } }));
    expect(noSource.statusCode).toBe(400);
    const fileUrl = await post(JSON.stringify(request({ source: { url: 'file:///etc/passwd', sha256: small.sha256 } })));
    expect(fileUrl.statusCode).toBe(400);
    const nodeOptions = await post(JSON.stringify(request({ overrides: { env: { NODE_OPTIONS: '--require /tmp/x.js', FOO: 'bar' } } })));
    expect(nodeOptions.statusCode).toBe(400);
    expect(JSON.parse(nodeOptions.body).error.message).toContain('NODE_OPTIONS');
    for (const gzipLevel of [0, 10, 2.5]) {
      const badLevel = await post(JSON.stringify(request({ overrides: { gzipLevel } })));
      expect(badLevel.statusCode, `gzipLevel ${gzipLevel}`).toBe(400);
      expect(JSON.parse(badLevel.body).error.message).toContain('gzipLevel');
    }
    const huge = await post(JSON.stringify({ ...request(), label: 'x'.repeat(20_000) }));
    expect(huge.statusCode).toBe(413);
    expect(JSON.parse(huge.body).error.code).toBe('ERR_REQUEST_TOO_LARGE');
    const badId = await raw('/v1/builds/..%2f..%2fetc', { headers: auth() });
    expect(badId.statusCode).toBe(400);
    const missing = await raw('/v1/builds/0000000000000000', { headers: auth() });
    expect(missing.statusCode).toBe(404);
    expect(JSON.parse(missing.body).error.code).toBe('ERR_BUILD_NOT_FOUND');
  });

  it('refuses a wrong sha256, an unreachable source and a target it does not serve (422)', async () => {
    const wrongSha = builder.client.createBuild(request({ source: { url: small.url, sha256: createHash('sha256').update('other').digest('hex') } }), { idempotencyKey: `sha-${Date.now()}` });
    await expect(wrongSha).rejects.toMatchObject({ code: 'ERR_INTEGRITY', details: expect.objectContaining({ status: 422 }) });
    const unreachable = builder.client.createBuild(request({ source: { url: 'http://127.0.0.1:1/nothing.tgz', sha256: small.sha256 } }), { idempotencyKey: `unreach-${Date.now()}` });
    await expect(unreachable).rejects.toMatchObject({ code: 'ERR_SOURCE_FETCH', details: expect.objectContaining({ status: 422 }) });
    const missing = builder.client.createBuild(request({ source: { url: `${sources.url}/missing.tgz`, sha256: small.sha256 } }), { idempotencyKey: `missing-${Date.now()}` });
    await expect(missing).rejects.toMatchObject({ code: 'ERR_SOURCE_FETCH' });
    try {
      await builder.client.createBuild(request({ target: { os: 'aix', cpu: 'ppc64' } }), { idempotencyKey: `aix-${Date.now()}` });
      expect.unreachable();
    } catch (error) {
      expect(isBundleError(error, 'ERR_TARGET_UNSUPPORTED')).toBe(true);
      expect((error as Error).message).toContain('linux-x64');
      expect((error as { details: { served: string[] } }).details.served).toContain('darwin-arm64');
    }
    // Nothing was queued for any of them.
    expect((await builder.client.health()).queue.queued).toBe(0);
  });

  it('cancels during npm install: npm and its scripts are gone, state cancelled', async () => {
    // The script and its child carry a marker in their command lines: their pids inside the
    // build's sandbox (its own PID namespace) are not the machine's.
    const marker = `slow-install-${Date.now()}`;
    const script = [
      'const { spawn } = require("child_process");',
      `spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)", "${marker}-child"], { stdio: "ignore" });`,
      'console.log("STARTED");',
      'setInterval(() => {}, 1000);',
    ].join('\n');
    const source = await tgz(packageTar({ name: 'slow-install', version: '1.0.0', scripts: { install: `node slow.js ${marker}` } }, { 'slow.js': script }));
    const url = sources.add('slow-install.tgz', source.body);
    const { id } = await builder.client.createBuild(request({ source: { url, sha256: source.sha256 } }), { idempotencyKey: `cancel-${Date.now()}` });
    await waitFor(async () => (await builder.client.getLog(id)).some((candidate) => candidate.message === 'STARTED') || undefined, 60_000, 200);
    // Live (not zombie) processes whose command line carries the marker: the script and its child.
    const running = () => liveProcessesWith(marker);
    const pids = [0, 1];
    const alive = (index: number) => running().some((line) => (index === 0 ? line.includes(`slow.js ${marker}`) : line.includes(`${marker}-child`)));
    expect(pids.every(alive)).toBe(true);
    // A raw event stream stays open with heartbeats while the build runs, and ends with it.
    const stream = got.stream(`${builder.url}/v1/builds/${id}/events`, { headers: auth(), retry: { limit: 0 } });
    let text = '';
    stream.on('data', (chunk: Buffer) => {
      text += chunk.toString();
    });
    const ended = new Promise<void>((resolve, reject) => {
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(text.match(/^: heartbeat$/gm)?.length).toBeGreaterThanOrEqual(3);
    expect(text).toContain('event: status');
    expect(text).not.toContain('event: end');
    const started = Date.now();
    const record = await builder.client.cancelBuild(id);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(record.state).toBe('cancelled');
    expect(record.error?.code).toBe('ERR_ABORTED');
    expect(record.steps.find((step) => step.name === 'install')?.state).toBe('failed');
    expect(pids.some(alive)).toBe(false);
    await ended;
    const end = /event: end\nid: \d+\ndata: (.*)\n\n/.exec(text);
    expect(JSON.parse(end?.[1] ?? '{}')).toMatchObject({ id, state: 'cancelled' });
    if (isRoot) {
      // No live process of the build uids is left (zombies wait for init and hold nothing).
      const live = execFileSync('ps', ['-A', '-o', 'uid=,stat=']).toString().split('\n').map((line) => line.trim().split(/\s+/))
        .filter(([uid, stat]) => Number(uid) >= TEST_UID_RANGES.api.first && Number(uid) <= TEST_UID_RANGES.api.last && !stat?.startsWith('Z'));
      expect(live).toEqual([]);
    }
    // Cancelling again is harmless; a queued build leaves the queue.
    expect((await builder.client.cancelBuild(id)).state).toBe('cancelled');
  });
});
