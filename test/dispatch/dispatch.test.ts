/**
 * dispatch() end to end, all real parts: two builder services as child processes (the real
 * bin) serving linux-x64 and linux-arm64 by configuration, with no AWS credentials in their
 * env; s3rver as the source and destination buckets (presigned URLs); a real package.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBuilderClient } from '../../lib/builder/client.js';
import { prepareInput } from '../../lib/dispatch/input.js';
import { markerKey } from '../../lib/dispatch/keys.js';
import { ensureLockfile } from '../../lib/dispatch/lockfile.js';
import { parseTargets, planTargets, type Pool } from '../../lib/dispatch/plan.js';
import { dispatch, type DispatchEvent, type DispatchResult, type Manifest } from '../../lib/dispatch/run.js';
import { NODE, dispatchTools, startChildBuilder, startDispatchWorld, writeFixture, type DispatchWorld } from '../helpers/dispatch.js';
import { repoRoot, tempDir } from '../helpers/packages.js';
import { waitFor } from '../helpers/builder.js';

let root: { dir: string; remove: () => Promise<void> };
let world: DispatchWorld;
const helloApp = path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz');

beforeAll(async () => {
  root = await tempDir('bd-dispatch-');
  world = await startDispatchWorld(root.dir);
});
afterAll(async () => {
  await world?.stop();
  await root?.remove();
});

async function run(input: string, targets: string[], options: { pools?: Pool[]; force?: boolean; signal?: AbortSignal; events?: DispatchEvent[]; failFast?: boolean } = {}): Promise<DispatchResult> {
  const work = await tempDir('bd-dispatch-run-');
  try {
    const prepared = await prepareInput(input, { cwd: root.dir, workDir: work.dir, tools: dispatchTools() });
    const source = await ensureLockfile(prepared, { tools: dispatchTools(), workDir: work.dir });
    return await dispatch({
      input: prepared,
      source,
      targets: planTargets(parseTargets(targets), options.pools ?? world.pools()),
      sourceStore: world.sources,
      destination: world.releases,
      keyTemplate: '{name}/{version}/{file}',
      manifestTemplate: '{name}/{version}/manifest.json',
      presignExpiry: 3600,
      force: options.force ?? false,
      failFast: options.failFast ?? false,
      signal: options.signal ?? new AbortController().signal,
      tmpDir: work.dir,
      onEvent: (event) => options.events?.push(event),
    });
  } finally {
    await work.remove();
  }
}

async function readObject(key: string): Promise<Buffer> {
  const { body } = await world.releases.get(key);
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function buildCount(): Promise<number> {
  const [a, b] = await Promise.all([world.a.client.listBuilds({ limit: 100 }), world.b.client.listBuilds({ limit: 100 })]);
  return a.builds.length + b.builds.length;
}

describe('dispatch', () => {
  let first: DispatchResult;

  it('delivers a real package to two targets on two builders, verified, with manifest.json last', async () => {
    const events: DispatchEvent[] = [];
    first = await run(helloApp, [`linux-x64@${NODE}`, `linux-arm64@${NODE}`], { events });
    expect(first.targets.map((outcome) => [outcome.target, outcome.ok, outcome.ok ? outcome.cached : undefined])).toEqual([[`linux-x64@${NODE}`, true, false], [`linux-arm64@${NODE}`, true, false]]);
    expect(first.ok).toBe(true);
    expect(first.lockfile).toMatchObject({ name: 'npm-shrinkwrap.json', added: true });
    expect(first.source.uploaded).toBe(true);
    for (const outcome of first.targets) {
      if (!outcome.ok) throw new Error('unreachable');
      expect(outcome.key).toMatch(/^hello-app\/1\.0\.0\/hello-app-1\.0\.0-linux-(x64|arm64)-glibc-node\d+\.tgz$/);
      const bytes = await readObject(outcome.key);
      expect(createHash('sha256').update(bytes).digest('hex')).toBe(outcome.sha256);
      expect(outcome.node).toBe(NODE);
    }
    // The builders that did the work serve one target each, and the builds ran where they belong.
    const x64 = first.targets[0];
    const arm = first.targets[1];
    expect(x64?.ok && x64.builder).toBe('builder-a');
    expect(arm?.ok && arm.builder).toBe('builder-b');
    // No staged result is left behind in the source bucket.
    expect((await world.sources.list({ prefix: 'staging/' })).items).toEqual([]);
    const manifest = JSON.parse((await readObject('hello-app/1.0.0/manifest.json')).toString()) as Manifest;
    expect(manifest.lockfile.sha256).toBe(first.lockfile.sha256);
    expect(Object.keys(manifest.targets).sort()).toEqual([`linux-arm64@${NODE}`, `linux-x64@${NODE}`]);
    expect(events.at(-1)).toMatchObject({ type: 'phase', phase: 'manifest', state: 'finished' });
    // Presigned PUTs must not sign a checksum of an empty body (real S3 would reject the upload).
    expect((await world.sources.presignPut('staging/check.tgz', { expiresIn: 60 })).url).not.toMatch(/x-amz-checksum|x-amz-sdk-checksum/i);
    // The builders hold no bucket credentials: none in their environment.
    for (const builder of [world.a, world.b]) {
      const environ = await readFile(`/proc/${builder.child.pid}/environ`, 'utf8').catch(() => '');
      expect(environ.split('\0').filter((entry) => /^AWS_/.test(entry))).toEqual([]);
    }
    // The builders were given presigned URLs: their records keep the URL without its signature.
    const record = await world.a.client.getBuild(x64?.ok ? (x64.buildId as string) : '');
    expect(record.source.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/sources\/sources\//);
    expect(record.source.url).not.toContain('?');
  });

  it('re-run on an unchanged input is a cache hit: no build starts on any builder', async () => {
    const before = await buildCount();
    const started = Date.now();
    const again = await run(helloApp, [`linux-x64@${NODE}`, `linux-arm64@${NODE}`]);
    expect(again.ok).toBe(true);
    expect(again.targets.every((outcome) => outcome.ok && outcome.cached)).toBe(true);
    expect(again.source.sha256).toBe(first.source.sha256);
    expect(await buildCount()).toBe(before);
    expect(Date.now() - started).toBeLessThan(15_000);
  });

  it('--force rebuilds, and the same bytes are accepted at the immutable key', async () => {
    const before = await buildCount();
    const forced = await run(helloApp, [`linux-x64@${NODE}`], { force: true });
    expect(forced.ok).toBe(true);
    expect(forced.targets[0]).toMatchObject({ ok: true, cached: false });
    expect(await buildCount()).toBe(before + 1);
  });

  it('fails over when a builder of the pool is down', async () => {
    // A port that was just closed: connections are refused.
    const dead = createServer();
    await new Promise<void>((resolve) => dead.listen(0, '127.0.0.1', resolve));
    const deadUrl = `http://127.0.0.1:${(dead.address() as AddressInfo).port}`;
    await new Promise<void>((resolve) => dead.close(() => resolve()));
    const fixture = await writeFixture(path.join(root.dir, 'failover-1.0.0.tgz'), { name: 'failover-fixture', version: '1.0.0' });
    const pools = world.pools({ 'linux-x64': [{ url: deadUrl, client: createBuilderClient({ url: deadUrl, token: 'x' }) }, { url: world.a.url, client: world.a.client }] });
    const events: DispatchEvent[] = [];
    const result = await run(fixture, [`linux-x64@${NODE}`], { pools, events });
    expect(result.targets[0]).toMatchObject({ ok: true, builderUrl: world.a.url });
    // The dead member is named as skipped (its health probe failed), in the events and the outcome.
    expect(result.targets[0]?.failovers).toEqual([expect.objectContaining({ kind: 'skipped', builder: deadUrl, message: expect.stringContaining('ECONNREFUSED') })]);
    expect(events).toContainEqual(expect.objectContaining({ type: 'failover', target: `linux-x64@${NODE}` }));
  });

  it('a build whose builder shuts down mid-build is dispatched again to another builder of the pool', async () => {
    const c = await startChildBuilder({ root: root.dir, name: 'builder-c', targets: ['linux-x64'], hooks: path.join(root.dir, 'slow-hook.mjs') });
    const d = await startChildBuilder({ root: root.dir, name: 'builder-d', targets: ['linux-x64'], hooks: path.join(root.dir, 'slow-hook.mjs'), env: { BD_TEST_IGNORE_SLOW: '1' } });
    try {
      const fixture = await writeFixture(path.join(root.dir, 'lost-1.0.0.tgz'), { name: 'lost-fixture', version: '1.0.0' }, { SLOW: 'yes\n' });
      const events: DispatchEvent[] = [];
      const pools = world.pools({ 'linux-x64': [{ url: c.url, client: c.client, keys: c.keys }, { url: d.url, client: d.client, keys: d.keys }] });
      const running = run(fixture, [`linux-x64@${NODE}`], { pools, events });
      await waitFor(() => events.some((event) => event.type === 'record' && event.record.builder === 'builder-c' && event.record.steps.some((step) => step.name === 'install')) || undefined, 60_000);
      await c.stop();
      const result = await running;
      expect(result.targets[0]).toMatchObject({ ok: true, builder: 'builder-d' });
      // The failover is reported, live and in the outcome: which builder, what happened, what was done.
      const notes = events.flatMap((event) => (event.type === 'failover' ? [event.note] : []));
      expect(notes).toContainEqual(expect.objectContaining({ kind: 'redispatched', builder: c.url, message: expect.stringMatching(new RegExp(`ERR_BUILDER_STOPPING.*Sent again to ${d.url.replace(/[.]/g, '\\.')} as build`)) }));
      const outcome = result.targets[0];
      expect(outcome?.failovers).toEqual(notes);
    } finally {
      await Promise.all([c.stop(), d.stop()]);
    }
  });

  it('one target failing: exit data says so, the others are delivered, the manifest records the failure', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'partial-1.0.0.tgz'), { name: 'partial-fixture', version: '1.0.0' });
    const result = await run(fixture, [`linux-x64@${NODE}`, 'linux-arm64@>=99']);
    expect(result.ok).toBe(false);
    const [good, bad] = result.targets;
    expect(good).toMatchObject({ ok: true });
    expect(bad).toMatchObject({ ok: false, cancelled: false, error: { code: 'ERR_ENGINES_UNSATISFIED' } });
    const manifest = JSON.parse((await readObject('partial-fixture/1.0.0/manifest.json')).toString()) as Manifest;
    expect(manifest.targets['linux-arm64@>=99']).toMatchObject({ ok: false, error: { code: 'ERR_ENGINES_UNSATISFIED' } });
    expect(manifest.targets[`linux-x64@${NODE}`]).toMatchObject({ ok: true });
  });

  it('a corrupted result (sha256 mismatch) is not copied', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'corrupt-1.0.0.tgz'), { name: 'corrupt-fixture', version: '1.0.0' });
    world.proxy.corrupt.add('/staging/');
    try {
      const result = await run(fixture, [`linux-x64@${NODE}`]);
      expect(result.targets[0]).toMatchObject({ ok: false, error: { code: 'ERR_INTEGRITY' } });
      const listed = await world.releases.list({ prefix: 'corrupt-fixture/1.0.0/' });
      // Nothing: no bundle, no cache marker, and no manifest (it would list no bundle).
      expect(listed.items.map((item) => item.key)).toEqual([]);
      expect(result.manifest).toBeUndefined();
      expect((await world.sources.list({ prefix: 'staging/' })).items).toEqual([]);
      const outcome = result.targets[0];
      expect(await world.releases.exists(markerKey({ name: 'corrupt-fixture', version: '1.0.0' }, outcome?.buildKey ?? ''))).toBe(false);
    } finally {
      world.proxy.corrupt.clear();
    }
  });

  it('cancelling mid-build cancels every remote build and removes staged objects', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'slow-1.0.0.tgz'), { name: 'slow-fixture', version: '1.0.0' }, { SLOW: 'yes\n' });
    const controller = new AbortController();
    const events: DispatchEvent[] = [];
    const running = run(fixture, [`linux-x64@${NODE}`, `linux-arm64@${NODE}`], { signal: controller.signal, events });
    // Both builds are in their (sleeping) npm step.
    await waitFor(() => events.filter((event) => event.type === 'record' && event.record.steps.some((step) => step.name === 'install' && step.state === 'running')).map((event) => (event as { target: string }).target).filter((value, index, all) => all.indexOf(value) === index).length === 2 || undefined, 60_000);
    controller.abort();
    const result = await running;
    expect(result.interrupted).toBe(true);
    expect(result.manifest).toBeUndefined();
    expect(result.targets.every((outcome) => !outcome.ok && outcome.cancelled)).toBe(true);
    for (const builder of [world.a, world.b]) {
      const { builds } = await builder.client.listBuilds({ limit: 20 });
      expect(builds.filter((build) => build.state === 'running' || build.state === 'queued')).toEqual([]);
      expect(builds[0]?.state).toBe('cancelled');
    }
    expect((await world.sources.list({ prefix: 'staging/' })).items).toEqual([]);
  });

  it('stopping while a build request is on its way back still cancels the build it started', async () => {
    // A proxy in front of builder A holds the answer to POST /v1/builds for 1.5 s: the builder
    // has accepted and started the build, the dispatcher does not know its id yet.
    let answered = (): void => undefined;
    const builderAnswered = new Promise<void>((resolve) => {
      answered = resolve;
    });
    const upstream = new URL(world.a.url);
    const proxy = createServer((request, response) => {
      const forward = httpRequest({ host: upstream.hostname, port: upstream.port, method: request.method, path: request.url, headers: request.headers }, (answer) => {
        const relay = () => {
          response.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(response);
        };
        if (request.method === 'POST' && request.url === '/v1/builds') {
          answered();
          setTimeout(relay, 1500);
        } else {
          relay();
        }
      });
      forward.on('error', () => response.destroy());
      request.pipe(forward);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    try {
      const fixture = await writeFixture(path.join(root.dir, 'inflight-1.0.0.tgz'), { name: 'inflight-fixture', version: '1.0.0' }, { SLOW: 'yes\n' });
      const controller = new AbortController();
      const pools = world.pools({ 'linux-x64': [{ url: proxyUrl, client: createBuilderClient({ url: proxyUrl, token: world.a.token }) }] });
      const running = run(fixture, [`linux-x64@${NODE}`], { pools, signal: controller.signal });
      await builderAnswered;
      controller.abort();
      const result = await running;
      expect(result.interrupted).toBe(true);
      expect(result.targets[0]).toMatchObject({ ok: false, cancelled: true });
      const { builds } = await world.a.client.listBuilds({ limit: 10 });
      const started = builds.find((build) => build.label?.includes('inflight-fixture@1.0.0'));
      expect(started?.state).toBe('cancelled');
    } finally {
      proxy.closeAllConnections();
      await new Promise<void>((resolve) => proxy.close(() => resolve()));
    }
  });

  it('--fail-fast cancels the other targets after the first failure', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'failfast-1.0.0.tgz'), { name: 'failfast-fixture', version: '1.0.0' }, { SLOW: 'yes\n' });
    const result = await run(fixture, [`linux-x64@${NODE}`, 'linux-arm64@>=99'], { failFast: true });
    expect(result.interrupted).toBe(false);
    expect(result.targets[1]).toMatchObject({ ok: false, cancelled: false, error: { code: 'ERR_ENGINES_UNSATISFIED' } });
    expect(result.targets[0]).toMatchObject({ ok: false, cancelled: true });
    const { builds } = await world.a.client.listBuilds({ limit: 5 });
    expect(builds[0]?.state).toBe('cancelled');
  });
});
