/**
 * The operator's commands over the local run history, spawning the real bin (run `npm run
 * build` first) against real dispatch runs: on the embedded default, and on a builder service
 * (the real bin as a child process) with s3rver as the source store. `runs`, `logs` (from the
 * builder, and from the local copy once the builder is gone; --follow), `cancel` from another
 * process (a live run, on a builder and on the embedded default; a run whose process was
 * killed), `prune` (old runs, sources and builds go; what a manifest points at and what a
 * running run needs stay), and `status` with `--cache-dir`.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CancelledBuild, RunSummary, TargetLog } from '../../lib/cli/runs.js';
import { readRun, type RunDocument } from '../../lib/dispatch/history.js';
import { waitFor } from '../helpers/builder.js';
import { runCli } from '../helpers/cli.js';
import { NODE, SLOW_HOOK, startChildBuilder, writeFixture, type RunningTestBuilder } from '../helpers/dispatch.js';
import { tempDir } from '../helpers/packages.js';
import { startS3, type S3TestServer } from '../helpers/s3.js';

let root: { dir: string; remove: () => Promise<void> };
/** A directory with a .bundlerc naming the cache dir and the slow hook (the embedded default). */
let project: string;
/** Anywhere else: no .bundlerc, so only --cache-dir finds the history. */
let elsewhere: string;
let cacheDir: string;
let env: NodeJS.ProcessEnv;
const host = `linux-${process.arch}@${NODE}`;
/** A project whose .bundlerc names a builder pool for linux-x64 and an s3:// source store. */
let pooled: string;
let pooledEnv: NodeJS.ProcessEnv;
let s3: S3TestServer;
let builder: RunningTestBuilder;
let hooks: string;
const x64 = `linux-x64@${NODE}`;

/** A project dispatching linux-x64 to `member` (token in $TEST_RUNS_BUILDER_TOKEN), sources on s3rver, the shared cache dir. */
async function pooledProject(name: string, member: RunningTestBuilder): Promise<{ cwd: string; env: NodeJS.ProcessEnv }> {
  const cwd = path.join(root.dir, name);
  await mkdir(cwd, { recursive: true });
  await writeFile(path.join(cwd, '.bundlerc'), JSON.stringify({
    cacheDir,
    dispatch: {
      source: 's3://sources/src',
      s3: { endpoint: s3.endpoint, region: s3.region, forcePathStyle: true },
      pools: { 'linux-x64': [{ url: member.url, tokenEnv: 'TEST_RUNS_BUILDER_TOKEN', publicKey: member.publicKeyFile }] },
    },
  }));
  return { cwd, env: { ...env, AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey, TEST_RUNS_BUILDER_TOKEN: member.token } };
}

