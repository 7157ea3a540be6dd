/**
 * Failover phase by phase, with real parts: child builder processes, s3rver, a real package. A
 * builder that got SIGTERM while a build runs is draining: it keeps serving that build and turns
 * new ones away with 503. Dispatch passes it over like a busy builder — by its health probe
 * (chooseBuilders) and by the create request it refuses (createWithFailover) — and says so.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { prepareInput } from '../../lib/dispatch/input.js';
import { sourceKey } from '../../lib/dispatch/keys.js';
import { ensureLockfile } from '../../lib/dispatch/lockfile.js';
import type { FailoverNote } from '../../lib/dispatch/outcome.js';
import { parseTargets, planTargets, type Pool, type PoolBuilder } from '../../lib/dispatch/plan.js';
import { dispatch, type DispatchEvent, type DispatchResult } from '../../lib/dispatch/run.js';
import { chooseBuilders, createWithFailover } from '../../lib/dispatch/trigger.js';
import { parseTarget } from '../../lib/target.js';
import { waitFor } from '../helpers/builder.js';
import { NODE, dispatchTools, startChildBuilder, startDispatchWorld, writeFixture, type DispatchWorld, type RunningTestBuilder } from '../helpers/dispatch.js';
import { tempDir } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
let world: DispatchWorld;
let draining: RunningTestBuilder;
let slowRun: Promise<DispatchResult>;
const stopSlow = new AbortController();

function member(builder: RunningTestBuilder): PoolBuilder {
  return { url: builder.url, client: builder.client, keys: builder.keys };
}

async function run(input: string, pools: Pool[], options: { signal?: AbortSignal; events?: DispatchEvent[] } = {}): Promise<DispatchResult> {
  const work = await tempDir('bd-failover-run-');
  try {
    const prepared = await prepareInput(input, { cwd: root.dir, workDir: work.dir, tools: dispatchTools() });
    const source = await ensureLockfile(prepared, { tools: dispatchTools(), workDir: work.dir });
    return await dispatch({
      input: prepared, source, targets: planTargets(parseTargets([`linux-x64@${NODE}`]), pools),
      sourceStore: world.sources, destination: world.releases,
      keyTemplate: '{name}/{version}/{file}', manifestTemplate: '{name}/{version}/manifest.json', presignExpiry: 3600,
      signal: options.signal ?? new AbortController().signal, tmpDir: work.dir,
      onEvent: (event) => options.events?.push(event),
    });
  } finally {
    await work.remove();
  }
}

beforeAll(async () => {
  root = await tempDir('bd-failover-');
  world = await startDispatchWorld(root.dir);
  // A builder whose SIGTERM leaves its running build two minutes to finish: it drains meanwhile.
  draining = await startChildBuilder({ root: root.dir, name: 'draining', targets: ['linux-x64'], hooks: path.join(root.dir, 'slow-hook.mjs'), env: { BUNDLE_DISPATCH_BUILDER_SHUTDOWN_GRACE: '120' } });
  const events: DispatchEvent[] = [];
  const slow = await writeFixture(path.join(root.dir, 'slow-1.0.0.tgz'), { name: 'slow-fixture', version: '1.0.0' }, { SLOW: 'yes\n' });
  slowRun = run(slow, world.pools({ 'linux-x64': [member(draining)] }), { signal: stopSlow.signal, events });
  await waitFor(() => events.some((event) => event.type === 'target' && event.state === 'running') || undefined, 60_000);
  draining.child.kill('SIGTERM');
  await waitFor(async () => (await draining.client.health().catch(() => undefined))?.stopping, 10_000);
});
afterAll(async () => {
  stopSlow.abort();
  await slowRun?.catch(() => undefined);
  await draining?.stop();
  await world?.stop();
  await root?.remove();
});

describe('a draining builder', () => {
  it('is skipped by the health probe, and the run says which builder and why', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'probe-1.0.0.tgz'), { name: 'probe-fixture', version: '1.0.0' });
    const events: DispatchEvent[] = [];
    const result = await run(fixture, world.pools({ 'linux-x64': [member(draining), member(world.a)] }), { events });
    expect(result.targets[0]).toMatchObject({ ok: true, builderUrl: world.a.url });
    expect(result.targets[0]?.failovers).toEqual([expect.objectContaining({ kind: 'skipped', builder: draining.url, message: expect.stringContaining('draining') })]);
    expect(events).toContainEqual({ type: 'failover', target: `linux-x64@${NODE}`, note: result.targets[0]?.failovers?.[0] });
  });

  it('chooseBuilders alone: the draining member is left out while another is healthy', async () => {
    const notes: Array<Omit<FailoverNote, 'at'>> = [];
    const ordered = await chooseBuilders([member(draining), member(world.a)], parseTarget('linux-x64'), 'linux-x64', AbortSignal.timeout(10_000), (note) => notes.push(note));
    expect(ordered.map((builder) => builder.url)).toEqual([world.a.url]);
    expect(notes).toEqual([{ kind: 'skipped', builder: draining.url, message: 'skipped: draining (stopping: no new builds)' }]);
  });

  it('createWithFailover alone: the create request a draining builder refuses (503) goes to the next builder', async () => {
    const file = await writeFixture(path.join(root.dir, 'create-1.0.0.tgz'), { name: 'create-fixture', version: '1.0.0' });
    const bytes = await readFile(file);
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    await world.sources.put(sourceKey(sha256), bytes, { sha256, size: bytes.length, contentType: 'application/gzip' });
    const { url } = await world.sources.presignGet(sourceKey(sha256), { expiresIn: 600 });
    const notes: Array<Omit<FailoverNote, 'at'>> = [];
    const created = await createWithFailover([member(draining), member(world.a)], {
      source: { url, sha256 }, target: { os: 'linux', cpu: 'x64', node: NODE }, label: 'failover test',
    }, `failover-test-${sha256}`, AbortSignal.timeout(30_000), { onSent: () => undefined, onCreated: () => undefined, note: (note) => notes.push(note) });
    expect(created.builder.url).toBe(world.a.url);
    expect(notes).toEqual([{ kind: 'failed-over', builder: draining.url, message: expect.stringMatching(new RegExp(`^draining: Builder ${draining.url}.*; sending it to ${world.a.url}$`)) }]);
    // Nothing was created on the draining builder.
    const listed = await draining.client.listBuilds({ limit: 100 });
    expect(listed.builds.map((build) => build.label)).not.toContain('failover test');
    await world.a.client.followBuild(created.id);
  });

  it('a pool whose only builder drains is waited for (noted), not failed at once', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'wait-1.0.0.tgz'), { name: 'wait-fixture', version: '1.0.0' });
    const events: DispatchEvent[] = [];
    const stop = new AbortController();
    const waiting = run(fixture, world.pools({ 'linux-x64': [member(draining)] }), { events, signal: stop.signal });
    const note = await waitFor(() => events.find((event) => event.type === 'failover' && event.note.kind === 'waiting'), 30_000);
    expect(note).toMatchObject({ note: { builder: draining.url, message: expect.stringContaining('every builder of the pool is draining or has a full queue; trying again in') } });
    // Still trying: the target has not failed while the pool drains.
    expect(events.some((event) => event.type === 'target' && event.state === 'failed')).toBe(false);
    stop.abort();
    const result = await waiting;
    expect(result).toMatchObject({ interrupted: true, targets: [{ ok: false, cancelled: true }] });
  });
});
