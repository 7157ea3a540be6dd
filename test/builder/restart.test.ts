import { chmod, mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBuilderClient } from '../../lib/builder/client.js';
import type { BuildRecord } from '../../lib/protocol.js';
import { TEST_UID_RANGES, childEnv, killChildBuilders, hostTargetSpec, newToken, spawnBuilder, startSourceServer, tgz, waitFor, type ChildBuilder, type SourceServer } from '../helpers/builder.js';
import { packageTar, tempDir, testCacheDir } from '../helpers/packages.js';
import { liveProcessesWith } from '../helpers/processes.js';

let root: { dir: string; remove: () => Promise<void> };
let sources: SourceServer;
const children: ChildBuilder[] = [];
const token = newToken();

beforeAll(async () => {
  root = await tempDir('bd-restart-');
  await chmod(root.dir, 0o711);
  await mkdir(path.join(root.dir, 'work'), { recursive: true });
  sources = await startSourceServer();
});
afterAll(async () => {
  await killChildBuilders(children);
  await sources?.stop();
  await root?.remove();
});

const start = async (extra: string[] = []) => {
  const child = await spawnBuilder(['--store', path.join(root.dir, 'store'), '--cache-dir', testCacheDir, '--slots', '2', ...extra], childEnv({
    BUNDLE_DISPATCH_BUILDER_TOKENS: token,
    BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work'),
    BUNDLE_DISPATCH_BUILDER_ID: 'restart-test',
    BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: `${TEST_UID_RANGES.restart.first}-${TEST_UID_RANGES.restart.last}`,
    BUNDLE_DISPATCH_BUILDER_HEARTBEAT: '1',
  }));
  children.push(child);
  return { child, client: createBuilderClient({ url: child.url, token }) };
};

/**
 * An install script that starts a grandchild and then waits forever. Both carry the package
 * name in their command lines (their pids inside the build's sandbox are not the machine's);
 * the script prints `PIDS` once both run.
 */
const slowPackage = (name: string) => tgz(packageTar({ name, version: '1.0.0', scripts: { install: `node slow.js ${name}` } }, {
  'slow.js': [
    'const { spawn } = require("child_process");',
    `const child = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)", "${name}-child"], { stdio: "ignore" });`,
    'console.log("PIDS " + process.pid + " " + child.pid);',
    'setInterval(() => {}, 1000);',
  ].join('\n'),
}));

/** The script's and its grandchild's markers, as `alive` looks for them. */
const markersOf = (name: string) => [`slow.js ${name}`, `${name}-child`];

/** A live (not zombie) process whose command line holds `marker`. */
const alive = (marker: string) => liveProcessesWith(marker).length > 0;

describe('builder restart and shutdown (the real bin as a child process)', () => {
  it('marks builds that ran when it was SIGKILLed as ERR_BUILDER_RESTARTED; finished builds and logs survive', async () => {
    const first = await start();
    const quick = await tgz(packageTar({ name: 'quick', version: '1.0.0' }, { 'index.js': '' }));
    const quickUrl = sources.add('quick.tgz', quick.body);
    const done = await first.client.createBuild({ source: { url: quickUrl, sha256: quick.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'quick' });
    const quickRecord = await first.client.followBuild(done.id);
    expect(quickRecord.state).toBe('succeeded');

    const slow = await slowPackage('slow-restart');
    const { id } = await first.client.createBuild({ source: { url: sources.add('slow-restart.tgz', slow.body), sha256: slow.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'slow' });
    await waitFor(async () => (await first.client.getLog(id)).find((candidate) => candidate.message.startsWith('PIDS ')), 60_000, 200);
    const pids = markersOf('slow-restart');
    expect(pids.every(alive)).toBe(true);
    // Let the log chunk with the PIDS line reach the store (flushed every 500 ms).
    await new Promise((resolve) => setTimeout(resolve, 800));
    first.child.child.kill('SIGKILL');
    expect((await first.child.exited).signal).toBe('SIGKILL');
    const stale = JSON.parse(await readFile(path.join(root.dir, 'store', 'builder', 'builds', id, 'record.json'), 'utf8')) as BuildRecord;
    expect(stale.state).toBe('running');

    const second = await start(['--shutdown-grace', '1']);
    const record = await second.client.getBuild(id);
    expect(record.state).toBe('failed');
    expect(record.error?.code).toBe('ERR_BUILDER_RESTARTED');
    expect(record.steps.some((step) => step.name === 'install' && step.state === 'failed')).toBe(true);
    const log = await second.client.getLog(id);
    expect(log.some((line) => line.message.startsWith('PIDS '))).toBe(true);
    expect(log.at(-1)?.message).toContain('restarted');
    // The orphans of the killed builder (npm's group, detached) were killed by the new one.
    expect(pids.some(alive)).toBe(false);
    // Nothing else was lost: the finished build, its artifact and the idempotency key.
    expect(await second.client.getBuild(done.id)).toMatchObject({ state: 'succeeded', artifact: quickRecord.artifact });
    expect(await second.client.createBuild({ source: { url: quickUrl, sha256: quick.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'quick' })).toMatchObject({ id: done.id, existing: true });
    expect((await second.client.listBuilds()).builds.map((build) => build.id)).toEqual([id, done.id]);
    // The event stream of a build from before the restart ends at once with the final record.
    expect((await second.client.followBuild(id)).state).toBe('failed');

    // SIGTERM: no new builds, the running one gets the grace period (1 s), then is cancelled and recorded.
    const slow2 = await slowPackage('slow-term');
    const term = await second.client.createBuild({ source: { url: sources.add('slow-term.tgz', slow2.body), sha256: slow2.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'term' });
    await waitFor(async () => (await second.client.getLog(term.id)).find((line) => line.message.startsWith('PIDS ')), 60_000, 200);
    second.child.child.kill('SIGTERM');
    const exit = await second.child.exited;
    expect(exit.code).toBe(0);
    const stopped = JSON.parse(await readFile(path.join(root.dir, 'store', 'builder', 'builds', term.id, 'record.json'), 'utf8')) as BuildRecord;
    expect(stopped.state).toBe('cancelled');
    expect(stopped.error?.code).toBe('ERR_BUILDER_STOPPING');
    expect(second.child.stderr()).toContain('"msg":"stopped"');
  }, 150_000);
});