beforeAll(async () => {
  root = await tempDir('bd-cli-runs-');
  cacheDir = path.join(root.dir, 'cache');
  project = path.join(root.dir, 'project');
  elsewhere = path.join(root.dir, 'elsewhere');
  await Promise.all([mkdir(project, { recursive: true }), mkdir(elsewhere, { recursive: true })]);
  hooks = path.join(root.dir, 'slow-hook.mjs');
  await writeFile(hooks, SLOW_HOOK);
  await writeFile(path.join(project, '.bundlerc'), JSON.stringify({ cacheDir, hooks: [hooks] }));
  env = { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') };

  s3 = await startS3({ buckets: ['sources'] });
  builder = await startChildBuilder({ root: root.dir, name: 'runs-builder', targets: ['linux-x64'], hooks });
  ({ cwd: pooled, env: pooledEnv } = await pooledProject('pooled', builder));
});
afterAll(async () => {
  await builder?.stop();
  await s3?.stop();
  await root?.remove();
});

/**
 * Dispatches `fixture` (with a SLOW file: its npm step sleeps) and calls `whileInstalling` with
 * the run's id once its install step has started; resolves with the dispatch's outcome and what
 * whileInstalling returned.
 */
async function dispatchAndWhileInstalling<T>(args: string[], options: { cwd: string; env: NodeJS.ProcessEnv }, whileInstalling: (runId: string, child: ChildProcess) => Promise<T>, inCache = cacheDir): Promise<{ run: Awaited<ReturnType<typeof runCli>>; during: T | undefined }> {
  let during: Promise<T> | undefined;
  const run = await runCli(args, {
    ...options,
    onStderr: (text, child) => {
      if (during || !text.includes('▸ Install production dependencies')) return;
      during = (async () => {
        // The run is found as an operator would: the running one in the history.
        const running = parse<{ runs: RunSummary[] }>(await runCli(['runs', '--state', 'running', '--json', '--cache-dir', inCache], { cwd: elsewhere, env }));
        expect(running.runs).toHaveLength(1);
        return whileInstalling(running.runs[0]?.runId ?? '', child);
      })();
      during.catch(() => child.kill('SIGKILL'));
    },
  });
  return { run, during: await during };
}

function parse<T>(run: { stdout: string; stderr: string }): T {
  try {
    return JSON.parse(run.stdout) as T;
  } catch {
    throw new Error(`not JSON: ${run.stdout}\n${run.stderr}`);
  }
}

describe('bundle-dispatch runs', () => {
  it('lists runs newest first with package, targets, duration and label; --state and --limit; status and runs take --cache-dir', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'runs-1.0.0.tgz'), { name: 'runs-fixture', version: '1.0.0' });
    const delivered = await runCli([fixture, '--targets', host, '--label', 'cron nightly', '--json'], { cwd: project, env });
    expect(delivered.code, delivered.stderr).toBe(0);
    const first = parse<{ runId: string }>(delivered).runId;
    // No Node satisfies >=99: the target fails (exit 2), the run is still recorded.
    const failed = await runCli([fixture, '--targets', `linux-${process.arch}@>=99`, '--json'], { cwd: project, env });
    expect(failed.code, failed.stderr).toBe(2);
    const second = parse<{ runId: string }>(failed).runId;

    const all = await runCli(['runs', '--json', '--cache-dir', cacheDir], { cwd: elsewhere, env });
    expect(all.code, all.stderr).toBe(0);
    const { runs } = parse<{ runs: RunSummary[] }>(all);
    expect(runs.map((run) => run.runId)).toEqual([second, first]);
    expect(runs[0]).toMatchObject({ state: 'failed', package: 'runs-fixture@1.0.0', targets: { ok: 0, failed: 1, cancelled: 0, pending: 0 } });
    expect(runs[1]).toMatchObject({ state: 'succeeded', package: 'runs-fixture@1.0.0', label: 'cron nightly', targets: { ok: 1, failed: 0 }, finishedAt: expect.any(String) });
    expect(runs[1]?.durationMs).toBeGreaterThan(0);

    const succeeded = parse<{ runs: RunSummary[] }>(await runCli(['runs', '--state', 'succeeded', '--json', '--cache-dir', cacheDir], { cwd: elsewhere, env }));
    expect(succeeded.runs.map((run) => run.runId)).toEqual([first]);
    const newest = parse<{ runs: RunSummary[] }>(await runCli(['runs', '--limit', '1', '--json'], { cwd: project, env }));
    expect(newest.runs.map((run) => run.runId)).toEqual([second]);

    const text = await runCli(['runs', '--cache-dir', cacheDir], { cwd: elsewhere, env });
    expect(text.code).toBe(0);
    const [header, ...rows] = text.stdout.trimEnd().split('\n');
    expect(header).toMatch(/^RUN\s+PACKAGE\s+STARTED\s+TARGETS\s+DURATION\s+STATE\s+LABEL$/);
    expect(rows[0]).toMatch(new RegExp(`^${second}\\s+runs-fixture@1\\.0\\.0\\s+just now\\s+1 failed\\s+\\S+ m?s\\s+failed$`));
    expect(rows[1]).toMatch(new RegExp(`^${first}\\s+runs-fixture@1\\.0\\.0\\s+just now\\s+1 ok\\s+\\S+ m?s\\s+succeeded\\s+cron nightly$`));

    // Unknown state: a usage error. Unknown cache dir: no runs, exit 0.
    expect((await runCli(['runs', '--state', 'done'], { cwd: elsewhere, env })).code).toBe(2);
    const empty = await runCli(['runs', '--cache-dir', path.join(root.dir, 'no-cache')], { cwd: elsewhere, env });
    expect(empty.code).toBe(0);
    expect(empty.stderr).toContain('No runs in');

    // status reads the same history with --cache-dir (it refused the flag before).
    const status = await runCli(['status', first, '--json', '--cache-dir', cacheDir], { cwd: elsewhere, env });
    expect(status.code, status.stderr).toBe(0);
    expect(parse<RunDocument>(status)).toMatchObject({ runId: first, state: 'finished', package: { name: 'runs-fixture', version: '1.0.0' }, label: 'cron nightly' });
  });
});

