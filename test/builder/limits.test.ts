import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_UID_RANGES, hostTargetSpec, startSourceServer, startTestBuilder, tgz, type SourceServer } from '../helpers/builder.js';
import { packageTar } from '../helpers/packages.js';

let sources: SourceServer;
beforeAll(async () => {
  sources = await startSourceServer();
});
afterAll(async () => {
  await sources?.stop();
});

describe('builder limits', () => {
  it('fails a build over its time limit with ERR_BUILD_TIMEOUT, and one without enough free disk with ERR_DISK_FULL', async () => {
    const slow = await tgz(packageTar({ name: 'forever', version: '1.0.0', scripts: { install: 'node -e "setInterval(() => {}, 1000)"' } }));
    const url = sources.add('forever.tgz', slow.body);

    const timed = await startTestBuilder({ uids: TEST_UID_RANGES.limits, slots: 1, buildTimeoutMs: 4000 });
    try {
      const { id } = await timed.client.createBuild({ source: { url, sha256: slow.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'timeout' });
      const record = await timed.client.followBuild(id);
      expect(record.state).toBe('failed');
      expect(record.error?.code).toBe('ERR_BUILD_TIMEOUT');
      expect(Date.parse(record.finishedAt as string) - Date.parse(record.startedAt as string)).toBeLessThan(4000 + 5000);
    } finally {
      await timed.stop();
    }

    const full = await startTestBuilder({ uids: TEST_UID_RANGES.limits, slots: 1, minFreeDisk: Number.MAX_SAFE_INTEGER });
    try {
      const { id } = await full.client.createBuild({ source: { url, sha256: slow.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'disk' });
      const record = await full.client.followBuild(id);
      expect(record).toMatchObject({ state: 'failed', error: { code: 'ERR_DISK_FULL' } });
      expect(record.steps).toEqual([]);
    } finally {
      await full.stop();
    }
  }, 60_000);
});
