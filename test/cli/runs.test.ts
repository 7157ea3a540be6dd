/**
 * The operator's commands over the local run history, spawning the real bin (run `npm run
 * build` first) against real dispatch runs: on the embedded default, and on a builder service
 * (the real bin as a child process) with s3rver as the source store. `runs`, `logs` (from the
 * builder, and from the local copy once the builder is gone), and `status` with `--cache-dir`.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunSummary, TargetLog } from '../../lib/cli/runs.js';
import type { RunDocument } from '../../lib/dispatch/history.js';
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
let s3: S3TestServer;
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
});
afterAll(async () => {
  await s3?.stop();
  await root?.remove();
});

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