describe('bundle-dispatch logs', () => {
  it('the embedded default: each target\'s log from the local copy, prefixed by target; --target by label or platform', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'logs-1.0.0.tgz'), { name: 'logs-fixture', version: '1.0.0' });
    const run = await runCli([fixture, '--targets', `${host},linux-arm64@${NODE}`, '--json'], { cwd: project, env });
    expect(run.code, run.stderr).toBe(0);
    const { runId } = parse<{ runId: string }>(run);

    const json = await runCli(['logs', runId, '--json', '--cache-dir', cacheDir], { cwd: elsewhere, env });
    expect(json.code, json.stderr).toBe(0);
    const { targets } = parse<{ targets: TargetLog[] }>(json);
    expect(targets.map((log) => [log.target, log.source])).toEqual([[host, 'local'], [`linux-arm64@${NODE}`, 'local']]);
    for (const log of targets) {
      expect(log.lines.map((line) => line.step)).toEqual(expect.arrayContaining(['runtime', 'install', 'verify']));
      expect(log.lines.some((line) => line.message.includes('logs-fixture-1.0.0-linux-'))).toBe(true);
    }

    const text = await runCli(['logs', runId, '--target', 'linux-arm64'], { cwd: project, env });
    expect(text.code, text.stderr).toBe(0);
    const lines = text.stdout.trimEnd().split('\n');
    expect(lines.length).toBe(targets[1]?.lines.length);
    expect(lines.every((line) => line.startsWith(`[linux-arm64@${NODE}] `))).toBe(true);
    expect(text.stdout).toContain(`[linux-arm64@${NODE}] install: npm ci`);

    const unknown = await runCli(['logs', runId, '--target', 'darwin-arm64', '--json'], { cwd: project, env });
    expect(unknown.code).toBe(2);
    expect(parse<{ error: { code: string; hint: string } }>(unknown).error).toMatchObject({ code: 'ERR_USAGE', hint: expect.stringContaining(`linux-arm64@${NODE}`) });
    const noRun = await runCli(['logs', '20200101T000000Z-00000000'], { cwd: project, env });
    expect(noRun.code).toBe(2);
    expect(noRun.stderr).toContain(`Recent runs: ${runId}`);
  });

  it('a builder pool: the log from the builder while it answers, the local copy once it is gone', async () => {
    const member = await startChildBuilder({ root: root.dir, name: 'runs-builder-gone', targets: ['linux-x64'], hooks });
    try {
      const { cwd, env: memberEnv } = await pooledProject('gone', member);
      const fixture = await writeFixture(path.join(root.dir, 'remote-logs-1.0.0.tgz'), { name: 'remote-logs-fixture', version: '1.0.0' });
      const run = await runCli([fixture, '--targets', x64, '--json'], { cwd, env: memberEnv });
      expect(run.code, run.stderr).toBe(0);
      const { runId } = parse<{ runId: string }>(run);
      const fromBuilder = await runCli(['logs', runId, '--json'], { cwd, env: memberEnv });
      expect(fromBuilder.code, fromBuilder.stderr).toBe(0);
      const [remote] = parse<{ targets: TargetLog[] }>(fromBuilder).targets;
      expect(remote).toMatchObject({ target: x64, source: 'builder' });
      expect(remote?.lines.some((line) => line.step === 'install')).toBe(true);

      // The builder is gone: the dispatching process kept the same lines, and says why it shows them.
      await member.stop();
      const gone = await runCli(['logs', runId], { cwd, env: memberEnv });
      expect(gone.code, gone.stderr).toBe(0);
      expect(gone.stderr).toContain(`[${x64}] (build `);
      expect(gone.stderr).toContain(member.url);
      const local = parse<{ targets: TargetLog[] }>(await runCli(['logs', runId, '--json'], { cwd, env: memberEnv })).targets[0];
      expect(local).toMatchObject({ target: x64, source: 'local', note: expect.stringContaining('the local copy instead') });
      expect(local?.lines).toEqual(remote?.lines);
      expect(gone.stdout.trimEnd().split('\n')).toEqual(remote?.lines.map((line) => `[${x64}] ${line.step}: ${line.message}`));
    } finally {
      await member.stop();
    }
  });
});

