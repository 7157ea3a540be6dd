import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BuildRecord } from '../../lib/protocol.js';
import { TEST_UID_RANGES, hostTargetSpec, startSourceServer, startTestBuilder, tgz, type SourceServer, type TestBuilder } from '../helpers/builder.js';
import { packageTar } from '../helpers/packages.js';

const SUBMISSIONS = 50;
const SLOTS = 2;

let builder: TestBuilder;
let sources: SourceServer;

beforeAll(async () => {
  [builder, sources] = await Promise.all([startTestBuilder({ uids: TEST_UID_RANGES.concurrency, slots: SLOTS }), startSourceServer()]);
});
afterAll(async () => {
  await builder?.stop();
  await sources?.stop();
});

/** The most intervals open at one instant (an end and a start at the same ms do not overlap). */
function maxOverlap(records: BuildRecord[]): number {
  const points = records.flatMap((record) => [
    { at: Date.parse(record.startedAt as string), delta: 1 },
    { at: Date.parse(record.finishedAt as string), delta: -1 },
  ]).sort((a, b) => a.at - b.at || a.delta - b.delta);
  let open = 0;
  let max = 0;
  for (const point of points) {
    open += point.delta;
    max = Math.max(max, open);
  }
  return max;
}

describe('builder queue', () => {
  it(`runs ${SUBMISSIONS} concurrent submissions on ${SLOTS} slots: all finish, none lost, never more than ${SLOTS} at once`, async () => {
    // No dependencies and no lockfile: each build is a quick `npm install` on a warm cache.
    const source = await tgz(packageTar({ name: 'tiny', version: '1.0.0', main: 'index.js' }, { 'index.js': 'module.exports = 42;\n' }));
    const url = sources.add('tiny.tgz', source.body);
    const created = await Promise.all(Array.from({ length: SUBMISSIONS }, (_, index) =>
      builder.client.createBuild({ source: { url, sha256: source.sha256 }, target: hostTargetSpec(), label: `n${index}` }, { idempotencyKey: `burst-${index}` })));
    const ids = created.map((build) => build.id);
    expect(new Set(ids).size).toBe(SUBMISSIONS);

    // FIFO with visible positions while they wait.
    const health = await builder.client.health();
    expect(health.queue.running).toBeLessThanOrEqual(SLOTS);
    expect(health.queue.running + health.queue.queued).toBeGreaterThan(SLOTS);
    const last = await builder.client.getBuild(ids.at(-1) as string);
    expect(last.state).toBe('queued');
    expect(last.queuePosition).toBeGreaterThan(1);

    const finals = await Promise.all(ids.map((id) => builder.client.followBuild(id)));
    expect(finals.map((record) => record.state)).toEqual(Array(SUBMISSIONS).fill('succeeded'));
    expect(maxOverlap(finals)).toBe(SLOTS);

    // None lost in the store either: the history holds all 50, newest first.
    const listed: BuildRecord[] = [];
    let cursor: string | undefined;
    do {
      const page = await builder.client.listBuilds({ limit: 20, ...(cursor ? { cursor } : {}) });
      listed.push(...page.builds);
      cursor = page.cursor;
    } while (cursor);
    expect(listed.map((record) => record.id).sort()).toEqual([...ids].sort());
    expect(listed.every((record) => record.state === 'succeeded' && record.artifact?.sha256)).toBe(true);
    const created1 = listed.map((record) => Date.parse(record.createdAt));
    expect(created1).toEqual([...created1].sort((a, b) => b - a));
  }, 170_000);
});
