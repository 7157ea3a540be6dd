/**
 * Builders for tests: in this process (`startTestBuilder`) or as the real bin in a child
 * process (`spawnBuilder`), both on 127.0.0.1 port 0, plus a small HTTP server that serves
 * source tarballs (`startSourceServer`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { chmod, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { createBuilderClient, type BuilderClient } from '../../lib/builder/client.js';
import type { AddressGuard } from '../../lib/builder/network.js';
import { startBuilder, type RunningBuilder } from '../../lib/builder/server.js';
import { loadOrCreateSigningKey, type SigningKey } from '../../lib/provenance/keys.js';
import { servedTargets } from '../../lib/builder/targets.js';
import type { TargetSpec } from '../../lib/protocol.js';
import { DirStore, type ObjectStore } from '../../lib/storage/index.js';
import { hostTarget } from '../../lib/target.js';
import { createScaffold } from '../../lib/workflow/scaffold.js';
import { repoRoot, tempDir, testCacheDir, testRuntimeCacheDir } from './packages.js';

/**
 * Uids the test builders run builds as when the tests run as root. Each test file takes its
 * own range: a builder kills leftover processes of its range when it starts.
 */
export const TEST_UID_RANGES = {
  api: { first: 61000, last: 61009 },
  concurrency: { first: 61010, last: 61019 },
  restart: { first: 61020, last: 61029 },
  hostile: { first: 61030, last: 61039 },
  bench: { first: 61040, last: 61049 },
  limits: { first: 61050, last: 61059 },
  replicaA: { first: 61060, last: 61064 },
  replicaB: { first: 61065, last: 61069 },
  dashboard: { first: 61070, last: 61079 },
  records: { first: 61080, last: 61084 },
  network: { first: 61085, last: 61089 },
  rootDefaults: { first: 61090, last: 61094 },
  provenance: { first: 61095, last: 61099 },
  tokens: { first: 61210, last: 61214 },
  newcomer: { first: 61215, last: 61219 },
  windows: { first: 61220, last: 61224 },
  // The builders test/cli/newcomer.test.ts starts through the bin (their start-up sweep must not reach other files' builds).
  newcomerBin: { first: 61225, last: 61229 },
  drain: { first: 61230, last: 61234 },
  probes: { first: 61235, last: 61239 },
  metrics: { first: 61240, last: 61244 },
  fleet1: { first: 61245, last: 61249 },
  fleet2: { first: 61250, last: 61254 },
  fleet3: { first: 61255, last: 61259 },
  image: { first: 61260, last: 61264 },
  claims: { first: 61265, last: 61269 },
  darwin: { first: 61270, last: 61274 },
} as const;
export const isRoot = process.getuid?.() === 0;

/** The host target with the running Node pinned, so builds never fetch a runtime. */
export function hostTargetSpec(): TargetSpec {
  const host = hostTarget();
  return { os: host.os, cpu: host.cpu, ...(host.libc ? { libc: host.libc } : {}), node: process.versions.node };
}

export function newToken(): string {
  return `bdt_${randomBytes(24).toString('hex')}`;
}

/** A gzipped package tar and its sha256, from a tar stream (test/helpers/packages.ts packageTar). */
export async function tgz(tar: Readable): Promise<{ body: Buffer; sha256: string }> {
  const chunks: Buffer[] = [];
  for await (const chunk of tar) chunks.push(Buffer.from(chunk as Buffer));
  const body = gzipSync(Buffer.concat(chunks));
  return { body, sha256: createHash('sha256').update(body).digest('hex') };
}

export interface SourceServer {
  url: string;
  /** Serves `body` at `/<name>` and returns its URL. */
  add(name: string, body: Buffer): string;
  stop(): Promise<void>;
}

