#!/usr/bin/env node
// Where dispatch's time around a build goes: runs dispatch on one target several times (one
// builder and s3rver in this process, so every HTTP request of both sides is seen through
// diagnostics_channel) and prints the mean of each phase, then the request timeline of the
// last run. A diagnostic, not a bench section (no baseline, no ratio): `npm run build` first.
//
//   node bench/dispatch-timeline.js [--express] [--rounds N]
//
// --express uses an app depending on express (a 0.7 MB bundle) instead of examples/hello-app.
import dc from 'node:diagnostics_channel';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { benchEnv, dispatchTools, lib, repo, writeExpressApp } from './support.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const { values: flags } = parseArgs({ options: { express: { type: 'boolean', default: false }, rounds: { type: 'string', default: '5' } } });
const ROUNDS = Math.max(2, Number(flags.rounds) || 5);
const { default: S3rver } = await import('s3rver');
const { startBuilder } = await lib('builder/server.js');
const { loadOrCreateSigningKey } = await lib('provenance/keys.js');
const { createBuilderClient } = await lib('builder/client.js');
const { DirStore } = await lib('storage/index.js');
const { S3Store } = await lib('storage/s3-store.js');
const { createScaffold } = await lib('workflow/scaffold.js');
const { hostTarget, parseTarget, formatTarget } = await lib('target.js');
const { prepareInput } = await lib('dispatch/input.js');
const { ensureLockfile } = await lib('dispatch/lockfile.js');
const { parseTargets, planTargets } = await lib('dispatch/plan.js');
const { dispatch } = await lib('dispatch/run.js');

const NODE = process.versions.node;
const base = await mkdtemp(path.join(tmpdir(), 'bd-timeline-'));
const cacheDir = path.join(repo, '.cache', 'test');
const directory = path.join(base, 's3rver');
await mkdir(directory, { recursive: true });
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: 'sources' }, { name: 'releases' }] });
const { port } = await server.run();
const s3 = { endpoint: `http://127.0.0.1:${port}`, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } };
const sources = new S3Store({ ...s3, bucket: 'sources' });
const host = formatTarget(hostTarget(), { withNode: false });
const env = benchEnv();
const tools = await dispatchTools(base, cacheDir);
const token = randomBytes(16).toString('hex');
const scaffold = createScaffold({}, [], { env, workRoot: path.join(base, 'builder', 'work', 'builds'), npmCacheDir: path.join(cacheDir, 'npm'), runtimeCacheDir: path.join(repo, '.cache', 'test-runtimes') });
const signingKey = await loadOrCreateSigningKey(path.join(base, 'builder', 'signing-key.pem'));
const builder = await startBuilder({
  host: '127.0.0.1', port: 0, tokens: [token], signingKey, store: new DirStore({ root: path.join(base, 'builder', 'store') }), scaffold, builderId: 'timeline', slots: 1,
  targets: [parseTarget(host)], workDir: path.join(base, 'builder', 'work'), buildTimeoutMs: 600_000, maxSourceBytes: 64 * 1024 ** 2, maxBodyBytes: 64 * 1024,
  minFreeDisk: 1024 ** 2, allowSources: ['127.0.0.1'], heartbeatMs: 5000, version: 'timeline', npmVersion: 'timeline', runtimes: [NODE],
});
const client = createBuilderClient({ url: builder.url, token });
const pool = { platform: parseTarget(host), builders: [{ url: builder.url, client, keys: [signingKey] }] };

// Every request, client side (start → response finished) and server side (received, answered).
let t0 = 0;
let lines = [];
const at = () => performance.now() - t0;
const mark = (what) => lines.push([at(), what]);
const started = new WeakMap();
const shortPath = (value) => value.split('?')[0].slice(0, 72);
dc.subscribe('http.client.request.start', ({ request }) => started.set(request, at()));
dc.subscribe('http.client.response.finish', ({ request }) => mark(`  ${request.method} ${shortPath(request.path)} (sent at ${started.get(request)?.toFixed(1)})`));
dc.subscribe('http.server.request.start', ({ request }) => mark(`    server got ${request.method} ${shortPath(request.url)}`));

try {
  let input = path.join(repo, 'examples', 'hello-app-1.0.0.tgz');
  if (flags.express) input = await writeExpressApp(path.join(base, 'express-app'));
  const prepared = await prepareInput(input, { cwd: repo, workDir: path.join(base, 'prep'), tools });
  const locked = (await ensureLockfile(prepared, { tools, workDir: path.join(base, 'prep') })).file;
  const phases = [];
  for (let round = 0; round < ROUNDS; round += 1) {
    const work = await mkdtemp(path.join(base, 'run-'));
    lines = [];
    t0 = performance.now();
    const wallStart = Date.now();
    const inputPrepared = await prepareInput(locked, { cwd: repo, workDir: work, tools });
    const source = await ensureLockfile(inputPrepared, { tools, workDir: work });
    const inspected = at();
    const seen = {};
    const result = await dispatch({
      input: inputPrepared, source, targets: planTargets(parseTargets([`${host}@${NODE}`]), [pool]), sourceStore: sources,
      destination: new S3Store({ ...s3, bucket: 'releases', prefix: `run-${round}` }), keyTemplate: '{name}/{version}/{file}',
      manifestTemplate: '{name}/{version}/manifest.json', presignExpiry: 3600, signal: new globalThis.AbortController().signal, tmpDir: work,
      overrides: { sourceDateEpoch: 1_700_000_000 + round },
      onEvent: (event) => {
        const name = event.type === 'phase' ? `${event.phase} ${event.state}` : event.type === 'target' ? `target ${event.state}` : undefined;
        if (name) {
          seen[name] ??= at();
          mark(name);
        }
      },
    });
    const done = at();
    await rm(work, { recursive: true, force: true });
    const outcome = result.targets[0];
    if (!outcome?.ok) throw new Error(`dispatch failed: ${JSON.stringify(outcome)}`);
    const record = await client.getBuild(outcome.buildId);
    const clock = (iso) => Date.parse(iso) - wallStart;
    const output = record.steps.find((step) => step.name === 'output')?.durationMs ?? 0;
    phases.push({
      'inspect input': inspected,
      'cache and source checks': seen['cache finished'] - inspected,
      'presign + POST until the build starts': clock(record.startedAt) - seen['cache finished'],
      'build (the builder\'s buildMs)': clock(record.finishedAt) - clock(record.startedAt),
      '  of which the upload of the result': output,
      'build end → dispatch sees it': seen['target copying'] - clock(record.finishedAt),
      'copy + cache marker': seen['target succeeded'] - seen['target copying'],
      'manifest + staged result removal': done - seen['target succeeded'],
      'around the build': done - (clock(record.finishedAt) - clock(record.startedAt)),
    });
  }
  // The first round warms npm's cache and the connections: left out of the means.
  const kept = phases.slice(1);
  console.log(`${flags.express ? 'express app' : 'examples/hello-app'}, ${kept.length} rounds after one warm-up, mean ms:`);
  for (const name of Object.keys(kept[0])) {
    console.log(`  ${name.padEnd(40)} ${(kept.reduce((sum, phase) => sum + phase[name], 0) / kept.length).toFixed(1).padStart(8)}`);
  }
  console.log('\nrequests of the last round (ms since it started; client lines when the response finished):');
  for (const [ms, what] of lines.sort((a, b) => a[0] - b[0])) console.log(`${ms.toFixed(1).padStart(8)} ${what}`);
} finally {
  await builder.stop(0);
  sources.close();
  server.httpServer?.closeAllConnections();
  await server.close();
  await rm(base, { recursive: true, force: true });
}