describe('bundle-dispatch cancel', () => {
  interface CancelAnswer { runId: string; cancelled: boolean; state: string; targets: Record<string, { state: string }>; builds: CancelledBuild[] }

  it('from another process, on a builder pool: the dispatch exits 130, the run is cancelled, so is its build; logs --follow ends with it', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'cancel-remote-1.0.0.tgz'), { name: 'cancel-remote-fixture', version: '1.0.0' }, { SLOW: 'yes\n' });
    const { run, during } = await dispatchAndWhileInstalling([fixture, '--targets', x64], { cwd: pooled, env: pooledEnv }, async (runId) => {
      const follow = runCli(['logs', runId, '--follow', '--cache-dir', cacheDir], { cwd: elsewhere, env });
      const cancel = await runCli(['cancel', runId, '--json', '--cache-dir', cacheDir], { cwd: elsewhere, env });
      return { runId, cancel, follow: await follow };
    });
    expect(run.code, run.stderr).toBe(130);
    if (!during) throw new Error(`the install step never started:\n${run.stderr}`);
    expect(during.cancel.code, during.cancel.stderr).toBe(0);
    expect(parse<CancelAnswer>(during.cancel)).toMatchObject({ runId: during.runId, cancelled: true, state: 'cancelled' });
    // The follower saw the lines up to the cancelled install and stopped when the run did.
    expect(during.follow.code, during.follow.stderr).toBe(0);
    expect(during.follow.stdout).toContain(`[${x64}] install: `);

    const status = await runCli(['status', during.runId, '--json', '--exit-status'], { cwd: pooled, env: pooledEnv });
    expect(status.code).toBe(130);
    const doc = parse<RunDocument>(status);
    expect(doc).toMatchObject({ state: 'cancelled', cancel: { pid: expect.any(Number), at: expect.any(String) }, targets: { [x64]: { state: 'cancelled', builderUrl: builder.url } } });
    const buildId = doc.targets[x64]?.buildId ?? '';
    expect((await builder.client.getBuild(buildId)).state).toBe('cancelled');
    expect(parse<{ runs: RunSummary[] }>(await runCli(['runs', '--state', 'cancelled', '--json'], { cwd: pooled, env: pooledEnv })).runs.map((entry) => entry.runId)).toContain(during.runId);

    // Cancelling it again: nothing to do, exit 0.
    const again = await runCli(['cancel', during.runId, '--json', '--cache-dir', cacheDir], { cwd: elsewhere, env });
    expect(again.code).toBe(0);
    // The same fields as any answer, as docs/dispatch.md lists them: targets too.
    expect(parse<CancelAnswer>(again)).toMatchObject({ cancelled: false, state: 'cancelled', targets: { [x64]: { state: 'cancelled' } }, builds: [] });
  });

  it('on the embedded default: the dispatching process cancels its in-process build and exits 130; status followed the running run to that end', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'cancel-embedded-1.0.0.tgz'), { name: 'cancel-embedded-fixture', version: '1.0.0' }, { SLOW: 'yes\n' });
    const { run, during } = await dispatchAndWhileInstalling([fixture, '--targets', host], { cwd: project, env }, async (runId) => {
      // Shown once: it says the run is still running; --exit-status gives that its own code (8).
      const snapshot = await runCli(['status', runId, '--no-follow', '--exit-status', '--cache-dir', cacheDir], { cwd: elsewhere, env });
      // Followed (gh run watch): it ends when the run does.
      const following = runCli(['status', runId, '--exit-status', '--cache-dir', cacheDir], { cwd: elsewhere, env });
      await new Promise((resolve) => setTimeout(resolve, 1000));
      return { runId, snapshot, cancel: await runCli(['cancel', runId, '--cache-dir', cacheDir], { cwd: elsewhere, env }), followed: await following };
    });
    expect(run.code, run.stderr).toBe(130);
    if (!during) throw new Error(`the install step never started:\n${run.stderr}`);
    expect(during.snapshot.code, during.snapshot.stderr).toBe(8);
    expect(during.snapshot.stdout).toMatch(new RegExp(`run ${during.runId} · running · [^]*still running \\(pid \\d+\\)`));
    expect(during.followed.code, during.followed.stderr).toBe(130);
    expect(during.followed.stdout).toContain(`run ${during.runId} · running (pid`);
    expect(during.followed.stdout).toMatch(new RegExp(`\\[${host.replace(/[.]/g, '\\.')}\\] building[^]*\\[${host.replace(/[.]/g, '\\.')}\\] cancelled[^]*run ${during.runId} · cancelled`));
    // Without --exit-status: 0 once shown (gh's convention), whatever the outcome.
    expect((await runCli(['status', during.runId, '--cache-dir', cacheDir], { cwd: elsewhere, env })).code).toBe(0);
    expect(during.cancel.code, during.cancel.stderr).toBe(0);
    expect(during.cancel.stdout).toContain(`✔ run ${during.runId} cancelled`);
    expect(during.cancel.stdout).toMatch(new RegExp(`\\[${host.replace(/[.]/g, '\\.')}\\] cancelled \\(build \\S+\\)`));
    const doc = JSON.parse(await readFile(path.join(cacheDir, 'dispatch', 'runs', `${during.runId}.json`), 'utf8')) as RunDocument;
    expect(doc.state).toBe('cancelled');
    const buildId = doc.targets[host]?.buildId ?? '';
    // The embedded builder's record, in its store under the cache dir.
    const record = JSON.parse(await readFile(path.join(cacheDir, 'dispatch', 'store', 'builder', 'builds', buildId, 'record.json'), 'utf8')) as { state: string };
    expect(record.state).toBe('cancelled');
  });

  it('a run whose dispatching process was killed: its remote build is cancelled on the builder and the run marked cancelled', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'cancel-orphan-1.0.0.tgz'), { name: 'cancel-orphan-fixture', version: '1.0.0' }, { SLOW: 'yes\n' });
    const { run, during } = await dispatchAndWhileInstalling([fixture, '--targets', x64], { cwd: pooled, env: pooledEnv }, async (runId, child) => {
      // Once the history has recorded the build id, the dispatcher is killed outright.
      await waitFor(async () => (await readRun(path.join(cacheDir, 'dispatch', 'runs'), runId))?.targets[x64]?.buildId);
      child.kill('SIGKILL');
      return runId;
    });
    expect(run.code).toBe(null);
    const runId = during ?? '';
    const before = JSON.parse(await readFile(path.join(cacheDir, 'dispatch', 'runs', `${runId}.json`), 'utf8')) as RunDocument;
    expect(before.state).toBe('running');
    const buildId = before.targets[x64]?.buildId ?? '';
    expect((await builder.client.getBuild(buildId)).state).toBe('running');
    expect(parse<{ runs: RunSummary[] }>(await runCli(['runs', '--json', '--limit', '1'], { cwd: pooled, env: pooledEnv })).runs[0]).toMatchObject({ runId, state: 'interrupted' });

    const cancel = await runCli(['cancel', runId, '--json'], { cwd: pooled, env: pooledEnv });
    expect(cancel.code, cancel.stderr).toBe(0);
    expect(parse<CancelAnswer>(cancel)).toMatchObject({ cancelled: true, state: 'cancelled', builds: [{ target: x64, buildId, builder: builder.url, state: 'cancelled' }] });
    expect((await builder.client.getBuild(buildId)).state).toBe('cancelled');
    const after = JSON.parse(await readFile(path.join(cacheDir, 'dispatch', 'runs', `${runId}.json`), 'utf8')) as RunDocument;
    expect(after).toMatchObject({ state: 'cancelled', finishedAt: expect.any(String), targets: { [x64]: { state: 'cancelled' } } });
  });
});

