/**
 * `bundle-dispatch <input> --targets …` and `status`, spawning the real bin (run `npm run
 * build` first): the embedded default with no configuration; builder pools and s3:// stores
 * from a .bundlerc; --json parsed; exit codes 0/1/2/130; Ctrl-C mid-build.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DispatchResult } from '../../lib/dispatch/run.js';
import type { RunDocument } from '../../lib/dispatch/history.js';
import { S3Store } from '../../lib/storage/s3-store.js';
import { runCli } from '../helpers/cli.js';
import { NODE, SLOW_HOOK, startChildBuilder, writeFixture, type RunningTestBuilder } from '../helpers/dispatch.js';
import { createGunzip, gunzipSync } from 'node:zlib';
import { readTar, tempDir } from '../helpers/packages.js';
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
        'linux-x64': [{ url: a.url, tokenEnv: 'TEST_BUILDER_A_TOKEN', publicKey: a.publicKeyFile }],
        'linux-arm64': [{ url: b.url, tokenEnv: 'TEST_BUILDER_B_TOKEN', publicKey: b.publicKeyFile }],
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

  it('--gzip-level goes to the builder with each build and into the build key: the delivered .tgz is at that level, the tar inside the same', async () => {
    const cwd = path.join(root.dir, 'levels');
    await mkdir(cwd, { recursive: true });
    const fixture = await writeFixture(path.join(cwd, 'levels-1.0.0.tgz'), { name: 'levels-fixture', version: '1.0.0' }, { 'data.txt': 'the same line, again and again\n'.repeat(2000) });
    const common = [fixture, '--targets', `linux-${process.arch}@${NODE}`, '--json', '--cache-dir', path.join(root.dir, 'levels-cache')];
    const dispatchAt = async (destination: string, flags: string[]) => {
      const run = await runCli([...common, '-d', destination, ...flags], { cwd, env: { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'levels-work') } });
      expect(run.code, run.stderr).toBe(0);
      const outcome = (JSON.parse(run.stdout) as DispatchResult).targets[0];
      if (!outcome?.ok) throw new Error(run.stdout);
      return { outcome, bytes: await readFile(path.join(cwd, destination, outcome.key)) };
    };
    const fastest = await dispatchAt('fast', ['--gzip-level', '1']);
    const standard = await dispatchAt('standard', []);
    // The gzip header's XFL byte: 4 for level 1, 0 for 6 (RFC 1952).
    expect([fastest.bytes[8], standard.bytes[8]]).toEqual([4, 0]);
    expect(fastest.outcome.buildKey).not.toBe(standard.outcome.buildKey);
    expect(standard.outcome.reused).toBeUndefined();
    expect(gunzipSync(fastest.bytes).equals(gunzipSync(standard.bytes))).toBe(true);
    // The same level again is the same build: cached at its destination.
    const again = await dispatchAt('fast', ['--gzip-level', '1']);
    expect(again.outcome.buildKey).toBe(fastest.outcome.buildKey);
    expect(again.outcome.cached).toBe(true);
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
    expect(run.stderr).toContain('dispatch.concurrency: 0 must be a whole number');
    expect(run.stderr).toContain('["linux-x64"][0].url: must be an http(s) URL');
    expect(run.stderr).toContain('["linux-x64"][0].tokenEnv');
    expect(run.stderr).toContain('["linux-x64"][0].publicKey: required');
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

  /** A project on the embedded default (no pools): ./dist, the test hook, its own cache. */
  async function embeddedProject(name: string): Promise<string> {
    const dir = path.join(root.dir, name);
    await mkdir(dir, { recursive: true });
    embeddedEnv.BUNDLE_DISPATCH_WORK_DIR = path.join(root.dir, 'embedded-work');
    await writeFile(path.join(dir, '.bundlerc'), JSON.stringify({ cacheDir: path.join(root.dir, `${name}-cache`), hooks: [path.join(root.dir, 'slow-hook.mjs')] }));
    return dir;
  }
  const host = `linux-${process.arch}@${NODE}`;
  const embeddedEnv: NodeJS.ProcessEnv = {};

  it('package shapes: dev-only, optional-only, none, deps + devDeps and a shipped npm-shrinkwrap.json all build; a stale shipped one is exit 2 before upload', async () => {
    const ms = { version: '2.1.3', resolved: 'https://registry.npmjs.org/ms/-/ms-2.1.3.tgz', integrity: 'sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA==', license: 'MIT' };
    const isNumber = { version: '7.0.0', resolved: 'https://registry.npmjs.org/is-number/-/is-number-7.0.0.tgz', integrity: 'sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==', dev: true, license: 'MIT', engines: { node: '>=0.12.0' } };
    const shipped = (name: string, root: Record<string, unknown>, packages: Record<string, unknown>) => JSON.stringify({ name, version: '1.0.0', lockfileVersion: 3, requires: true, packages: { '': { name, version: '1.0.0', ...root }, ...packages } });
    const cwd = await embeddedProject('shapes');
    const shapes: Array<{ name: string; fields: Record<string, unknown>; files?: Record<string, string>; bundled: string[]; added: boolean }> = [
      { name: 'shape-dev-only', fields: { devDependencies: { ms: '2.1.3' } }, bundled: [], added: true },
      { name: 'shape-optional-only', fields: { optionalDependencies: { ms: '2.1.3' } }, bundled: ['ms'], added: true },
      { name: 'shape-none', fields: {}, bundled: [], added: true },
      { name: 'shape-deps-and-dev', fields: { dependencies: { ms: '2.1.3' }, devDependencies: { 'is-number': '7.0.0' } }, bundled: ['ms'], added: true },
      {
        name: 'shape-shipped', fields: { dependencies: { ms: '2.1.3' }, devDependencies: { 'is-number': '7.0.0' } }, bundled: ['ms'], added: false,
        files: { 'npm-shrinkwrap.json': shipped('shape-shipped', { dependencies: { ms: '2.1.3' }, devDependencies: { 'is-number': '7.0.0' } }, { 'node_modules/ms': ms, 'node_modules/is-number': isNumber }) },
      },
    ];
    {
      for (const shape of shapes) {
        const fixture = await writeFixture(path.join(root.dir, `${shape.name}-1.0.0.tgz`), { name: shape.name, version: '1.0.0', ...shape.fields }, shape.files);
        const run = await runCli([fixture, '--targets', host, '--json'], { cwd, env: embeddedEnv });
        const result = JSON.parse(run.stdout) as DispatchResult;
        const outcome = result.targets[0];
        if (!outcome?.ok) throw new Error(`${shape.name}: ${run.stdout}${run.stderr}`);
        expect(run.code).toBe(0);
        expect(result.lockfile).toMatchObject({ name: 'npm-shrinkwrap.json', added: shape.added });
        const files = await readTar(createReadStream(path.join(cwd, 'dist', outcome.key)).pipe(createGunzip()));
        const packageJson = JSON.parse(files.get('package/package.json')?.content.toString() ?? '{}') as { bundleDependencies?: string[] };
        expect(packageJson.bundleDependencies ?? [], shape.name).toEqual(shape.bundled);
        // devDependencies are recorded in the lockfile, never installed.
        expect([...files.keys()].some((name) => name.includes('node_modules/is-number')), shape.name).toBe(false);
      }
      // A shipped lockfile that does not record a devDependency: npm ci would refuse it on every
      // builder, so dispatch says so once, naming npm's cause, before anything is uploaded.
      const stale = await writeFixture(path.join(root.dir, 'shape-stale-1.0.0.tgz'), { name: 'shape-stale', version: '1.0.0', devDependencies: { ms: '2.1.3' } }, { 'npm-shrinkwrap.json': shipped('shape-stale', {}, {}) });
      const run = await runCli([stale, '--targets', host, '--json'], { cwd, env: embeddedEnv });
      expect(run.code).toBe(2);
      expect(JSON.parse(run.stdout)).toMatchObject({ error: { code: 'ERR_LOCKFILE_OUT_OF_SYNC', message: expect.stringContaining('Missing: ms@2.1.3 from lock file') } });
      expect(await readdir(path.join(cwd, 'dist')).catch(() => [])).not.toContain('shape-stale');
    }
  });

  it('ERR_NPM_FAILED carries npm\'s cause (not its usage text) in the message, --json, summary row and build record; no manifest lists no bundle', async () => {
    // The hook adds a devDependency on the builder: npm ci prints its "not in sync" error and
    // then ~90 lines of usage text.
    const fixture = await writeFixture(path.join(root.dir, 'unlocked-1.0.0.tgz'), { name: 'cli-unlocked-fixture', version: '1.0.0' }, { UNLOCK: 'yes\n' });
    const cause = 'Missing: ms@2.1.3 from lock file';
    const cwd = await embeddedProject('unlocked');
    const run = await runCli([fixture, '--targets', host, '--json'], { cwd, env: embeddedEnv });
    expect(run.code).toBe(1);
    const result = JSON.parse(run.stdout) as DispatchResult;
    const outcome = result.targets[0];
    if (!outcome || outcome.ok) throw new Error(run.stdout);
    expect(outcome.error.code).toBe('ERR_NPM_FAILED');
    expect(outcome.error.message).toContain(cause);
    expect(outcome.error.message).toContain('(EUSAGE)');
    expect(outcome.error.message).not.toContain('Usage:');
    expect(outcome.error.message).not.toContain('--install-strategy');
    // Nothing was delivered and no earlier manifest is there: none is written.
    expect(result.manifest).toBeUndefined();
    expect(await readdir(path.join(cwd, 'dist')).catch(() => [])).toEqual([]);
    const record = JSON.parse(await readFile(path.join(root.dir, 'unlocked-cache', 'dispatch', 'store', 'builder', 'builds', outcome.buildId ?? '', 'record.json'), 'utf8')) as unknown;
    expect(record).toMatchObject({ state: 'failed', error: { code: 'ERR_NPM_FAILED', message: expect.stringContaining(cause) } });
    // The summary table (no --json): the failed row is followed by npm's cause lines. The build
    // key is the same, so the builder's record of it is reused.
    const table = await runCli([fixture, '--targets', host], { cwd, env: embeddedEnv });
    expect(table.code).toBe(1);
    expect(table.stdout).toMatch(new RegExp(`FAILED\\s+ERR_NPM_FAILED: npm ci exited with code 1 \\(EUSAGE\\):\\n\\s+.*in sync.*\\n\\s+${cause}`));
  });

  it('every target failing for a bad-input reason (no Node satisfies) exits 2, not 1', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'engines-1.0.0.tgz'), { name: 'cli-engines-fixture', version: '1.0.0' });
    const run = await runCli([fixture, '--targets', `linux-${process.arch}@>=99`, '--json'], { cwd: await embeddedProject('engines'), env: embeddedEnv });
    expect(run.code).toBe(2);
    expect(JSON.parse(run.stdout)).toMatchObject({ ok: false, targets: [{ ok: false, error: { code: 'ERR_ENGINES_UNSATISFIED' } }] });
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
    // 75 (EX_TEMPFAIL): a cron job tells "another run holds the lock" from a failed build.
    expect(second?.code).toBe(75);
    expect(JSON.parse(second?.stdout ?? '{}')).toMatchObject({ error: { code: 'ERR_LOCKED' } });
  });

  it('remote pools with the default directory source store: ERR_CONFIG (exit 2) that says to use an s3:// source, not the builder\'s "no object"', async () => {
    const local = path.join(root.dir, 'local-source-project');
    await mkdir(local, { recursive: true });
    await writeFile(path.join(local, '.bundlerc'), JSON.stringify({
      cacheDir: path.join(root.dir, 'local-source-cache'),
      dispatch: { destination: path.join(local, 'dist'), pools: { 'linux-x64': [{ url: a.url, tokenEnv: 'TEST_BUILDER_A_TOKEN', publicKey: a.publicKeyFile }] } },
    }));
    const fixture = await writeFixture(path.join(root.dir, 'local-source-1.0.0.tgz'), { name: 'local-source-fixture', version: '1.0.0' });
    const run = await runCli([fixture, '--targets', `linux-x64@${NODE}`, '--json'], { cwd: local, env });
    expect(run.code).toBe(2);
    const result = JSON.parse(run.stdout) as DispatchResult;
    expect(result.targets[0]).toMatchObject({ ok: false, error: { code: 'ERR_CONFIG', message: expect.stringContaining('Set dispatch.source (or --source) to an s3:// location') } });
  });

  it('a builder killed mid-build: its build is sent to the other one, and the log, the summary and status say so (issue 16.6)', async () => {
    const hooks = path.join(root.dir, 'slow-hook.mjs');
    const [doomed, spare] = await Promise.all([
      startChildBuilder({ root: root.dir, name: 'cli-doomed', targets: ['linux-x64'], hooks }),
      startChildBuilder({ root: root.dir, name: 'cli-spare', targets: ['linux-x64'], hooks, env: { BD_TEST_IGNORE_SLOW: '1' } }),
    ]);
    try {
      const failover = path.join(root.dir, 'failover-project');
      await mkdir(failover, { recursive: true });
      await writeFile(path.join(failover, '.bundlerc'), JSON.stringify({
        cacheDir: path.join(root.dir, 'failover-cache'),
        dispatch: {
          source: 's3://sources/failover',
          destination: path.join(failover, 'dist'),
          s3: { endpoint: s3.endpoint, region: s3.region, forcePathStyle: true },
          // Equal loads keep this order: the doomed builder gets the build.
          pools: { 'linux-x64': [{ url: doomed.url, tokenEnv: 'DOOMED_TOKEN', publicKey: doomed.publicKeyFile }, { url: spare.url, tokenEnv: 'SPARE_TOKEN', publicKey: spare.publicKeyFile }] },
        },
      }));
      const fixture = await writeFixture(path.join(root.dir, 'doomed-1.0.0.tgz'), { name: 'cli-doomed-fixture', version: '1.0.0' }, { SLOW: 'yes\n' });
      const runEnv = { ...env, DOOMED_TOKEN: doomed.token, SPARE_TOKEN: spare.token };
      let killed = false;
      const run = await runCli([fixture, '--targets', `linux-x64@${NODE}`], {
        cwd: failover,
        env: runEnv,
        onStderr: (text) => {
          if (!killed && text.includes('▸ Install production dependencies')) {
            killed = true;
            doomed.child.kill('SIGKILL');
          }
        },
      });
      expect(killed).toBe(true);
      expect(run.code).toBe(0);
      const label = `linux-x64@${NODE}`;
      // The plain log: which builder, what happened, what was done.
      expect(run.stderr).toMatch(new RegExp(`\\[${label.replace(/\./g, '\\.')}\\] ! ${doomed.url}: Build \\S+ on ${doomed.url} is lost: .*Sent again to ${spare.url} as build \\S+\\.`));
      // …and its steps are announced again for the new build.
      expect(run.stderr.match(/▸ Install production dependencies/g)?.length).toBe(2);
      // The summary: a footnote under the table, and the bundle's full path.
      expect(run.stdout).toMatch(new RegExp(`notes:\\n  ${label.replace(/\./g, '\\.')}: redispatched · ${doomed.url}: Build .* lost`));
      expect(run.stdout).toContain(path.join(failover, 'dist', 'cli-doomed-fixture', '1.0.0', `cli-doomed-fixture-1.0.0-linux-x64-glibc-node${NODE.split('.')[0]}.tgz`));
      expect(run.stdout).toMatch(/ wall/);
      const runId = /run (\S+) \(bundle-dispatch status/.exec(run.stdout)?.[1];
      expect(runId).toBeDefined();
      const status = await runCli(['status', runId as string], { cwd: failover, env: runEnv });
      expect(status.code).toBe(0);
      expect(status.stdout).toContain(`! redispatched · ${doomed.url}: Build`);
      const json = JSON.parse((await runCli(['status', runId as string, '--json'], { cwd: failover, env: runEnv })).stdout) as { targets: Record<string, { failovers?: Array<{ kind: string; builder: string }> }> };
      expect(json.targets[label]?.failovers).toEqual([expect.objectContaining({ kind: 'redispatched', builder: doomed.url })]);
    } finally {
      await Promise.all([doomed.stop(), spare.stop()]);
    }
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

