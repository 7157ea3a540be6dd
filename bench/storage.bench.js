// Storage bench: 1 GiB upload, download and copy through our S3 store ÷ the same operation done
// directly with the AWS SDK (lib-storage Upload with the same part size and queue, GetObject,
// CopyObject), against one s3rver started in this process on port 0; plus the peak RSS of the
// process that moves 1 GiB through our store. Targets: ratios ≥ 0.9, peak RSS < 200 MB.
//
// How it measures, and why:
// - s3rver runs here, in the bench process. Each measured transfer runs in a fresh child
//   process (this same file with --child), SDK and ours alike: the client's hashing then does
//   not compete with the server for one event loop, and the child's peak RSS
//   (process.resourceUsage().maxRSS, exact, not sampled) is the memory of the transfer alone.
// - SDK and ours alternate A-B-B-A and each side's times are summed, so drift (page cache,
//   CPU frequency) hits both sides equally.
// - s3rver's files go to /dev/shm when it exists, so the disk's writeback does not decide the
//   ratios; the temp directory is removed at the end.
import { execFile } from 'node:child_process';
import { Buffer } from 'node:buffer';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const SIZE = 1024 * 1024 * 1024;
const CHUNK = 1024 * 1024;
const QUEUE_SIZE = 4;
const BUCKET = 'bench';
const MB = 1024 * 1024;
const here = fileURLToPath(import.meta.url);
/**
 * A-B-B-A rounds for the 1 GiB uploads (~15 s each here; single runs swing ±15 %, so one round
 * decides little), the downloads (~3.5 s) and the server-side copies (~0.5 s, the noisiest).
 */
const UPLOAD_ROUNDS = Math.max(1, Number(process.env.STORAGE_BENCH_UPLOAD_ROUNDS) || 2);
const DOWNLOAD_ROUNDS = 3;
const COPY_ROUNDS = 4;

/** One pseudo-random MiB from a 32-byte seed (AES-CTR over zeros), the same in every process. */
function makeBlock(seed) {
  return createCipheriv('aes-256-ctr', Buffer.from(seed, 'hex'), Buffer.alloc(16)).update(Buffer.alloc(CHUNK));
}

/** 1 GiB as a stream of 1 MiB chunks: one pseudo-random MiB repeated. */
function generate(block) {
  return Readable.from(
    (function* chunks() {
      for (let sent = 0; sent < SIZE; sent += CHUNK) yield block;
    })(),
    { objectMode: false },
  );
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function sink() {
  return new Writable({ write: (_chunk, _encoding, callback) => callback() });
}

/** One measured operation, in a child process. Prints {seconds, maxRssMB} as JSON. */
async function child({ op, connection, seed, sha256, key, source }) {
  process.removeAllListeners('warning');
  process.on('warning', () => undefined); // the SDK's Node-version notice would garble the JSON
  const [{ CopyObjectCommand, GetObjectCommand, S3Client }, { Upload }, { S3Store, DEFAULT_PART_SIZE }] = await Promise.all([
    import('@aws-sdk/client-s3'),
    import('@aws-sdk/lib-storage'),
    import('../build/lib/storage/s3-store.js'),
  ]);
  const block = makeBlock(seed);
  const client = new S3Client({ ...connection, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
  const store = new S3Store({ ...connection, bucket: BUCKET, partSize: DEFAULT_PART_SIZE, queueSize: QUEUE_SIZE });
  const operations = {
    'sdk-upload': () => new Upload({ client, params: { Bucket: BUCKET, Key: key, Body: generate(block) }, partSize: DEFAULT_PART_SIZE, queueSize: QUEUE_SIZE }).done(),
    'ours-upload': () => store.put(key, generate(block), { sha256 }),
    'ours-upload-unknown': () => store.put(key, generate(block)),
    'sdk-download': async () => {
      const output = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: source }));
      await pipeline(output.Body, sink());
    },
    'ours-download': async () => {
      const { body } = await store.get(source, { verify: true });
      await pipeline(body, sink());
    },
    'ours-download-noverify': async () => {
      const { body } = await store.get(source);
      await pipeline(body, sink());
    },
    'sdk-copy': () => client.send(new CopyObjectCommand({ Bucket: BUCKET, Key: key, CopySource: `${BUCKET}/${source}` })),
    'ours-copy': () => store.copy(source, key),
  };
  const start = process.hrtime.bigint();
  await operations[op]();
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  store.close();
  client.destroy();
  const usage = process.resourceUsage();
  process.stdout.write(JSON.stringify({ seconds, maxRssMB: usage.maxRSS / 1024, cpuSeconds: (usage.userCPUTime + usage.systemCPUTime) / 1e6 }));
}

