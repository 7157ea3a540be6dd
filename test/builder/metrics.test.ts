/**
 * GET /metrics end to end: a real builder, real builds, Prometheus' own promtool (Debian's
 * `prometheus` package) linting the exposition and evaluating the documented scaling query over
 * series scraped from the builder. promtool missing → these tests fail, they do not skip.
 */
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatTarget, hostTarget } from '../../lib/target.js';
import { TEST_UID_RANGES, hostTargetSpec, startSourceServer, startTestBuilder, tgz, waitFor, type SourceServer, type TestBuilder } from '../helpers/builder.js';
import { packageTar, repoRoot, tempDir } from '../helpers/packages.js';

const execFileAsync = promisify(execFile);
const HOST = formatTarget(hostTarget(), { withNode: false }).replace(/-glibc$/, '');
const P = 'bundle_dispatch_builder_';

let builder: TestBuilder;
let sources: SourceServer;
let scratch: { dir: string; remove: () => Promise<void> };

beforeAll(async () => {
  [builder, sources, scratch] = await Promise.all([startTestBuilder({ uids: TEST_UID_RANGES.metrics, slots: 1, builderId: 'metrics-a' }), startSourceServer(), tempDir('bd-metrics-')]);
});
afterAll(async () => {
  await builder?.stop();
  await sources?.stop();
  await scratch?.remove();
});

const scrape = async (url = `${builder.url}/metrics`): Promise<string> => {
  const response = await fetch(url);
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return response.text();
};

/** The value of one sample, by name and exact label set (`{}` for none); undefined when absent. */
const sample = (text: string, name: string, labels: Record<string, string> = {}): number | undefined => {
  const wanted = Object.entries(labels).map(([key, value]) => `${key}="${value}"`).sort().join(',');
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const have = (match[2] ?? '').split(',').filter(Boolean).sort().join(',');
    if (have === wanted) return Number(match[3]);
  }
  return undefined;
};

const promtoolCheck = async (exposition: string): Promise<{ code: number; output: string }> => {
  const file = path.join(scratch.dir, `exposition-${Date.now()}.txt`);
  await writeFile(file, exposition);
  try {
    const { stdout, stderr } = await execFileAsync('sh', ['-c', 'promtool check metrics < "$1"', 'sh', file]);
    return { code: 0, output: stdout + stderr };
  } catch (error) {
    const failure = error as { code?: number; stdout?: string; stderr?: string };
    return { code: failure.code ?? 1, output: `${failure.stdout ?? ''}${failure.stderr ?? ''}` };
  }
};

const packageSource = async (name: string, install: string) => {
  const source = await tgz(packageTar({ name, version: '1.0.0', scripts: { install } }, {}));
  return { url: sources.add(`${name}.tgz`, source.body), sha256: source.sha256, size: source.body.length };
};