/** A plain HTTP server for source tarballs (what a presigned GET URL stands in for). */
export async function startSourceServer(): Promise<SourceServer> {
  const files = new Map<string, Buffer>();
  const server: Server = createServer((request, response) => {
    const body = files.get(request.url?.split('?')[0] ?? '');
    if (!body) {
      response.writeHead(404).end('not found');
      return;
    }
    response.writeHead(200, { 'content-type': 'application/gzip', 'content-length': body.length }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    add(name, body) {
      files.set(`/${name}`, body);
      return `${url}/${name}`;
    },
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export interface TestBuilder {
  url: string;
  token: string;
  client: BuilderClient;
  builder: RunningBuilder;
  store: ObjectStore;
  dir: string;
  logs: string[];
  /** The key it signs provenance with (`<dir>/signing-key.pem`, public key beside it). */
  signingKey: SigningKey;
  stop(): Promise<void>;
}

/** A builder in this process: directory store in a temp dir, the tests' npm cache. */
export async function startTestBuilder(options: { uids: { first: number; last: number }; slots?: number; maxBodyBytes?: number; buildTimeoutMs?: number; sseHeartbeatMs?: number; minFreeDisk?: number; store?: ObjectStore; builderId?: string; addressGuard?: AddressGuard; metricsPort?: number | false; token?: string; maxQueued?: number }): Promise<TestBuilder> {
  const root = await tempDir('bd-builder-');
  // Build users pass through to their workdirs (a builder refuses a work dir they cannot reach).
  await chmod(root.dir, 0o711);
  // Replicas of one pool share their tokens (a cancel one forwards to another carries the caller's).
  const token = options.token ?? newToken();
  const store = options.store ?? new DirStore({ root: path.join(root.dir, 'store') });
  const workDir = path.join(root.dir, 'work');
  await mkdir(testCacheDir, { recursive: true });
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/TOKEN|SECRET|AWS_/i.test(name)));
  const scaffold = createScaffold({}, [], {
    env,
    workRoot: path.join(workDir, 'builds'),
    npmCacheDir: path.join(testCacheDir, 'npm'),
    runtimeCacheDir: testRuntimeCacheDir,
  });
  const logs: string[] = [];
  const logStream = new (await import('node:stream')).Writable({
    write(chunk: Buffer, _encoding, callback) {
      logs.push(chunk.toString());
      callback();
    },
  });
  const signingKey = await loadOrCreateSigningKey(path.join(root.dir, 'signing-key.pem'));
  const builder = await startBuilder({
    host: '127.0.0.1',
    port: 0,
    tokens: [token],
    signingKey,
    store,
    scaffold,
    builderId: options.builderId ?? 'test-builder',
    slots: options.slots ?? 2,
    targets: servedTargets([], hostTarget()),
    workDir,
    buildTimeoutMs: options.buildTimeoutMs ?? 120_000,
    maxSourceBytes: 10 * 1024 * 1024,
    maxBodyBytes: options.maxBodyBytes ?? 16 * 1024,
    minFreeDisk: options.minFreeDisk ?? 1024 * 1024,
    // Sources and outputs in tests live on 127.0.0.1 (source servers, s3rver): allowed explicitly,
    // the default stays public-only.
    allowSources: ['127.0.0.1'],
    ...(options.addressGuard ? { addressGuard: options.addressGuard } : {}),
    ...(options.metricsPort !== undefined ? { metricsPort: options.metricsPort } : {}),
    ...(options.maxQueued !== undefined ? { maxQueued: options.maxQueued } : {}),
    ...(isRoot ? { uidRange: options.uids } : {}),
    heartbeatMs: 1000,
    logStream,
    logLevel: 'debug',
    ...(options.sseHeartbeatMs ? { sseHeartbeatMs: options.sseHeartbeatMs } : {}),
    version: '0.0.0-test',
    npmVersion: 'test',
    runtimes: [process.versions.node],
  });
  return {
    url: builder.url,
    token,
    client: createBuilderClient({ url: builder.url, token }),
    builder,
    store,
    dir: root.dir,
    logs,
    signingKey,
    async stop() {
      await builder.stop(0);
      await root.remove();
    },
  };
}

export interface ChildBuilder {
  url: string;
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code or signal. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** The signing key of child builders whose test does not give one (shared; generated by the first). */
export const TEST_SIGNING_KEY = path.join(tmpdir(), 'bd-test-signing', 'builder-signing-key.pem');

/** The real bin (`node bin/bundle-dispatch.js builder --port 0 …`) in a child process; needs `npm run build`. */
export async function spawnBuilder(args: string[], env: NodeJS.ProcessEnv, options: { uid?: number; repo?: string } = {}): Promise<ChildBuilder> {
  const child = spawn(process.execPath, [path.join(options.repo ?? repoRoot, 'bin', 'bundle-dispatch.js'), 'builder', '--port', '0', ...args], {
    // Test sources and outputs are on 127.0.0.1: allowed explicitly (unless the test sets it).
    // The signing key goes to the tests' own place, not the default under the user's home.
    env: { BUNDLE_DISPATCH_BUILDER_ALLOW_SOURCES: '127.0.0.1', BUNDLE_DISPATCH_BUILDER_SIGNING_KEY: TEST_SIGNING_KEY, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    // An ordinary user's builder (as root the builder would use build users of its own).
    ...(options.uid !== undefined ? { uid: options.uid, gid: options.uid } : {}),
  });
  let stdout = '';
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      const first = stdout.split('\n');
      if (first.length > 1) resolve(first[0] as string);
    });
    void exited.then(({ code }) => reject(new Error(`builder exited (${code}) before listening:\n${stderr}`)));
  });
  return { url, child, stdout: () => stdout, stderr: () => stderr, exited };
}

/** Environment for a child builder: the test process's, minus secrets, plus what is given. */
export function childEnv(extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const base = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/TOKEN|SECRET|AWS_|^VITEST|^NODE_OPTIONS$/i.test(name)));
  return { ...base, ...extra };
}

/** SIGKILLs the child builders still running (a test's afterAll) and waits for their exits. */
export async function killChildBuilders(children: readonly ChildBuilder[]): Promise<void> {
  await Promise.all(children.filter(({ child }) => child.exitCode === null && child.signalCode === null).map(async ({ child, exited }) => {
    child.kill('SIGKILL');
    await exited;
  }));
}

/** A loopback port free right now, for servers that cannot listen on port 0 (git daemon, HAProxy's frontend). */
export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createNetServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Waits until `check` returns a value (polling). */
export async function waitFor<T>(check: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error('waitFor: timed out');
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
