import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, mkdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { pack as tarPack, extract as tarExtract } from 'tar-stream';
import { hostTarget } from '../../lib/target.js';
import { createScaffold, type Scaffold, type ScaffoldEnvironment } from '../../lib/workflow/scaffold.js';
import type { BuildOverrides, BuildSummary, HookModule } from '../../lib/workflow/types.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/**
 * Caches the tests own, kept between runs so the registry is asked once per machine. They live
 * under the system tmp dir, not in the checkout: builds that run as an unprivileged user must be
 * able to pass through every parent directory, and a checkout may sit in a 0700 directory.
 */
export const testCacheRoot = process.env.BUNDLE_DISPATCH_TEST_CACHE ?? path.join(tmpdir(), 'bundle-dispatch-test-cache');
export const testCacheDir = path.join(testCacheRoot, 'cli');
/** Node runtimes fetched from the registry by tests. */
export const testRuntimeCacheDir = path.join(testCacheRoot, 'runtimes');
/** npm's cache for tests that run npm directly. */
export const testNpmCacheDir = path.join(testCacheRoot, 'npm');

/** An uncompressed npm-pack-style tar (`package/…`) made in memory from a package.json and files. */
export function packageTar(packageJson: Record<string, unknown>, files: Record<string, string | { content: string | Buffer; mode: number }> = {}): Readable {
  const tar = tarPack();
  tar.entry({ name: 'package/package.json', mode: 0o644 }, JSON.stringify(packageJson, null, 2));
  for (const [name, file] of Object.entries(files)) {
    const { content, mode } = typeof file === 'string' ? { content: file, mode: 0o644 } : file;
    tar.entry({ name: `package/${name}`, mode }, content);
  }
  tar.finalize();
  return tar as unknown as Readable;
}

/** A directory of test/fixtures as a package tarball stream (the files named; its package.json unless one is given). */
export async function fixtureTar(name: string, files: string[], packageJson?: Record<string, unknown>): Promise<Readable> {
  const dir = path.join(repoRoot, 'test', 'fixtures', name);
  const contents: Record<string, string> = {};
  for (const file of files) contents[file] = await readFile(path.join(dir, file), 'utf8');
  return packageTar(packageJson ?? (JSON.parse(await readFile(path.join(dir, 'package.json'), 'utf8')) as Record<string, unknown>), contents);
}

/** Reads a tar stream into a map of path → content (tests only: small bundles). */
export async function readTar(stream: Readable): Promise<Map<string, { content: Buffer; mode: number; mtime: Date | undefined }>> {
  const files = new Map<string, { content: Buffer; mode: number; mtime: Date | undefined }>();
  const extract = tarExtract();
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, body, next) => {
      const chunks: Buffer[] = [];
      body.on('data', (chunk: unknown) => {
        chunks.push(chunk as Buffer);
      });
      body.on('end', () => {
        files.set(header.name, { content: Buffer.concat(chunks), mode: header.mode ?? 0, mtime: header.mtime });
        next();
      });
      body.on('error', reject);
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
    stream.on('error', reject);
  });
  stream.pipe(extract);
  await done;
  return files;
}

export async function tempDir(prefix = 'bd-test-'): Promise<{ dir: string; remove: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** A scaffold whose workdirs live in `workRoot` and whose caches are the tests' own. */
export async function testScaffold(workRoot: string, defaults: BuildOverrides = {}, hooks: HookModule[] = [], env: NodeJS.ProcessEnv = process.env, environment: Partial<ScaffoldEnvironment> = {}): Promise<Scaffold> {
  await mkdir(testCacheDir, { recursive: true });
  // Builds for the host's own Node unless a test asks otherwise: the runtime rule is tested on
  // its own, and this keeps most tests from fetching runtimes.
  const withTarget: BuildOverrides = { ...defaults, target: defaults.target ?? { ...hostTarget(), node: process.versions.node } };
  return createScaffold(withTarget, hooks, {
    env,
    workRoot,
    npmCacheDir: path.join(testCacheDir, 'npm'),
    runtimeCacheDir: testRuntimeCacheDir,
    ...environment,
  });
}

/** Writes a tar stream gzipped to `file` and returns its tar's entries. */
export async function saveTgz(tar: Readable, file: string): Promise<Map<string, { content: Buffer; mode: number; mtime: Date | undefined }>> {
  await pipeline(tar, createGzip(), createWriteStream(file));
  return readTar(createReadStream(file).pipe(createGunzip()));
}

/** Hashes an uncompressed tar as it streams past (the bundle's tarSha256). */
export function hashingTar(stream: Readable): { stream: Readable; digest: () => string } {
  const hash = createHash('sha256');
  stream.on('data', (chunk: Buffer) => hash.update(chunk));
  return { stream, digest: () => hash.digest('hex') };
}

/**
 * Builds the same input in a scaffold whose workdirs live in `workRoot`, saving the bundle
 * beside it as `<workRoot>.tgz`: what determinism tests compare between two workdirs.
 */
export async function buildSaved(workRoot: string, input: () => Readable, environment: Partial<ScaffoldEnvironment> = {}): Promise<{ summary: BuildSummary; bundle: string; tarSha256: string; files: Awaited<ReturnType<typeof readTar>>; log: string }> {
  const scaffold = await testScaffold(workRoot, {}, [], process.env, environment);
  const lines: string[] = [];
  const result = await scaffold.run(input(), {}, { onEvent: (event) => { if (event.type === 'log') lines.push(event.message); } });
  const hashed = hashingTar(result.output);
  const bundle = `${workRoot}.tgz`;
  const files = await saveTgz(hashed.stream, bundle);
  await result.settled;
  return { summary: result.summary, bundle, tarSha256: hashed.digest(), files, log: lines.join('\n') };
}

/** Build intermediates of node-gyp, node-pre-gyp and cmake-js (see docs/runtimes.md). */
const INTERMEDIATE = /\/build-tmp-[^/]+\/|\/build\/(.*\/)?(obj\.target|obj|\.deps|CMakeFiles|node_gyp_bins)\/|\/build\/(.*\/)?(Makefile|config\.gypi|CMakeCache\.txt|cmake_install\.cmake|build\.ninja|\.ninja_deps|\.ninja_log|[^/]+\.(a|o|d|ar-file-list|stamp))$|\.(mk|Makefile)$/;

/** Entries of a bundle that are build intermediates or hold one of `paths` (workdirs). */
export function buildLeftovers(files: ReadonlyMap<string, { content: Buffer }>, paths: readonly string[]): string[] {
  return [...files].filter(([name, file]) => INTERMEDIATE.test(name) || paths.some((dir) => file.content.includes(dir))).map(([name]) => name);
}