describe('GET /metrics', () => {
  it('prerequisite: Debian\'s promtool is installed', async () => {
    const { stdout, stderr } = await execFileAsync('promtool', ['--version']);
    expect(stdout + stderr).toMatch(/promtool, version 2\./);
  });

  it('answers without a token; every series of the served target exists at 0; promtool finds nothing to lint', async () => {
    const text = await scrape();
    for (const name of ['queued_builds', 'running_builds']) expect(sample(text, `${P}${name}`, { target: HOST })).toBe(0);
    expect(sample(text, `${P}slots`)).toBe(1);
    expect(sample(text, `${P}draining`)).toBe(0);
    for (const outcome of ['succeeded', 'failed', 'cancelled']) expect(sample(text, `${P}builds_total`, { target: HOST, outcome })).toBe(0);
    expect(sample(text, `${P}build_duration_seconds_count`, { target: HOST })).toBe(0);
    expect(sample(text, `${P}info`, { version: '0.0.0-test', node: process.versions.node, builder: 'metrics-a' })).toBe(1);
    expect(text).toContain('# TYPE process_cpu_user_seconds_total counter');
    const lint = await promtoolCheck(text);
    expect(lint, lint.output).toEqual({ code: 0, output: '' });
  });

  it('counts builds by outcome, their durations, queue waits and source bytes; shows the queue and the running build', async () => {
    const ok = await packageSource('metrics-ok', 'node -e 0');
    const bad = await packageSource('metrics-bad', 'node -e "process.exit(3)"');
    for (const [source, key] of [[ok, 'ok'], [bad, 'bad']] as const) {
      const { id } = await builder.client.createBuild({ source: { url: source.url, sha256: source.sha256 }, target: hostTargetSpec() }, { idempotencyKey: `metrics-${key}` });
      await builder.client.followBuild(id);
    }
    let text = await scrape();
    expect(sample(text, `${P}builds_total`, { target: HOST, outcome: 'succeeded' })).toBe(1);
    expect(sample(text, `${P}builds_total`, { target: HOST, outcome: 'failed' })).toBe(1);
    expect(sample(text, `${P}build_duration_seconds_count`, { target: HOST })).toBe(2);
    expect(sample(text, `${P}build_duration_seconds_sum`, { target: HOST })).toBeGreaterThan(0);
    expect(sample(text, `${P}queue_wait_seconds_count`, { target: HOST })).toBe(2);
    expect(sample(text, `${P}source_bytes_total`)).toBe(ok.size + bad.size);
    // The 1 h bucket holds every build; the le label is Prometheus' own format.
    expect(sample(text, `${P}build_duration_seconds_bucket`, { target: HOST, le: '3600' })).toBe(2);

    const forever = await packageSource('metrics-forever', 'node -e "console.log(\'UP\'); setInterval(() => {}, 1000)"');
    const running = await builder.client.createBuild({ source: { url: forever.url, sha256: forever.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'metrics-running' });
    await waitFor(async () => (await builder.client.getLog(running.id)).some((line) => line.message.includes('UP')) || undefined, 60_000, 100);
    const waiting = await builder.client.createBuild({ source: { url: ok.url, sha256: ok.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'metrics-waiting' });
    text = await scrape();
    expect(sample(text, `${P}running_builds`, { target: HOST })).toBe(1);
    expect(sample(text, `${P}queued_builds`, { target: HOST })).toBe(1);
    // No label carries a build id: series stay a fixed set however many builds run.
    expect(text).not.toContain(running.id);
    expect(text).not.toContain(waiting.id);
    await writeFile(path.join(scratch.dir, 'busy.txt'), text);

    await builder.client.cancelBuild(waiting.id);
    await builder.client.cancelBuild(running.id);
    text = await scrape();
    expect(sample(text, `${P}builds_total`, { target: HOST, outcome: 'cancelled' })).toBe(2);
    expect(sample(text, `${P}running_builds`, { target: HOST })).toBe(0);
    expect(sample(text, `${P}queued_builds`, { target: HOST })).toBe(0);
  }, 120_000);

  it('the documented scaling query, run by promtool over the series the busy builder exposed: two replicas sum, a target without series is 0', async () => {
    const doc = await readFile(path.join(repoRoot, 'docs', 'builder.md'), 'utf8');
    const query = /### The scaling query[^]*?```promql\n(.+)\n```/.exec(doc)?.[1];
    expect(query).toContain('or vector(0)');
    const busy = await readFile(path.join(scratch.dir, 'busy.txt'), 'utf8');
    // Every served target has its series; the busy one's are 1 queued and 1 running.
    const series = busy.split('\n').filter((line) => /^bundle_dispatch_builder_(queued|running)_builds\{/.test(line));
    expect(series.length).toBeGreaterThanOrEqual(2);
    expect(series.filter((line) => line.includes(`target="${HOST}"`))).toEqual([`${P}queued_builds{target="${HOST}"} 1`, `${P}running_builds{target="${HOST}"} 1`]);
    // Each line becomes an input series of two replicas (instance a and b), over 3 minutes.
    const input = series.flatMap((line) => {
      const [, name, labels, value] = /^(\w+)\{([^}]*)\} (\S+)$/.exec(line) as RegExpExecArray;
      return ['a', 'b'].map((instance) => `      - series: '${name}{${labels},instance="${instance}"}'\n        values: '${value} ${value} ${value}'`);
    });
    const forTarget = (target: string) => (query as string).replaceAll(`target="linux-x64"`, `target="${target}"`);
    const tests = [
      'rule_files: []',
      'evaluation_interval: 1m',
      'tests:',
      '  - interval: 1m',
      '    input_series:',
      ...input,
      '    promql_expr_test:',
      `      - expr: '${forTarget(HOST)}'`,
      '        eval_time: 2m',
      '        exp_samples:',
      "          - labels: '{}'",
      '            value: 4',
      `      - expr: '${forTarget('linux-riscv64')}'`,
      '        eval_time: 2m',
      '        exp_samples:',
      "          - labels: '{}'",
      '            value: 0',
    ].join('\n');
    const file = path.join(scratch.dir, 'scaling.test.yml');
    await writeFile(file, `${tests}\n`);
    const { stdout } = await execFileAsync('promtool', ['test', 'rules', file]);
    expect(stdout).toContain('SUCCESS');
    // And promtool does fail on a wrong expectation (the test above can fail).
    await writeFile(file, `${tests.replace('value: 4', 'value: 3')}\n`);
    await expect(execFileAsync('promtool', ['test', 'rules', file])).rejects.toMatchObject({ stderr: expect.stringMatching(/FAILED[^]*exp: \{\} 3E\+00[^]*got: \{\} 4E\+00/) });
  });

  it('counts refusals by reason, and shows draining', async () => {
    const ok = await packageSource('metrics-refused', 'node -e 0');
    await expect(builder.client.createBuild({ source: { url: ok.url, sha256: ok.sha256 }, target: { os: 'linux', cpu: 'riscv64', node: process.versions.node } }, { idempotencyKey: 'metrics-riscv' })).rejects.toMatchObject({ code: 'ERR_TARGET_UNSUPPORTED' });
    await expect(builder.client.createBuild({ source: { url: ok.url, sha256: '0'.repeat(64) }, target: hostTargetSpec() }, { idempotencyKey: 'metrics-integrity' })).rejects.toMatchObject({ code: 'ERR_INTEGRITY' });
    await builder.builder.service.drain('test');
    await expect(builder.client.createBuild({ source: { url: ok.url, sha256: ok.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'metrics-draining' })).rejects.toMatchObject({ code: 'ERR_BUILDER_STOPPING' });
    const text = await scrape();
    expect(sample(text, `${P}refused_requests_total`, { reason: 'unsupported_target' })).toBe(1);
    expect(sample(text, `${P}refused_requests_total`, { reason: 'integrity' })).toBe(1);
    expect(sample(text, `${P}refused_requests_total`, { reason: 'draining' })).toBe(1);
    expect(sample(text, `${P}draining`)).toBe(1);
  }, 60_000);

  it('on a listener of its own (builder.metrics = port): served there only, nothing else there', async () => {
    const own = await startTestBuilder({ uids: TEST_UID_RANGES.metrics, slots: 1, builderId: 'metrics-own', metricsPort: 0 });
    try {
      const url = own.builder.metricsUrl as string;
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      expect(new URL(url).port).not.toBe(new URL(own.url).port);
      expect(sample(await scrape(url), `${P}slots`)).toBe(1);
      expect((await fetch(url.replace('/metrics', '/v1/health'))).status).toBe(404);
      // The API port has no /metrics: without a token it answers as any unknown route (401), with one 404.
      expect((await fetch(`${own.url}/metrics`)).status).toBe(401);
      expect((await fetch(`${own.url}/metrics`, { headers: { authorization: `Bearer ${own.token}` } })).status).toBe(404);
    } finally {
      await own.stop();
    }
  });
});
