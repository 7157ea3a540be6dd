/**
 * A real S3-compatible server (s3rver) for tests, in this process on 127.0.0.1, port 0.
 *
 * @example
 * ```ts
 * const s3 = await startS3({ buckets: ['sources', 'results'] });
 * afterAll(() => s3.stop());
 * const store = new S3Store({ ...s3.storeOptions, bucket: 'sources' });
 * ```
 *
 * Credentials are S3RVER/S3RVER and are handed over explicitly (`credentials`), never put in
 * process.env, so they cannot leak into other tests. Listing more than one page needs
 * `--openssl-legacy-provider` (s3rver's continuation tokens use DES): vitest.config.ts sets it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import S3rver from 's3rver';

export const S3_CREDENTIALS = Object.freeze({ accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' });
export const S3_REGION = 'us-east-1';

export interface StartS3Options {
  /** Buckets to create before the server answers (default `['test']`). */
  buckets?: string[];
  /** Reuse a data directory (to restart a server over the same objects); else a fresh temp dir. */
  directory?: string;
  /** Port (default 0 = any free port). */
  port?: number;
}

export interface S3TestServer {
  /** `http://127.0.0.1:<port>` */
  endpoint: string;
  port: number;
  region: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  buckets: string[];
  /** Where s3rver keeps its files (kept by stop({ keepData: true }) for a restart). */
  directory: string;
  /** Options to spread into S3Store / S3Client settings: endpoint, region, path style, credentials. */
  storeOptions: { endpoint: string; region: string; forcePathStyle: true; credentials: { accessKeyId: string; secretAccessKey: string } };
  createBucket(name: string): Promise<void>;
  /** Drops open connections at once (a crash, as seen by clients) and stops listening. */
  kill(): Promise<void>;
  /** Stops the server and removes its data directory unless keepData. Safe to call twice. */
  stop(options?: { keepData?: boolean }): Promise<void>;
}

export async function startS3(options: StartS3Options = {}): Promise<S3TestServer> {
  const buckets = [...(options.buckets ?? ['test'])];
  const ownsDirectory = options.directory === undefined;
  const directory = options.directory ?? (await mkdtemp(path.join(tmpdir(), 'bd-s3rver-')));
  const server = new S3rver({
    address: '127.0.0.1',
    port: options.port ?? 0,
    silent: true,
    directory,
    resetOnClose: false,
    configureBuckets: buckets.map((name) => ({ name })),
  });
  const { port } = await server.run();
  const endpoint = `http://127.0.0.1:${port}`;
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    // Requests still in flight log after close() has ended the logger's transports.
    server.logger.silent = true;
    server.httpServer?.closeAllConnections();
    await server.close();
  };
  return {
    endpoint,
    port,
    region: S3_REGION,
    credentials: { ...S3_CREDENTIALS },
    buckets,
    directory,
    storeOptions: { endpoint, region: S3_REGION, forcePathStyle: true, credentials: { ...S3_CREDENTIALS } },
    async createBucket(name) {
      await server.store.putBucket(name);
      buckets.push(name);
    },
    kill: close,
    async stop({ keepData = false } = {}) {
      await close();
      if (!keepData && ownsDirectory) await rm(directory, { recursive: true, force: true });
    },
  };
}
