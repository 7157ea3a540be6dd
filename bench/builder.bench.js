// Builder bench: (1) status requests per second on GET /v1/builds/:id from a loopback load
// generator while a build runs for the whole window (target ≥ 1,000/s on 2 cores), and (2) the
// time from a build finishing (its record's finishedAt) to an SSE client seeing its end event
// (median of several builds, target < 100 ms).
//
// How it measures, and why:
// - The builder runs in this process, as `bundle-dispatch builder` would (fastify, JSON logs
//   at info into a discarding stream, directory store); the load generator is a child process
//   (this file with --load) so it does not compete with the server for one event loop.
// - The load generator keeps CONNECTIONS keep-alive connections busy with node:http for
//   WINDOW_MS and counts 200 responses; a slow-installing package (an install script that
//   sleeps) is running the whole time, so the numbers include a live build's events.
// - SSE latency uses the builder client (got, the same code dispatch uses) following each of
//   SSE_BUILDS quick builds from submission to the end event.
import { Buffer } from 'node:buffer';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { pack } from 'tar-stream';
import { benchEnv } from './support.js';

const WINDOW_MS = 10_000;
const CONNECTIONS = 32;
const SSE_BUILDS = 7;
const here = fileURLToPath(import.meta.url);
const repo = path.resolve(path.dirname(here), '..');

