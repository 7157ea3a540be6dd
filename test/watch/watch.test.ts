/**
 * `bundle-dispatch watch` end to end: the real bin, a real registry on loopback (Verdaccio)
 * that real npm publishes to, the embedded default builder, a directory destination. New
 * versions are built exactly once; a restart or a lost state rebuilds nothing; a failing version
 * backs off and is given up on with a notification; a second watcher is refused.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/packages.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { checkEntries, type CheckDeps } from '../../lib/watch/check.js';
import type { WatchState } from '../../lib/watch/state.js';

let root: { dir: string; remove: () => Promise<void> };
let registry: TestRegistry;
beforeAll(async () => {
  [root, registry] = await Promise.all([tempDir('bd-watch-'), startRegistry()]);
}, 60_000);
afterAll(async () => {
  await registry?.stop();
  await root?.remove();
});

interface CheckJson {
  entries: Array<{ input: string; newest?: string; dispatched: Array<{ version: string; runId?: string }>; published: string[]; passedOver: string[]; failed: Array<{ version: string; tries: number; gaveUp: boolean; error: string }>; backingOff: unknown[]; error?: string }>;
}

const host = `linux-${process.arch}@${process.versions.node}`;
const watch = async (args: string[], cacheDir: string, destination: string) => {
  const run = await runCli(['watch', ...args, '--targets', host, '-d', destination, '--registry', registry.url, '--cache-dir', cacheDir, '--json'], { cwd: root.dir });
  const last = run.stdout.trim().split('\n').at(-1) ?? '';
  return { ...run, json: (last.startsWith('{') ? JSON.parse(last) : undefined) as CheckJson | undefined };
};

describe('bundle-dispatch watch --once (registry)', () => {
  it('builds the newest version on the first check, then exactly each new one; a restart or a lost state rebuilds nothing', async () => {
    const cache = path.join(root.dir, 'cache-a');
    const dist = path.join(root.dir, 'dist-a');
    await registry.publish({ name: 'watched-app', version: '0.9.0' }, { 'index.js': 'module.exports = 9;\n' });
    await registry.publish({ name: 'watched-app', version: '1.0.0' }, { 'index.js': 'module.exports = 10;\n' });

    const first = await watch(['watched-app@latest', '--once'], cache, dist);
    expect(first.code, first.stderr).toBe(0);
    expect(first.json?.entries[0]).toMatchObject({ input: 'watched-app@latest', newest: '1.0.0', dispatched: [{ version: '1.0.0', runId: expect.any(String) }], failed: [] });
    expect(await readdir(path.join(dist, 'watched-app'))).toEqual(['1.0.0']);
    const files = await readdir(path.join(dist, 'watched-app', '1.0.0'));
    expect(files).toContain('manifest.json');
    expect(files.some((file) => file.endsWith('.tgz'))).toBe(true);

    await registry.publish({ name: 'watched-app', version: '1.1.0' }, { 'index.js': 'module.exports = 11;\n' });
    const second = await watch(['watched-app@latest', '--once'], cache, dist);
    expect(second.code, second.stderr).toBe(0);
    expect(second.json?.entries[0]?.dispatched.map((item) => item.version)).toEqual(['1.1.0']);

    // Run again (a restart): nothing new, nothing dispatched.
    const third = await watch(['watched-app@latest', '--once'], cache, dist);
    expect(third.json?.entries[0]).toMatchObject({ newest: '1.1.0', dispatched: [], published: [] });
    // The state lost: the destination still says 1.1.0 is done.
    await rm(path.join(cache, 'watch', 'state.json'));
    const fresh = await watch(['watched-app@latest', '--once'], cache, dist);
    expect(fresh.json?.entries[0]).toMatchObject({ dispatched: [], published: ['1.1.0'] });
    expect((await readdir(path.join(dist, 'watched-app'))).sort()).toEqual(['1.0.0', '1.1.0']);

    // Each dispatch is in the run history with the entry's label.
    const runs = await runCli(['runs', '--cache-dir', cache, '--json'], { cwd: root.dir });
    const listed = (JSON.parse(runs.stdout) as { runs: Array<{ label?: string; package?: string; state: string }> }).runs;
    expect(listed.filter((run) => run.label === 'watched-app@latest').map((run) => `${run.package} ${run.state}`).sort()).toEqual(['watched-app@1.0.0 succeeded', 'watched-app@1.1.0 succeeded']);

    // watch status says what it knows.
    const status = await runCli(['watch', 'status', '--cache-dir', cache, '--json'], { cwd: root.dir });
    expect(JSON.parse(status.stdout)).toMatchObject({ entries: [{ input: 'watched-app@latest', newest: '1.1.0', lastCheck: expect.any(String) }] });
  }, 240_000);

  it('a range: the first check builds the --backfill newest and passes over the rest', async () => {
    const cache = path.join(root.dir, 'cache-b');
    const dist = path.join(root.dir, 'dist-b');
    const run = await watch(['watched-app@>=0.9.0 <2', '--backfill', '2', '--once'], cache, dist);
    expect(run.code, run.stderr).toBe(0);
    expect(run.json?.entries[0]).toMatchObject({ passedOver: ['0.9.0'], dispatched: [{ version: '1.0.0' }, { version: '1.1.0' }] });
  }, 240_000);

  it('a failing version backs off, is given up on after --max-tries with a notification, and is not tried again', async () => {
    const cache = path.join(root.dir, 'cache-c');
    const dist = path.join(root.dir, 'dist-c');
    const notices: string[] = [];
    const hook: Server = createServer((request, response) => {
      let body = '';
      request.on('data', (chunk: Buffer) => (body += chunk.toString()));
      request.on('end', () => {
        notices.push(body);
        response.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => hook.listen(0, '127.0.0.1', resolve));
    try {
      await registry.publish({ name: 'broken-app', version: '2.0.0', scripts: { install: 'node -e "process.exit(3)"' } });
      const config = path.join(root.dir, 'watch-failing.json');
      // Back-off of a tenth of a second (×4 per failure), so the test need not wait minutes.
      await writeFile(config, JSON.stringify({ watch: { retryDelay: 0.1 } }));
      const args = ['broken-app@latest', '--once', '--max-tries', '2', '--config', config, '--notify', `http://127.0.0.1:${(hook.address() as AddressInfo).port}/`];
      const one = await watch(args, cache, dist);
      expect(one.code).toBe(1);
      expect(one.json?.entries[0]?.failed).toEqual([{ version: '2.0.0', tries: 1, gaveUp: false, nextAt: expect.any(String), error: expect.stringContaining('ERR_NPM_FAILED') }]);
      await new Promise((resolve) => setTimeout(resolve, 300));
      const two = await watch(args, cache, dist);
      expect(two.code).toBe(1);
      expect(two.json?.entries[0]?.failed).toMatchObject([{ version: '2.0.0', tries: 2, gaveUp: true }]);
      const gaveUp = notices.map((text) => JSON.parse(text) as { event?: string }).filter((notice) => notice.event === 'watch.gave-up');
      expect(gaveUp).toEqual([{ event: 'watch.gave-up', input: 'broken-app@latest', version: '2.0.0', tries: 2, error: expect.stringContaining('ERR_NPM_FAILED') }]);
      // Given up: checked, never dispatched again; the status says so.
      const three = await watch(args, cache, dist);
      expect(three.code).toBe(0);
      expect(three.json?.entries[0]).toMatchObject({ dispatched: [], failed: [] });
      const status = JSON.parse((await runCli(['watch', 'status', '--cache-dir', cache, '--json'], { cwd: root.dir })).stdout) as { entries: Array<{ failing: Array<{ version: string; gaveUp?: boolean; tries: number }> }> };
      expect(status.entries[0]?.failing).toMatchObject([{ version: '2.0.0', tries: 2, gaveUp: true }]);
    } finally {
      hook.closeAllConnections();
      await new Promise<void>((resolve) => hook.close(() => resolve()));
    }
  }, 240_000);

  it('a second watcher on the same state is refused (exit 75); a package that is not there is a failed check, not a crash', async () => {
    const cache = path.join(root.dir, 'cache-d');
    await mkdir(path.join(cache, 'watch'), { recursive: true });
    // A live holder: this test process.
    await writeFile(path.join(cache, 'watch', 'lock'), JSON.stringify({ pid: process.pid, host: (await import('node:os')).hostname(), runId: 'watch-other', since: new Date().toISOString() }));
    const locked = await watch(['watched-app@latest', '--once'], cache, path.join(root.dir, 'dist-d'));
    expect(locked.code).toBe(75);
    expect(JSON.parse(locked.stdout)).toMatchObject({ error: { code: 'ERR_LOCKED' } });
    await rm(path.join(cache, 'watch', 'lock'));
    const missing = await watch(['no-such-package-here@latest', '--once'], cache, path.join(root.dir, 'dist-d'));
    expect(missing.code).toBe(1);
    expect(missing.json?.entries[0]?.error).toMatch(/E404|not found/i);
    expect(missing.stderr).not.toMatch(/\n\s+at /);
  }, 120_000);
});

describe('the rules of a check (the registry, destination and dispatch as functions)', () => {
  const deps = (versions: string[], calls: string[], fail: Set<string> = new Set()): CheckDeps => ({
    now: () => new Date('2026-12-07T12:00:00Z'),
    candidates: async () => versions,
    published: async () => false,
    dispatch: async (_entry, version) => {
      calls.push(version);
      return fail.has(version) ? { ok: false, error: 'boom' } : { ok: true, runId: `run-${version}` };
    },
    save: async () => undefined,
  });
  const options = { backfill: 1, maxTries: 3, retryBaseMs: 300_000 };

  it('a version that fails waits 5 min, then 20, then is given up on; one that succeeds later is cleared', async () => {
    const state: WatchState = { version: 1, entries: {} };
    const calls: string[] = [];
    const entry = { input: 'a@latest' };
    const first = await checkEntries([entry], state, deps(['1.0.0'], calls, new Set(['1.0.0'])), options);
    expect(first.reports[0]?.failed).toEqual([{ version: '1.0.0', error: 'boom', tries: 1, gaveUp: false, nextAt: '2026-12-07T12:05:00.000Z' }]);
    // Before the back-off ends: not tried.
    const waiting = await checkEntries([entry], state, deps(['1.0.0'], calls, new Set(['1.0.0'])), options);
    expect(waiting.reports[0]?.backingOff).toEqual([{ version: '1.0.0', nextAt: '2026-12-07T12:05:00.000Z' }]);
    expect(calls).toEqual(['1.0.0']);
    const later = (minutes: number): CheckDeps => ({ ...deps(['1.0.0'], calls, new Set(['1.0.0'])), now: () => new Date(Date.parse('2026-12-07T12:00:00Z') + minutes * 60_000) });
    const second = await checkEntries([entry], state, later(6), options);
    expect(second.reports[0]?.failed[0]).toMatchObject({ tries: 2, nextAt: '2026-12-07T12:26:00.000Z' });
    const third = await checkEntries([entry], state, later(30), options);
    expect(third.reports[0]?.failed[0]).toMatchObject({ tries: 3, gaveUp: true });
    await checkEntries([entry], state, later(60 * 24 * 3), options);
    expect(calls).toEqual(['1.0.0', '1.0.0', '1.0.0']);
  });

  it('a moving tag: each version it points at is built once; a tag moved back to a built version builds nothing', async () => {
    const state: WatchState = { version: 1, entries: {} };
    const calls: string[] = [];
    const entry = { input: 'a@next' };
    for (const tagged of ['2.0.0-rc.1', '2.0.0-rc.2', '2.0.0-rc.1']) await checkEntries([entry], state, deps([tagged], calls), options);
    expect(calls).toEqual(['2.0.0-rc.1', '2.0.0-rc.2']);
  });
});
