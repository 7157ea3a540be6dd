/**
 * What a newcomer trips over (issue 28), each through the real bin: an input path with a typo is
 * a usage error naming the file (not npm's 404), and a closed output ends the command quietly.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveRunId } from '../../lib/dispatch/history.js';
import { looksLikeFile } from '../../lib/dispatch/input.js';
import { mkdir, writeFile } from 'node:fs/promises';
import { TEST_UID_RANGES, startTestBuilder } from '../helpers/builder.js';
import { runCli } from '../helpers/cli.js';
import { repoRoot, tempDir } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-newcomer-');
});
afterAll(async () => {
  await root?.remove();
});

describe('an input that looks like a file', () => {
  it('is told apart from a registry spec', () => {
    for (const spec of ['my-app-1.0.0.tg', 'my-app-1.0.0.tgz', 'dist/my-app.tgz', './my-app', '../app', '/tmp/x', '~/x', 'build/out', 'app.tar.gz']) expect(looksLikeFile(spec), spec).toBe(true);
    for (const spec of ['my-app', 'my-app@1.0.0', '@scope/app', '@scope/app@^1.2.0', 'github:owner/repo', 'https://example.test/app.tgz', 'git+ssh://git@host/x.git']) expect(looksLikeFile(spec), spec).toBe(false);
  });

  it('that does not exist: exit 2, ERR_INPUT_NOT_FOUND naming the file and where it was looked for; npm is never asked', async () => {
    const run = await runCli(['my-app-1.0.0.tg', '--cache-dir', path.join(root.dir, 'cache')], { cwd: root.dir });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('ERR_INPUT_NOT_FOUND');
    expect(run.stderr).toContain(`"my-app-1.0.0.tg" does not exist (no file or directory ${path.join(root.dir, 'my-app-1.0.0.tg')})`);
    expect(run.stderr).not.toMatch(/E404|ERR_INPUT_UNREADABLE|npm error|at \S+:\d+:\d+/);
    const json = await runCli(['dist/missing.tgz', '--json', '--cache-dir', path.join(root.dir, 'cache')], { cwd: root.dir });
    expect(json.code).toBe(2);
    expect(JSON.parse(json.stdout)).toMatchObject({ error: { code: 'ERR_INPUT_NOT_FOUND' } });
  });
});

describe('a closed output', () => {
  it('`… | head -1`: the command stops quietly, exit 0, no EPIPE stack', async () => {
    // The reader closes its end at once, as `head -1` does after its line; --help then writes ~6 KiB.
    const result = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
      const child = spawn(process.execPath, [path.join(repoRoot, 'bin', 'bundle-dispatch.js'), '--help'], { cwd: root.dir, stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout.destroy();
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stderr }));
    });
    expect(result.stderr).not.toMatch(/EPIPE|Error|at \S+:\d+:\d+/);
    expect(result.code).toBe(0);
  });
});

describe('status <build-url> without a token', () => {
  it('says where the token comes from: no pool member for that URL, or its tokenEnv unset', async () => {
    const builder = await startTestBuilder({ uids: TEST_UID_RANGES.newcomer, slots: 1 });
    try {
      const url = `${builder.url}/v1/builds/0mxnotabuild`;
      const bare = await runCli(['status', url, '--cache-dir', path.join(root.dir, 'cache')], { cwd: root.dir });
      expect(bare.code).toBe(1);
      expect(bare.stderr).toContain(`ERR_UNAUTHORIZED: Builder ${builder.url} refused the request (401): no pool member of .bundlerc has the URL ${builder.url}, so no token was sent.`);
      expect(bare.stderr).toContain('"tokenEnv": "MY_BUILDER_TOKEN"');
      const project = path.join(root.dir, 'with-pool');
      await mkdir(project, { recursive: true });
      await writeFile(path.join(project, '.bundlerc'), JSON.stringify({ dispatch: { pools: { 'linux-x64': [{ url: builder.url, tokenEnv: 'NEWCOMER_POOL_TOKEN', publicKey: 'builder.pub.pem' }] } } }));
      const unset = await runCli(['status', url, '--cache-dir', path.join(root.dir, 'cache')], { cwd: project, env: { NEWCOMER_POOL_TOKEN: '' } });
      expect(unset.code).toBe(1);
      expect(unset.stderr).toContain('the token comes from $NEWCOMER_POOL_TOKEN (its pool member\'s tokenEnv), which is not set');
      expect(unset.stderr).toContain('Set NEWCOMER_POOL_TOKEN to one of the builder\'s tokens');
    } finally {
      await builder.stop();
    }
  });
});

describe('naming runs', () => {
  it('resolves latest, a whole id and a unique prefix; an ambiguous or unknown one is a usage error naming the candidates', async () => {
    const dir = path.join(root.dir, 'runs-only');
    await mkdir(dir, { recursive: true });
    for (const id of ['20261207T040000Z-aaaaaaaa', '20261207T041500Z-bbbbbbbb', '20261207T041510Z-cccccccc']) await writeFile(path.join(dir, `${id}.json`), '{}');
    expect(await resolveRunId(dir, 'latest')).toBe('20261207T041510Z-cccccccc');
    expect(await resolveRunId(dir, '20261207T041500Z-bbbbbbbb')).toBe('20261207T041500Z-bbbbbbbb');
    expect(await resolveRunId(dir, '20261207T0400')).toBe('20261207T040000Z-aaaaaaaa');
    await expect(resolveRunId(dir, '20261207T0415')).rejects.toMatchObject({ code: 'ERR_USAGE', message: expect.stringContaining('matches 2 runs: 20261207T041510Z-cccccccc, 20261207T041500Z-bbbbbbbb') });
    await expect(resolveRunId(dir, '2025')).rejects.toMatchObject({ code: 'ERR_USAGE', message: expect.stringContaining('No run "2025"') });
    await expect(resolveRunId(path.join(root.dir, 'no-runs'), 'latest')).rejects.toMatchObject({ code: 'ERR_USAGE', message: expect.stringContaining('No run has been recorded') });
  });

  it('status with no id shows the latest run; status, logs and cancel take a prefix or latest (the real bin, a real run of the sample)', async () => {
    const cache = path.join(root.dir, 'runs-cache');
    const empty = await runCli(['status', '--cache-dir', cache], { cwd: root.dir });
    expect(empty.code).toBe(2);
    expect(empty.stderr).toContain('No run has been recorded');
    const sample = path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz');
    const run = await runCli([sample, '--targets', `linux-${process.arch}@${process.versions.node}`, '--cache-dir', cache, '-d', path.join(root.dir, 'runs-dist'), '--json'], { cwd: root.dir });
    expect(run.code, run.stderr).toBe(0);
    const { runId } = JSON.parse(run.stdout) as { runId: string };
    const latest = await runCli(['status', '--json', '--cache-dir', cache], { cwd: root.dir });
    expect(latest.code, latest.stderr).toBe(0);
    expect(JSON.parse(latest.stdout)).toMatchObject({ runId, state: 'finished' });
    const prefix = await runCli(['status', runId.slice(0, 12), '--json', '--cache-dir', cache], { cwd: root.dir });
    expect(JSON.parse(prefix.stdout)).toMatchObject({ runId });
    const logs = await runCli(['logs', 'latest', '--cache-dir', cache], { cwd: root.dir });
    expect(logs.code, logs.stderr).toBe(0);
    expect(logs.stdout).toContain('] ');
    const cancel = await runCli(['cancel', runId.slice(0, 16), '--json', '--cache-dir', cache], { cwd: root.dir });
    expect(JSON.parse(cancel.stdout)).toMatchObject({ runId, cancelled: false });
  }, 120_000);
});

describe('configuration errors', () => {
  it('name the key, the bad value and what is expected, without listing every known key; an unknown key gets a "did you mean"', async () => {
    const project = path.join(root.dir, 'bad-config');
    await mkdir(project, { recursive: true });
    await writeFile(path.join(project, '.bundlerc'), JSON.stringify({ dispatch: { concurrency: 'four' } }));
    const run = await runCli(['status', '--cache-dir', path.join(root.dir, 'cache')], { cwd: project });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('dispatch.concurrency: "four" must be a number');
    expect(run.stderr).not.toContain('Known keys');
    await writeFile(path.join(project, '.bundlerc'), JSON.stringify({ dispatch: { concurency: 4 } }));
    const typo = await runCli(['status', '--cache-dir', path.join(root.dir, 'cache')], { cwd: project });
    expect(typo.code).toBe(2);
    expect(typo.stderr).toContain('unknown key "dispatch.concurency" (did you mean "dispatch.concurrency"?)');
    expect(typo.stderr).not.toContain('Known keys');
  });
});