if (process.argv[2] === '--load') {
  const [url, token, windowMs, connections] = process.argv.slice(3);
  const agent = new http.Agent({ keepAlive: true, maxSockets: Number(connections) });
  const deadline = Date.now() + Number(windowMs);
  let ok = 0;
  let failed = 0;
  const latencies = [];
  const one = () => new Promise((resolve) => {
    const started = process.hrtime.bigint();
    const request = http.get(url, { agent, headers: { authorization: `Bearer ${token}` } }, (response) => {
      response.resume();
      response.on('end', () => {
        if (response.statusCode === 200) ok += 1;
        else failed += 1;
        latencies.push(Number(process.hrtime.bigint() - started) / 1e6);
        resolve();
      });
    });
    request.on('error', () => {
      failed += 1;
      resolve();
    });
  });
  const loop = async () => {
    while (Date.now() < deadline) await one();
  };
  const started = Date.now();
  await Promise.all(Array.from({ length: Number(connections) }, loop));
  const seconds = (Date.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;
  process.stdout.write(JSON.stringify({ ok, failed, seconds, p50: at(0.5), p99: at(0.99) }));
  agent.destroy();
  process.exit(0);
}

function packageTgz(packageJson, files = {}) {
  return new Promise((resolve, reject) => {
    const tar = pack();
    tar.entry({ name: 'package/package.json', mode: 0o644 }, JSON.stringify(packageJson));
    for (const [name, content] of Object.entries(files)) tar.entry({ name: `package/${name}`, mode: 0o644 }, content);
    tar.finalize();
    const chunks = [];
    tar.on('data', (chunk) => chunks.push(chunk));
    tar.on('end', () => {
      const body = gzipSync(Buffer.concat(chunks));
      resolve({ body, sha256: createHash('sha256').update(body).digest('hex') });
    });
    tar.on('error', reject);
  });
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
};

export async function run({ log }) {
  const { startBuilder } = await import('../build/lib/builder/server.js');
  const { createBuilderClient } = await import('../build/lib/builder/client.js');
  const { servedTargets } = await import('../build/lib/builder/targets.js');
  const { DirStore } = await import('../build/lib/storage/index.js');
  const { createScaffold } = await import('../build/lib/workflow/scaffold.js');
  const { hostTarget } = await import('../build/lib/target.js');

  const root = await mkdtemp(path.join(tmpdir(), 'bd-bench-builder-'));
  await chmod(root, 0o711);
  const cacheDir = path.join(repo, '.cache', 'test');
  await mkdir(cacheDir, { recursive: true });
  const token = `bench_${createHash('sha256').update(String(Math.random())).digest('hex')}`;
  const env = benchEnv();
  const scaffold = createScaffold({}, [], { env, workRoot: path.join(root, 'work', 'builds'), npmCacheDir: path.join(cacheDir, 'npm'), runtimeCacheDir: path.join(repo, '.cache', 'test-runtimes') });
  const discard = new Writable({ write: (_chunk, _encoding, callback) => callback() });
  const builder = await startBuilder({
    host: '127.0.0.1', port: 0, tokens: [token], store: new DirStore({ root: path.join(root, 'store') }), scaffold,
    builderId: 'bench', slots: 2, targets: servedTargets([], hostTarget()), workDir: path.join(root, 'work'),
    buildTimeoutMs: 300_000, maxSourceBytes: 1 << 24, maxBodyBytes: 65_536, minFreeDisk: 1 << 20, allowSources: ['127.0.0.1'],
    ...(process.getuid?.() === 0 ? { uidRange: { first: 61040, last: 61049 } } : {}),
    heartbeatMs: 10_000, logStream: discard, logLevel: 'info', version: 'bench', npmVersion: 'bench', runtimes: [process.versions.node],
  });
  const files = new Map();
  const sources = http.createServer((request, response) => {
    const body = files.get(request.url);
    if (!body) return response.writeHead(404).end();
    response.writeHead(200, { 'content-length': body.length }).end(body);
  });
  await new Promise((resolve) => sources.listen(0, '127.0.0.1', resolve));
  const sourceUrl = (name, body) => {
    files.set(`/${name}`, body);
    return `http://127.0.0.1:${sources.address().port}/${name}`;
  };
  const client = createBuilderClient({ url: builder.url, token });
  const host = hostTarget();
  const target = { os: host.os, cpu: host.cpu, ...(host.libc ? { libc: host.libc } : {}), node: process.versions.node };

  try {
    // (1) Status requests while a build runs the whole window.
    const slow = await packageTgz({ name: 'bench-slow', version: '1.0.0', scripts: { install: `node -e "setTimeout(() => {}, ${WINDOW_MS + 60_000})"` } });
    const { id } = await client.createBuild({ source: { url: sourceUrl('slow.tgz', slow.body), sha256: slow.sha256 }, target }, { idempotencyKey: 'bench-slow' });
    for (;;) {
      const record = await client.getBuild(id);
      if (record.steps.some((step) => step.name === 'install' && step.state === 'running')) break;
      if (record.state !== 'queued' && record.state !== 'running') throw new Error(`the slow build ended: ${record.state} ${record.error?.message}`);
      await sleep(100);
    }
    const load = await new Promise((resolve, reject) => {
      execFile(process.execPath, [here, '--load', `${builder.url}/v1/builds/${id}`, token, String(WINDOW_MS), String(CONNECTIONS)], { maxBuffer: 1 << 20 }, (error, stdout) => (error ? reject(error) : resolve(JSON.parse(stdout))));
    });
    const during = await client.getBuild(id);
    const stillRunning = during.state === 'running';
    await client.cancelBuild(id);

    // (2) Build finished → SSE client sees it.
    const quick = await packageTgz({ name: 'bench-quick', version: '1.0.0' }, { 'index.js': 'module.exports = 1;\n' });
    const quickUrl = sourceUrl('quick.tgz', quick.body);
    const latencies = [];
    for (let index = 0; index < SSE_BUILDS; index += 1) {
      const created = await client.createBuild({ source: { url: quickUrl, sha256: quick.sha256 }, target }, { idempotencyKey: `bench-quick-${index}` });
      const final = await client.followBuild(created.id);
      const seen = Date.now();
      if (final.state !== 'succeeded') throw new Error(`quick build ${final.state}: ${final.error?.message}`);
      latencies.push(seen - Date.parse(final.finishedAt));
    }

    const rate = load.ok / load.seconds;
    const sse = median(latencies);
    const rows = [
      ['measure', 'value', 'target', 'ok'],
      [`GET /v1/builds/:id req/s (${CONNECTIONS} conns, ${WINDOW_MS / 1000} s, build running: ${stillRunning})`, rate.toFixed(0), '≥ 1000', rate >= 1000 && stillRunning ? 'yes' : 'NO'],
      ['  latency p50 / p99 (ms)', `${load.p50.toFixed(1)} / ${load.p99.toFixed(1)}`, '', ''],
      ['  non-200 responses', String(load.failed), '0', load.failed === 0 ? 'yes' : 'NO'],
      [`build finished → SSE client sees it, median of ${SSE_BUILDS} (ms)`, String(sse), '< 100', sse < 100 ? 'yes' : 'NO'],
      ['  all samples (ms)', latencies.join(' '), '', ''],
    ];
    const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
    for (const [index, row] of rows.entries()) {
      log(`| ${row.map((cell, column) => cell.padEnd(widths[column])).join(' | ')} |`);
      if (index === 0) log(`|${widths.map((width) => '-'.repeat(width + 2)).join('|')}|`);
    }
  } finally {
    await builder.stop(0);
    sources.closeAllConnections();
    await new Promise((resolve) => sources.close(resolve));
    await rm(root, { recursive: true, force: true });
  }
}