export async function run({ log }) {
  const { default: S3rver } = await import('s3rver');
  const { S3Client, DeleteObjectCommand } = await import('@aws-sdk/client-s3');
  const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
  const directory = await mkdtemp(path.join(base, 'bd-bench-s3rver-'));
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: BUCKET }] });
  const { port } = await server.run();
  const connection = {
    endpoint: `http://127.0.0.1:${port}`,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  };
  const admin = new S3Client({ ...connection, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
  const seed = randomBytes(32).toString('hex');
  const block = makeBlock(seed);
  const hash = createHash('sha256');
  for (let sent = 0; sent < SIZE; sent += CHUNK) hash.update(block);
  const sha256 = hash.digest('hex');
  const exec = promisify(execFile);
  const measure = async (op, extra = {}) => {
    const spec = JSON.stringify({ op, connection, seed, sha256, ...extra });
    const { stdout } = await exec(process.execPath, [here, '--child', spec], { maxBuffer: 16 * MB, env: process.env });
    return JSON.parse(stdout);
  };
  const remove = (Key) => admin.send(new DeleteObjectCommand({ Bucket: BUCKET, Key }));
  /** A-B-B-A, `rounds` times; each side's mean seconds and max RSS. `after` cleans up between runs. */
  const abba = async (sdkOp, oursOp, extra, after, rounds = 1) => {
    const sides = { sdk: { seconds: 0, cpuSeconds: 0, maxRssMB: 0, runs: [] }, ours: { seconds: 0, cpuSeconds: 0, maxRssMB: 0, runs: [] } };
    for (let round = 0; round < rounds; round += 1) {
      for (const [side, op] of [['sdk', sdkOp], ['ours', oursOp], ['ours', oursOp], ['sdk', sdkOp]]) {
        const result = await measure(op, extra);
        sides[side].seconds += result.seconds / (2 * rounds);
        sides[side].cpuSeconds += result.cpuSeconds / (2 * rounds);
        sides[side].runs.push(result.seconds);
        sides[side].maxRssMB = Math.max(sides[side].maxRssMB, result.maxRssMB);
        await after?.();
      }
    }
    return sides;
  };

  const started = Date.now();
  try {
    log(`1 GiB generated stream, s3rver in this process (${connection.endpoint}, data in ${base}), part size 5 MiB × ${QUEUE_SIZE} in flight, each transfer in a fresh child process, runs A-B-B-A (uploads ×${UPLOAD_ROUNDS}, downloads ×${DOWNLOAD_ROUNDS}, copies ×${COPY_ROUNDS}).`);
    const rows = [];
    const mean = (name, { sdk, ours }, note) => rows.push({ name, sdk: sdk.seconds, ours: ours.seconds, sdkRuns: sdk.runs, oursRuns: ours.runs, sdkCpu: sdk.cpuSeconds, oursCpu: ours.cpuSeconds, sdkRss: sdk.maxRssMB, oursRss: ours.maxRssMB, note });
    // Uploads are the slow part (s3rver's MD5s and part rewrites): one round unless asked.
    const upload = await abba('sdk-upload', 'ours-upload', { key: 'up.bin' }, () => remove('up.bin'), UPLOAD_ROUNDS);
    mean('upload (sha256 known)', upload, 'hashes while streaming, checks before completing');
    const unknown = await measure('ours-upload-unknown', { key: 'up-unknown.bin' });
    await remove('up-unknown.bin');
    mean('upload (sha256 unknown)', { sdk: upload.sdk, ours: unknown }, 'one run: staging key + CopyObject (s3rver re-reads it for MD5)');
    await measure('ours-upload', { key: 'source.bin' });
    const download = await abba('sdk-download', 'ours-download', { source: 'source.bin' }, undefined, DOWNLOAD_ROUNDS);
    mean('download', download, 'verifies sha256 while reading');
    const plain = await abba('sdk-download', 'ours-download-noverify', { source: 'source.bin' }, undefined, DOWNLOAD_ROUNDS);
    mean('download (no verify)', plain, 'to show what the hash costs');
    const copy = await abba('sdk-copy', 'ours-copy', { source: 'source.bin', key: 'copy.bin' }, () => remove('copy.bin'), COPY_ROUNDS);
    mean('copy (server-side)', copy, 'CopyObject + 2 HEADs');

    const mib = SIZE / MB;
    log('');
    log('| operation               | SDK MiB/s | ours MiB/s | ratio (≥0.9) | ratio of medians | client CPU s, SDK / ours | SDK peak RSS | ours peak RSS (<200 MB) | note');
    log('|-------------------------|----------:|-----------:|-------------:|-----------------:|-------------------------:|-------------:|------------------------:|-----');
    for (const row of rows) {
      const ratio = row.sdk / row.ours;
      const medianRatio = row.sdkRuns && row.oursRuns ? median(row.sdkRuns) / median(row.oursRuns) : undefined;
      const cells = [
        row.name.padEnd(23),
        (mib / row.sdk).toFixed(1).padStart(9),
        (mib / row.ours).toFixed(1).padStart(10),
        `${ratio.toFixed(2)} ${ratio >= 0.9 ? '✓' : '✗'}`.padStart(12),
        (medianRatio === undefined ? '–' : `${medianRatio.toFixed(2)} ${medianRatio >= 0.9 ? '✓' : '✗'}`).padStart(19),
        `${row.sdkCpu.toFixed(2)} / ${row.oursCpu.toFixed(2)}`.padStart(24),
        `${row.sdkRss.toFixed(0)} MB`.padStart(12),
        `${row.oursRss.toFixed(0)} MB ${row.oursRss < 200 ? '✓' : '✗'}`.padStart(23),
        row.note,
      ];
      log(`| ${cells.join(' | ')}`);
    }
    log('');
    log('seconds per run, in the order run:');
    for (const [name, sides] of [['upload', upload], ['download', download], ['download (no verify)', plain], ['copy', copy]]) {
      log(`  ${name.padEnd(21)} SDK ${sides.sdk.runs.map((t) => t.toFixed(2)).join(' ')} · ours ${sides.ours.runs.map((t) => t.toFixed(2)).join(' ')}`);
    }
    log(`  upload with unknown sha256: ${unknown.seconds.toFixed(2)}`);
    log('');
    log(`ratio = our throughput ÷ the SDK's (mean time per side); ratio of medians = the same from each side's median run, which one stalled run of s3rver (they happen: see the copies) does not move; client CPU = user + system seconds of the child doing the transfer; peak RSS = its maxRSS. Total ${((Date.now() - started) / 1000).toFixed(0)} s.`);
  } finally {
    admin.destroy();
    server.httpServer?.closeAllConnections();
    await server.close();
    await rm(directory, { recursive: true, force: true });
  }
}

if (process.argv[1] === here && process.argv[2] === '--child') {
  await child(JSON.parse(process.argv[3] ?? '{}'));
}