describe('bundle-dispatch prune', () => {
  interface Report { dryRun: boolean; removed: Array<{ kind: string; id: string; files: string[]; bytes: number }>; bytes: number; running: string[]; manifests: string[] }

  /** Every file under `dir` (recursively) with its size. */
  async function filesUnder(dir: string): Promise<Map<string, number>> {
    const files = new Map<string, number>();
    for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
      if (!entry.isFile()) continue;
      const file = path.join(entry.parentPath, entry.name);
      files.set(file, (await stat(file)).size);
    }
    return files;
  }
  interface Delivered { runId: string; source: { sha256: string }; targets: Array<{ buildId?: string }> }

  it('removes old runs with their logs, sources and embedded builds; keeps what a manifest points at and what a running run needs', async () => {
    const pruneCache = path.join(root.dir, 'prune-cache');
    const cwd = path.join(root.dir, 'prune-project');
    await mkdir(cwd, { recursive: true });
    await writeFile(path.join(cwd, '.bundlerc'), JSON.stringify({ cacheDir: pruneCache, hooks: [hooks] }));
    const store = path.join(pruneCache, 'dispatch', 'store');
    const runsDir = path.join(pruneCache, 'dispatch', 'runs');
    const sourceFile = (sha: string) => path.join(store, 'sources', sha.slice(0, 2), `${sha}.tgz`);
    const buildDir = (id: string) => path.join(store, 'builder', 'builds', id);
    const exists = (file: string) => readFile(file).then(() => true, (error: NodeJS.ErrnoException) => (error.code === 'EISDIR' ? true : false));
    const deliver = async (name: string, content: string, ...flags: string[]): Promise<Delivered> => {
      const fixture = await writeFixture(path.join(root.dir, `${name}-${content}.tgz`), { name, version: '1.0.0' }, { 'content.txt': content });
      const run = await runCli([fixture, '--targets', host, '--json', ...flags], { cwd, env });
      expect(run.code, run.stderr).toBe(0);
      return parse<Delivered>(run);
    };
    // app@1.0.0 twice with different sources (re-published over the first): the manifest now names the second one.
    const first = await deliver('prune-app', 'one');
    const second = await deliver('prune-app', 'two', '--overwrite');
    // other@1.0.0, whose manifest is then deleted: nothing points at it any more.
    const other = await deliver('prune-other', 'one');
    await rm(path.join(cwd, 'dist', 'prune-other'), { recursive: true });
    for (const run of [first, second, other]) {
      expect(await exists(sourceFile(run.source.sha256))).toBe(true);
      expect(await exists(buildDir(run.targets[0]?.buildId ?? 'none'))).toBe(true);
      expect(await exists(path.join(runsDir, run.runId, `${host}.ndjson`))).toBe(true);
    }

    // The default retention (30 days) removes none of it.
    const fresh = parse<Report>(await runCli(['prune', '--json', '--cache-dir', pruneCache], { cwd: elsewhere, env }));
    expect(fresh.removed).toEqual([]);
    expect((await runCli(['prune', '--older-than', 'a while'], { cwd, env })).code).toBe(2);

    const slow = await writeFixture(path.join(root.dir, 'prune-slow.tgz'), { name: 'prune-slow', version: '1.0.0' }, { SLOW: 'yes\n' });
    let running: RunDocument | undefined;
    const { run: slowRun, during } = await dispatchAndWhileInstalling([slow, '--targets', host], { cwd, env }, async (runId) => {
      running = await waitFor(async () => {
        const doc = await readRun(runsDir, runId);
        return doc?.targets[host]?.buildId ? doc : undefined;
      });
      const dry = await runCli(['prune', '--older-than', '0s', '--dry-run', '--json', '--cache-dir', pruneCache], { cwd: elsewhere, env });
      const real = await runCli(['prune', '--older-than', '0s', '--cache-dir', pruneCache], { cwd: elsewhere, env });
      const after = await runCli(['prune', '--older-than', '0s', '--json', '--cache-dir', pruneCache], { cwd: elsewhere, env });
      await runCli(['cancel', runId, '--cache-dir', pruneCache], { cwd: elsewhere, env });
      return { dry, real, after };
    }, pruneCache);
    expect(slowRun.code, slowRun.stderr).toBe(130);
    if (!during || !running) throw new Error(`the install step never started:\n${slowRun.stderr}`);

    const dry = parse<Report>(during.dry);
    expect(dry.dryRun).toBe(true);
    expect(dry.running).toEqual([running.runId]);
    expect(dry.manifests).toEqual([expect.stringContaining('prune-app/1.0.0/manifest.json')]);
    const removedIds = (report: Report, kind: string) => report.removed.filter((item) => item.kind === kind).map((item) => item.id).sort();
    expect(removedIds(dry, 'run')).toEqual([first.runId, other.runId].sort());
    expect(removedIds(dry, 'source')).toEqual([first.source.sha256, other.source.sha256].sort());
    expect(removedIds(dry, 'build')).toEqual([first.targets[0]?.buildId, other.targets[0]?.buildId].sort());
    expect(dry.bytes).toBe(dry.removed.reduce((sum, item) => sum + item.bytes, 0));
    expect(dry.removed.every((item) => item.bytes > 0)).toBe(true);

    expect(during.real.code, during.real.stderr).toBe(0);
    expect(during.real.stdout).toContain(`removed run ${first.runId}`);
    expect(during.real.stdout).toMatch(/✔ removed 2 run\(s\), 2 source\(s\), 2 build\(s\) older than 0s .*freed; kept 1 running run\(s\) and what 1 manifest\(s\) point at/);
    // Once removed, a second prune finds nothing more to do while the same things are protected.
    expect(parse<Report>(during.after).removed).toEqual([]);

    for (const gone of [first, other]) {
      expect(await exists(path.join(runsDir, `${gone.runId}.json`))).toBe(false);
      expect(await exists(path.join(runsDir, gone.runId))).toBe(false);
      expect(await exists(sourceFile(gone.source.sha256))).toBe(false);
      expect(await exists(buildDir(gone.targets[0]?.buildId ?? ''))).toBe(false);
    }
    // What the manifest points at: its source, its build, the run that wrote it.
    expect(await exists(sourceFile(second.source.sha256))).toBe(true);
    expect(await exists(buildDir(second.targets[0]?.buildId ?? ''))).toBe(true);
    expect(await exists(path.join(runsDir, `${second.runId}.json`))).toBe(true);
    expect(await exists(path.join(runsDir, second.runId, `${host}.ndjson`))).toBe(true);
    // What the running run needed: its document, its source and its build.
    expect(await exists(path.join(runsDir, `${running.runId}.json`))).toBe(true);
    expect(await exists(sourceFile(running.sourceSha256 ?? ''))).toBe(true);
    expect(await exists(buildDir(running.targets[host]?.buildId ?? ''))).toBe(true);
    // No index or idempotency entry still names a removed build.
    const index = await readdir(path.join(store, 'builder', 'index'));
    const idempotent = await Promise.all((await readdir(path.join(store, 'builder', 'idempotency'))).map((name) => readFile(path.join(store, 'builder', 'idempotency', name), 'utf8')));
    for (const id of removedIds(dry, 'build')) {
      expect(index.some((name) => name.endsWith(`-${id}`))).toBe(false);
      expect(idempotent.map((text) => text.trim())).not.toContain(id);
    }

    // Cancelled, it is no longer running: now its run and build go, but not the manifest's. The
    // dry run lists every file the real one removes — store metadata included — and its bytes
    // are exactly theirs: nothing else under the cache dir changes.
    const before = await filesUnder(pruneCache);
    const laterDry = await runCli(['prune', '--older-than', '0s', '--dry-run', '--cache-dir', pruneCache], { cwd: elsewhere, env });
    const laterDryJson = parse<Report>(await runCli(['prune', '--older-than', '0s', '--dry-run', '--json', '--cache-dir', pruneCache], { cwd: elsewhere, env }));
    expect(await filesUnder(pruneCache)).toEqual(before);
    const later = parse<Report>(await runCli(['prune', '--older-than', '0s', '--json', '--cache-dir', pruneCache], { cwd: elsewhere, env }));
    const after = await filesUnder(pruneCache);
    const gone = [...before.keys()].filter((file) => !after.has(file)).sort();
    const listed = later.removed.flatMap((item) => item.files).sort();
    expect(listed).toEqual(gone);
    expect(gone.some((file) => file.includes('/.bundle-dispatch/meta/'))).toBe(true);
    expect(later.bytes).toBe(gone.reduce((sum, file) => sum + (before.get(file) ?? 0), 0));
    expect(laterDryJson.removed.flatMap((item) => item.files).sort()).toEqual(listed);
    for (const file of gone) expect(laterDry.stdout).toContain(`    ${path.relative(pruneCache, file)}\n`);
    expect([...after.keys()].filter((file) => !before.has(file))).toEqual([]);
    expect(later.running).toEqual([]);
    expect(removedIds(later, 'run')).toEqual([running.runId]);
    expect(removedIds(later, 'build')).toEqual([running.targets[host]?.buildId]);
    expect(await exists(sourceFile(second.source.sha256))).toBe(true);
  });
});
