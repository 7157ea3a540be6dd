/**
 * `bundle-dispatch <input> --targets …` and `status`, spawning the real bin (run `npm run
 * build` first): the embedded default with no configuration; builder pools and s3:// stores
 * from a .bundlerc; --json parsed; exit codes 0/1/2/130; Ctrl-C mid-build.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DispatchResult } from '../../lib/dispatch/run.js';
import type { RunDocument } from '../../lib/dispatch/history.js';
import { S3Store } from '../../lib/storage/s3-store.js';
import { runCli } from '../helpers/cli.js';
import { NODE, SLOW_HOOK, startChildBuilder, writeFixture, type RunningTestBuilder } from '../helpers/dispatch.js';
import { tempDir } from '../helpers/packages.js';
import { startS3, type S3TestServer } from '../helpers/s3.js';

let root: { dir: string; remove: () => Promise<void> };
let s3: S3TestServer;
let a: RunningTestBuilder;
let b: RunningTestBuilder;
let project: string;
let env: NodeJS.ProcessEnv;
let sources: S3Store;

beforeAll(async () => {
  root = await tempDir('bd-cli-dispatch-');
  s3 = await startS3({ buckets: ['sources', 'releases'] });
  const hooks = path.join(root.dir, 'slow-hook.mjs');
  await writeFile(hooks, SLOW_HOOK);
  [a, b] = await Promise.all([
    startChildBuilder({ root: root.dir, name: 'cli-builder-a', targets: ['linux-x64'], hooks }),
    startChildBuilder({ root: root.dir, name: 'cli-builder-b', targets: ['linux-arm64'], hooks }),
  ]);
  project = path.join(root.dir, 'project');
  await mkdir(project, { recursive: true });
  await writeFile(path.join(project, '.bundlerc'), JSON.stringify({
    cacheDir: path.join(root.dir, 'cache'),
    dispatch: {
      source: 's3://sources/src',
      destination: 's3://releases/bundles',
      s3: { endpoint: s3.endpoint, region: s3.region, forcePathStyle: true },
      pools: {
        'linux-x64': [{ url: a.url, tokenEnv: 'TEST_BUILDER_A_TOKEN' }],
        'linux-arm64': [{ url: b.url, tokenEnv: 'TEST_BUILDER_B_TOKEN' }],
      },
    },
  }));
  // The dispatching side holds the bucket credentials; the builders never see them.
  env = { AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey, TEST_BUILDER_A_TOKEN: a.token, TEST_BUILDER_B_TOKEN: b.token };
  sources = new S3Store({ ...s3.storeOptions, bucket: 'sources', prefix: 'src' });
});
afterAll(async () => {
  sources?.close();
  await Promise.all([a?.stop(), b?.stop()]);
  await s3?.stop();
  await root?.remove();
});

describe('bundle-dispatch <input>', () => {
  it('no configuration: the embedded default builds for this machine into ./dist; --json is one document', async () => {
    const cwd = path.join(root.dir, 'fresh');
    await mkdir(cwd, { recursive: true });
    const fixture = await writeFixture(path.join(cwd, 'embedded-1.0.0.tgz'), { name: '@acme/embedded-fixture', version: '1.0.0' });
    const run = await runCli([fixture, '--targets', `linux-${process.arch}@${NODE}`, '--json', '--cache-dir', path.join(root.dir, 'embedded-cache')], { cwd, env: { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'embedded-work') } });
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout) as DispatchResult;
    const outcome = result.targets[0];
    if (!outcome?.ok) throw new Error(run.stdout);
    expect(outcome.key).toBe(`@acme/embedded-fixture/1.0.0/acme-embedded-fixture-1.0.0-linux-${process.arch}-glibc-node${NODE.split('.')[0]}.tgz`);
    const bytes = await readFile(path.join(cwd, 'dist', outcome.key));
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(outcome.sha256);
    expect(JSON.parse(await readFile(path.join(cwd, 'dist', '@acme/embedded-fixture/1.0.0/manifest.json'), 'utf8'))).toMatchObject({ name: '@acme/embedded-fixture', targets: { [`linux-${process.arch}@${NODE}`]: { ok: true } } });
    expect(outcome.reused).toBeUndefined();

    // Another destination, same cache: the embedded builder (its store is in the cache) still
    // holds the finished build of that key, so its result is delivered without a new build, and
    // the output says so instead of replaying the earlier build's steps.
    const again = await runCli([fixture, '--targets', `linux-${process.arch}@${NODE}`, '-d', 'elsewhere', '--cache-dir', path.join(root.dir, 'embedded-cache')], { cwd, env: { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'embedded-work') } });
    expect(again.code).toBe(0);
    expect(again.stderr).toContain(`reusing a finished build (build ${outcome.buildId})`);
    expect(again.stderr).not.toContain('▸');
    expect(again.stdout).toMatch(new RegExp(`linux-${process.arch}@\\S+\\s+reused\\s`));
    const elsewhere = JSON.parse(await readFile(path.join(cwd, 'elsewhere', '@acme/embedded-fixture/1.0.0/manifest.json'), 'utf8')) as { targets: Record<string, { buildId: string; reused?: boolean; sha256: string }> };
    expect(elsewhere.targets[`linux-${process.arch}@${NODE}`]).toMatchObject({ buildId: outcome.buildId, reused: true, sha256: outcome.sha256 });
    expect(createHash('sha256').update(await readFile(path.join(cwd, 'elsewhere', outcome.key))).digest('hex')).toBe(outcome.sha256);
  });

  it('an unknown target is a usage error listing the configured targets, before anything is uploaded', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'unknown-1.0.0.tgz'), { name: 'unknown-fixture', version: '1.0.0' });
    const run = await runCli([fixture, '--targets', 'linux-x64,darwin-arm64'], { cwd: project, env });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('ERR_TARGET_UNSUPPORTED');
    expect(run.stderr).toContain('Configured targets: linux-x64, linux-arm64');
    expect((await sources.list()).items).toEqual([]);
  });

  it('a package name that would escape the destination is ERR_PACKAGE_INVALID (exit 2) before anything is uploaded, not ERR_CONFIG from the key template (issue 15.4)', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'escape-1.0.0.tgz'), { name: '../../x', version: '1.0.0' });
    const run = await runCli([fixture, '--targets', 'linux-x64', '--json'], { cwd: project, env });
    expect(run.code, run.stderr).toBe(2);
    expect((JSON.parse(run.stdout) as { error: { code: string } }).error.code).toBe('ERR_PACKAGE_INVALID');
    expect((await sources.list()).items).toEqual([]);
  });

  it('invalid configuration lists every problem with its key path (exit 2)', async () => {
    const bad = path.join(root.dir, 'bad-config');
    await mkdir(bad, { recursive: true });
    await writeFile(path.join(bad, '.bundlerc'), JSON.stringify({ dispatch: { concurrency: 0, pools: { 'linux-x64': [{ url: 'ftp://x', tokenEnv: 'not a name' }] } } }));
    const run = await runCli(['x.tgz', '--targets', 'linux-x64'], { cwd: bad });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('dispatch.concurrency: must be a whole number');
    expect(run.stderr).toContain('["linux-x64"][0].url: must be an http(s) URL');
    expect(run.stderr).toContain('["linux-x64"][0].tokenEnv');
  });

  it('pools and s3:// stores from .bundlerc: two targets on two builders; status <run-id> shows the run', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'pools-1.0.0.tgz'), { name: 'pools-fixture', version: '1.0.0' });
    const run = await runCli([fixture, '--targets', `linux-x64@${NODE},linux-arm64@${NODE}`, '--json'], { cwd: project, env });
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout) as DispatchResult;
    expect(result.targets.map((outcome) => outcome.ok)).toEqual([true, true]);
    expect(result.manifest).toBe('pools-fixture/1.0.0/manifest.json');
    const status = await runCli(['status', result.runId, '--json'], { cwd: project, env });
    expect(status.code).toBe(0);
    const doc = JSON.parse(status.stdout) as RunDocument;
    expect(doc.state).toBe('finished');
    expect(Object.values(doc.targets).map((entry) => entry.state)).toEqual(['succeeded', 'succeeded']);
    // A second run is a cache hit, shown as such in the table.
    const again = await runCli([fixture, '--targets', `linux-x64@${NODE},linux-arm64@${NODE}`], { cwd: project, env });
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/linux-x64@\S+\s+cached/);
  });

  it('one target failing exits 1 and the other is delivered; --notify gets the summary', async () => {
    const received: string[] = [];
    const hook = createServer((request, response) => {
      let body = '';
      request.on('data', (chunk: Buffer) => {
        body += chunk.toString();
      });
      request.on('end', () => {
        received.push(body);
        response.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => hook.listen(0, '127.0.0.1', resolve));
    try {
      const fixture = await writeFixture(path.join(root.dir, 'partial-1.0.0.tgz'), { name: 'cli-partial-fixture', version: '1.0.0' });
      const notify = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/hook`;
      const run = await runCli([fixture, '--targets', `linux-x64@${NODE},linux-arm64@>=99`, '--json', '--notify', notify], { cwd: project, env });
      expect(run.code).toBe(1);
      const result = JSON.parse(run.stdout) as DispatchResult;
      expect(result.targets.map((outcome) => outcome.ok)).toEqual([true, false]);
      expect(received).toHaveLength(1);
      expect(JSON.parse(received[0] ?? '{}')).toMatchObject({ runId: result.runId, ok: false });
    } finally {
      hook.closeAllConnections();
      await new Promise<void>((resolve) => hook.close(() => resolve()));
    }
  });

  it('an overlapping run on the same destination + input stops with ERR_LOCKED; SIGTERM stops the first (exit 130)', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'locked-1.0.0.tgz'), { name: 'cli-locked-fixture', version: '1.0.0' }, { SLOW: 'yes\n' });
    let second: Awaited<ReturnType<typeof runCli>> | undefined;
    let started = false;
    const first = await runCli([fixture, '--targets', `linux-x64@${NODE}`], {
      cwd: project,
      env,
      onStderr: (text, child) => {
        if (started || !text.includes('▸ Install production dependencies')) return;
        started = true;
        void runCli([fixture, '--targets', `linux-x64@${NODE}`, '--json'], { cwd: project, env }).then((run) => {
          second = run;
          child.kill('SIGTERM');
        });
      },
    });
    expect(first.code).toBe(130);
    expect(second?.code).toBe(1);
    expect(JSON.parse(second?.stdout ?? '{}')).toMatchObject({ error: { code: 'ERR_LOCKED' } });
  });

  it('Ctrl-C mid-build cancels every remote build and exits 130', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'slow-1.0.0.tgz'), { name: 'cli-slow-fixture', version: '1.0.0' }, { SLOW: 'yes\n' });
    let sent = false;
    const run = await runCli([fixture, '--targets', `linux-x64@${NODE},linux-arm64@${NODE}`], {
      cwd: project,
      env,
      onStderr: (text, child) => {
        if (!sent && (text.match(/▸ Install production dependencies/g) ?? []).length === 2) {
          sent = true;
          child.kill('SIGINT');
        }
      },
    });
    expect(sent).toBe(true);
    expect(run.code).toBe(130);
    for (const builder of [a, b]) {
      const { builds } = await builder.client.listBuilds({ limit: 10 });
      expect(builds.filter((build) => build.state === 'running' || build.state === 'queued')).toEqual([]);
      expect(builds[0]?.state).toBe('cancelled');
    }
    expect((await sources.list({ prefix: 'staging/' })).items).toEqual([]);
  });
});

