// Fleet section: a cancel through the balancer. Three replicas of the real bin on one S3 store
// (s3rver in a process of its own) behind Debian's HAProxy with docs/builder.md's configuration;
// a running build is cancelled with a DELETE that lands on a replica that does not run it (it
// forwards the cancel to the owner), against the same DELETE sent straight to the owner in the
// same run. Goal: ≤ 2 s through the balancer, every round.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { benchEnv, repo } from './support.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const GOAL_MS = 2000;
const work = path.join(repo, 'bench', '.work', 'fleet');
const bin = path.join(repo, 'bin', 'bundle-dispatch.js');
const token = randomBytes(24).toString('hex');
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

/** A child process that prints its address as its first stdout line. */
async function startChild(command, args, env) {
  const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'ignore'] });
  const [line] = await once(createInterface({ input: child.stdout }), 'line');
  return { child, line };
}

const freePort = () => new Promise((resolve) => {
  const server = createNetServer().listen(0, '127.0.0.1', () => {
    const { port } = server.address();
    server.close(() => resolve(port));
  });
});

export async function run({ log }) {
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  const children = [];
  const stopAll = () => { for (const child of children) child.kill('SIGKILL'); };
  try {
    const s3 = await startChild(process.execPath, [path.join(repo, 'bench', 's3rver-child.js'), path.join(work, 's3rver'), 'fleet'], benchEnv());
    children.push(s3.child);
    const endpoint = `http://127.0.0.1:${JSON.parse(s3.line).port}`;
    const replicas = [];
    for (const name of ['bench-fleet-1', 'bench-fleet-2', 'bench-fleet-3']) {
      const started = await startChild(process.execPath, [bin, 'builder', '--port', '0', '--store', 's3://fleet/linux', '--slots', '2', '--cache-dir', path.join(work, 'cache'), '--log-level', 'warn'], {
        ...benchEnv(),
        BUNDLE_DISPATCH_BUILDER_TOKENS: token, BUNDLE_DISPATCH_BUILDER_ID: name, BUNDLE_DISPATCH_WORK_DIR: path.join(work, name),
        BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: 'off', BUNDLE_DISPATCH_BUILDER_ALLOW_SOURCES: '127.0.0.1', BUNDLE_DISPATCH_BUILDER_SIGNING_KEY: path.join(work, 'signing-key.pem'),
        BUNDLE_DISPATCH_S3_ENDPOINT: endpoint, BUNDLE_DISPATCH_S3_REGION: 'us-east-1', BUNDLE_DISPATCH_S3_FORCE_PATH_STYLE: 'true',
        AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_EC2_METADATA_DISABLED: 'true',
      });
      children.push(started.child);
      replicas.push({ name, url: started.line });
    }
    const doc = await readFile(path.join(repo, 'docs', 'builder.md'), 'utf8');
    const port = await freePort();
    let index = 0;
    const config = /## Replicas behind one URL[^]*?```haproxy\n([^]*?)```/.exec(doc)[1]
      .replace('bind 127.0.0.1:7420', `bind 127.0.0.1:${port}`)
      .replace(/10\.0\.3\.1\d:7420/g, () => new URL(replicas[index++].url).host);
    await writeFile(path.join(work, 'haproxy.cfg'), config);
    const haproxy = spawn('haproxy', ['-db', '-f', path.join(work, 'haproxy.cfg')], { stdio: 'ignore' });
    children.push(haproxy);
    const lb = `http://127.0.0.1:${port}`;
    const call = async (url, init = {}) => {
      const response = await globalThis.fetch(url, { ...init, headers: { authorization: `Bearer ${token}`, ...(init.body ? { 'content-type': 'application/json' } : {}), ...init.headers } });
      return { builder: response.headers.get('x-builder'), body: await response.json() };
    };
    // Healthy behind the balancer: three replicas seen in a row.
    for (let seen = new Set(); seen.size < 3;) {
      seen = new Set();
      for (let i = 0; i < 6; i += 1) seen.add(await call(`${lb}/v1/health`).then((answer) => answer.builder, () => undefined));
      seen.delete(null);
      seen.delete(undefined);
      if (seen.size < 3) await sleep(300);
    }

    // The package: an install script that runs until it is killed.
    const pkg = path.join(work, 'forever');
    await mkdir(pkg, { recursive: true });
    await writeFile(path.join(pkg, 'package.json'), JSON.stringify({ name: 'forever', version: '1.0.0', scripts: { install: 'node -e "console.log(\'UP\'); setInterval(() => {}, 1000)"' } }));
    const packed = spawn('npm', ['pack', '--silent', '--pack-destination', work], { cwd: pkg, stdio: 'ignore' });
    await once(packed, 'exit');
    const body = await readFile(path.join(work, 'forever-1.0.0.tgz'));
    const sha256 = createHash('sha256').update(body).digest('hex');
    const source = createServer((_request, response) => response.writeHead(200, { 'content-length': body.length }).end(body));
    await new Promise((resolve) => source.listen(0, '127.0.0.1', resolve));
    const target = { os: process.platform, cpu: process.arch, node: process.versions.node };

    const startBuild = async (key) => {
      const { body: created } = await call(`${lb}/v1/builds`, { method: 'POST', headers: { 'idempotency-key': key }, body: JSON.stringify({ source: { url: `http://127.0.0.1:${source.address().port}/forever.tgz`, sha256 }, target }) });
      for (;;) {
        const { body: record } = await call(`${lb}/v1/builds/${created.id}`);
        if (record.state === 'running' && record.lastSeq > 2) return record;
        await sleep(100);
      }
    };
    const direct = [];
    const forwarded = [];
    try {
      for (let round = 0; round < ROUNDS; round += 1) {
        const first = await startBuild(`direct-${round}-${Date.now()}`);
        const owner = replicas.find((replica) => replica.name === first.builder);
        let asked = performance.now();
        const straight = await call(`${owner.url}/v1/builds/${first.id}`, { method: 'DELETE' });
        direct.push(performance.now() - asked);
        if (straight.body.state !== 'cancelled') throw new Error(`direct cancel: ${JSON.stringify(straight.body).slice(0, 300)}`);

        const second = await startBuild(`forwarded-${round}-${Date.now()}`);
        // Round robin: after the owner answered a read, the next request goes to another replica.
        while ((await call(`${lb}/v1/builds/${second.id}`)).builder !== second.builder);
        asked = performance.now();
        const through = await call(`${lb}/v1/builds/${second.id}`, { method: 'DELETE' });
        forwarded.push(performance.now() - asked);
        if (through.body.state !== 'cancelled' || through.builder === second.builder) throw new Error(`forwarded cancel: answered by ${through.builder}: ${JSON.stringify(through.body).slice(0, 300)}`);
      }
    } finally {
      source.closeAllConnections();
      source.close();
    }
    const worst = Math.max(...forwarded);
    log(`DELETE of a running build through HAProxy, landing on a replica that does not run it (forwarded), ${ROUNDS} rounds: median ${median(forwarded).toFixed(0)} ms, worst ${worst.toFixed(0)} ms (goal ≤ ${GOAL_MS} ms) ${worst <= GOAL_MS ? '✔' : '✖'}`);
    log(`the same DELETE sent straight to the owner: median ${median(direct).toFixed(0)} ms; forwarded ÷ direct = ${(median(forwarded) / median(direct)).toFixed(2)}`);
  } finally {
    stopAll();
    await rm(work, { recursive: true, force: true }).catch(() => undefined);
  }
}
