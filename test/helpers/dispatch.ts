/**
 * A dispatch "world" for tests, all real parts: s3rver (both buckets), an HTTP proxy in front
 * of it that can corrupt results on their way in, and builder services as child processes (the
 * real bin) serving different targets by configuration, with no AWS credentials in their env.
 */
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createBuilderClient, type BuilderClient } from '../../lib/builder/client.js';
import type { Pool } from '../../lib/dispatch/plan.js';
import { S3Store } from '../../lib/storage/s3-store.js';
import { parseTarget } from '../../lib/target.js';
import { childEnv, newToken, spawnBuilder, type ChildBuilder } from './builder.js';
import { packageTar, testCacheDir } from './packages.js';
import { startS3, type S3TestServer } from './s3.js';
import { tgz } from './builder.js';

/** The Node version every test target pins, so no builder fetches a runtime. */
export const NODE = process.versions.node;

/**
 * A hook module for test builders: a package that contains a file `SLOW` gets an npm step that
 * sleeps for two minutes (a real process in npm's process group), to cancel mid-build —
 * except on builders started with BD_TEST_IGNORE_SLOW. A package that contains `UNLOCK` gets a
 * devDependency the lockfile does not know, added on the builder, so `npm ci` fails there with
 * its "not in sync" usage error (the cause followed by ~90 lines of usage text).
 */
export const SLOW_HOOK = `import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
export default {
  'npm.configure': (_scaffold, _config, spawn) => {
    if (existsSync(path.join(spawn.dirs.package, 'SLOW')) && !process.env.BD_TEST_IGNORE_SLOW) spawn.argv = ['-e', 'setTimeout(() => {}, 120000)'];
    if (existsSync(path.join(spawn.dirs.package, 'UNLOCK'))) {
      const file = path.join(spawn.dirs.package, 'package.json');
      writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), devDependencies: { ms: '2.1.3' } }));
    }
  },
};
`;

export interface RunningTestBuilder extends ChildBuilder {
  token: string;
  client: BuilderClient;
  targets: string[];
  stop(): Promise<void>;
}

/** `bundle-dispatch builder` as a child process serving `targets`; stop() sends SIGTERM and waits. */
export async function startChildBuilder(options: { root: string; name: string; targets: string[]; hooks?: string; slots?: number; env?: NodeJS.ProcessEnv }): Promise<RunningTestBuilder> {
  const token = newToken();
  const dir = path.join(options.root, options.name);
  await mkdir(dir, { recursive: true });
  const env = childEnv({
    BUNDLE_DISPATCH_BUILDER_TOKENS: token,
    BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: 'off',
    BUNDLE_DISPATCH_BUILDER_ID: options.name,
    BUNDLE_DISPATCH_WORK_DIR: path.join(dir, 'work'),
    BUNDLE_DISPATCH_BUILDER_SHUTDOWN_GRACE: '0',
    CI: 'true',
    ...options.env,
  });
  const child = await spawnBuilder([
    '--store', path.join(dir, 'store'),
    '--targets', ...options.targets,
    '--slots', String(options.slots ?? 2),
    '--cache-dir', testCacheDir,
    '--log-level', 'warn',
    ...(options.hooks ? ['--hooks', options.hooks] : []),
  ], env);
  return {
    ...child,
    token,
    client: createBuilderClient({ url: child.url, token }),
    targets: options.targets,
    async stop() {
      if (child.child.exitCode === null && child.child.signalCode === null) child.child.kill('SIGTERM');
      await child.exited;
    },
  };
}

/** A transparent HTTP proxy to `target`; PUTs whose path contains `corrupt` get one byte flipped. */
export interface S3Proxy {
  url: string;
  /** Path fragments whose PUT bodies get corrupted. */
  corrupt: Set<string>;
  stop(): Promise<void>;
}

export async function startS3Proxy(target: string): Promise<S3Proxy> {
  const upstream = new URL(target);
  const corrupt = new Set<string>();
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      let body = Buffer.concat(chunks);
      if (request.method === 'PUT' && [...corrupt].some((fragment) => request.url?.includes(fragment)) && body.length > 20) {
        body = Buffer.from(body);
        body[10] = (body[10] ?? 0) ^ 0xff;
      }
      const forward = httpRequest({ host: upstream.hostname, port: upstream.port, method: request.method, path: request.url, headers: request.headers }, (answer) => {
        response.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(response);
      });
      forward.on('error', () => response.destroy());
      forward.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    corrupt,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export interface DispatchWorld {
  s3: S3TestServer;
  proxy: S3Proxy;
  /** Stores on s3rver, reached through the proxy (what dispatch uses). */
  sources: S3Store;
  releases: S3Store;
  /** Builder A serves linux-x64, builder B linux-arm64 (cross: nothing to compile). */
  a: RunningTestBuilder;
  b: RunningTestBuilder;
  pools(extra?: Partial<Record<string, Array<{ url: string; client: BuilderClient }>>>): Pool[];
  stop(): Promise<void>;
}

export async function startDispatchWorld(root: string): Promise<DispatchWorld> {
  const s3 = await startS3({ buckets: ['sources', 'releases'] });
  const proxy = await startS3Proxy(s3.endpoint);
  const storeOptions = { ...s3.storeOptions, endpoint: proxy.url };
  const sources = new S3Store({ ...storeOptions, bucket: 'sources' });
  const releases = new S3Store({ ...storeOptions, bucket: 'releases' });
  const hooks = path.join(root, 'slow-hook.mjs');
  await writeFile(hooks, SLOW_HOOK);
  const [a, b] = await Promise.all([
    startChildBuilder({ root, name: 'builder-a', targets: ['linux-x64'], hooks }),
    startChildBuilder({ root, name: 'builder-b', targets: ['linux-arm64'], hooks }),
  ]);
  return {
    s3, proxy, sources, releases, a, b,
    pools(extra = {}) {
      const pools: Pool[] = [
        { platform: parseTarget('linux-x64'), builders: [{ url: a.url, client: a.client }] },
        { platform: parseTarget('linux-arm64'), builders: [{ url: b.url, client: b.client }] },
      ];
      for (const [platform, builders] of Object.entries(extra)) {
        const pool = pools.find((candidate) => candidate.platform.cpu === parseTarget(platform).cpu);
        if (pool && builders) pool.builders = builders;
      }
      return pools;
    },
    async stop() {
      sources.close();
      releases.close();
      await Promise.all([a.stop(), b.stop()]);
      await proxy.stop();
      await s3.stop();
    },
  };
}

/** A small package (no dependencies) as a .tgz file; `files` may add `SLOW` etc. */
export async function writeFixture(file: string, packageJson: Record<string, unknown>, files: Record<string, string> = {}): Promise<string> {
  const { body } = await tgz(packageTar(packageJson, { 'index.js': 'module.exports = 42;\n', ...files }));
  await writeFile(file, body);
  return file;
}
