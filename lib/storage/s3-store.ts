/**
 * ObjectStore on S3 or any S3-compatible endpoint — the only module that imports `@aws-sdk/*`
 * (index.ts loads it with a dynamic import, so directory-only runs never load the SDK).
 *
 * - Integrity: the sha256 is user metadata `x-amz-meta-sha256`. Known up front → sent with
 *   the upload and checked while streaming (a mismatch stops the upload before the single
 *   PUT is sent / before the multipart upload is completed). Unknown and the body fits in one
 *   part → read into memory, hashed, one PUT. Unknown and larger → uploaded to a staging key
 *   while hashing, then CopyObject to the real key with the hash as new metadata, then the
 *   staging key is deleted.
 * - Retries: the client's own retries are off (`maxAttempts: 1`); every request this client
 *   sends, including lib-storage's part uploads, goes through p-retry, for 5xx, throttling
 *   and connection errors only, and only when its body can be sent again.
 */
import { randomUUID } from 'node:crypto';
import { addAbortSignal, type Readable } from 'node:stream';
import { createRequire } from 'node:module';
import type * as S3Sdk from '@aws-sdk/client-s3';
import type { S3Client as S3ClientType, S3ClientConfig } from '@aws-sdk/client-s3';
import pRetry from 'p-retry';
import { BundleError, abortError, throwIfAborted } from '../errors.js';
import { redact } from '../redact.js';
import {
  MAX_SINGLE_COPY_BYTES,
  RESERVED_SEGMENT,
  normalizeMetadata,
  normalizeSha256,
  validateKey,
  type CopyOptions,
  type GetOptions,
  type GetResult,
  type ListOptions,
  type ListPage,
  type ObjectInfo,
  type ObjectStore,
  type OperationOptions,
  type PresignOptions,
  type PresignPutOptions,
  type PresignedRequest,
  type PutBody,
  type PutOptions,
} from './object-store.js';
import { HashState, createVerifyStream, discardBody, hashChunks, peekChunks, toChunks } from './streams.js';
import { copyObject } from './copy.js';
import { SignedReader, signedReadSettings } from './s3-signed-read.js';

// The SDK is loaded through require, not import (an ESM import first runs Node's export scanner
// over its 270 KB CommonJS file), and only when a request needs it: reads with known
// credentials and region are signed here (./s3-signed-read.ts), so a cached re-run loads none
// of it. lib-storage (multipart uploads) and the presigner load where they are used.
let sdk: typeof S3Sdk | undefined;
const loadSdk = (): typeof S3Sdk => (sdk ??= createRequire(import.meta.url)('@aws-sdk/client-s3') as typeof S3Sdk);

export interface S3StoreOptions {
  bucket: string;
  /** Key prefix inside the bucket, so one bucket can hold several stores. */
  prefix?: string;
  /** S3-compatible endpoint URL (MinIO, s3rver, R2…); undefined = AWS. */
  endpoint?: string;
  /** Region; undefined lets the SDK resolve it (AWS_REGION, profile). */
  region?: string;
  /** Path-style URLs (`endpoint/bucket/key`), needed by most S3-compatible servers. */
  forcePathStyle?: boolean;
  /**
   * Leave undefined in real use: the SDK's default provider chain then finds credentials
   * (env, profile, SSO, instance role). Tests pass fixed ones here.
   */
  credentials?: S3ClientConfig['credentials'];
  /** Default presigned URL lifetime in seconds (3600; at most 604800 = 7 days). */
  presignExpiresIn?: number;
  /** Multipart part size in bytes (5 MiB, the minimum S3 allows; raise it for objects over ~48 GiB). */
  partSize?: number;
  /** Parts uploaded at once (4). Memory held ≈ partSize × (queueSize + 1). */
  queueSize?: number;
  /** Retries of a transient failure (4), with exponential backoff from retryDelay ms (250). */
  retries?: number;
  retryDelay?: number;
  /** Default for PutOptions.immutable (false). */
  immutable?: boolean;
  /** Where AWS_* settings are read for the signed read path (process.env; the SDK reads process.env itself). */
  env?: NodeJS.ProcessEnv;
}

export const DEFAULT_PART_SIZE = 5 * 1024 * 1024;
const MIN_PART_SIZE = 5 * 1024 * 1024;
const MAX_PRESIGN_SECONDS = 7 * 24 * 3600;
const SHA256_META = 'sha256';
const AUTH_ERRORS = new Set([
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'AccessDenied',
  'Forbidden',
  'ExpiredToken',
  'InvalidToken',
  'TokenRefreshRequired',
  'CredentialsProviderError',
  'AuthorizationHeaderMalformed',
  'InvalidClientTokenId',
]);
const TRANSIENT_ERRORS = new Set([
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'TooManyRequestsException',
  'RequestTimeout',
  'RequestTimeoutException',
  'InternalError',
  'ServiceUnavailable',
  'TimeoutError',
]);
const TRANSIENT_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ECONNABORTED', 'UND_ERR_SOCKET']);
export const CREDENTIALS_HINT =
  'Credentials come from the AWS SDK default provider chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), ' +
  'AWS_PROFILE with ~/.aws/credentials or SSO, or the instance/container role. Check which one is in effect and that it may use this bucket.';

type Send = (command: unknown, options?: { abortSignal?: AbortSignal }) => Promise<unknown>;

interface ObjectOutput {
  ContentLength?: number;
  Metadata?: Record<string, string>;
  ContentType?: string;
  ETag?: string;
  LastModified?: Date;
}

interface SdkError {
  name?: string;
  message?: string;
  code?: string;
  cause?: { code?: string };
  $metadata?: { httpStatusCode?: number };
}

export class S3Store implements ObjectStore {
  readonly kind = 's3' as const;
  readonly location: string;
  readonly bucket: string;
  readonly prefix: string;
  readonly immutable: boolean;
  /** Stores with the same endpoint identity can copy server-side between each other. */
  readonly endpointId: string;
  #client: S3ClientType | undefined;
  readonly #clientOptions: S3StoreOptions;
  /** HEAD and GET signed here when region and credentials are known without the SDK. */
  readonly #reader: SignedReader | undefined;
  readonly #endpoint: string | undefined;
  readonly #partSize: number;
  readonly #queueSize: number;
  readonly #presignExpiresIn: number;

  /**
   * The region and credentials the SDK resolves (env, profile, SSO, instance role), asked
   * before any work so a store nobody configured is a configuration error, not a failed upload
   * "to retry later".
   */
  async checkConfiguration(options: OperationOptions = {}): Promise<void> {
    throwIfAborted(options.signal);
    // Region and credentials already known (given, or the environment's): nothing to resolve.
    if (this.#reader) return;
    const where = `the S3 store ${this.location}${this.#endpoint ? ` (endpoint ${this.#endpoint})` : ''}`;
    const region = await this.#sdkClient().config.region().catch(() => undefined);
    if (!region) {
      throw new BundleError('ERR_CONFIG', `No region for ${where}.`, {
        hint: this.#endpoint
          ? 'Set dispatch.s3.region in .bundlerc (an S3-compatible server takes any, e.g. "us-east-1"), or AWS_REGION.'
          : 'Set dispatch.s3.region in .bundlerc or AWS_REGION (the bucket\'s region, e.g. "eu-west-1"), or a profile with a region (AWS_PROFILE).',
      });
    }
    const credentials = await this.#sdkClient().config.credentials().catch((error: unknown) => error as Error);
    if (credentials instanceof Error || !credentials.accessKeyId) {
      throw new BundleError('ERR_CONFIG', `No credentials for ${where}: the AWS SDK found none (${credentials instanceof Error ? credentials.message : 'empty access key'}).`, {
        hint: 'Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (a profile in ~/.aws/credentials or SSO), or run where an instance or pod role provides them.',
      });
    }
  }

  constructor(options: S3StoreOptions) {
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(options.bucket)) {
      throw new BundleError('ERR_STORE_URL', `Invalid S3 bucket name ${JSON.stringify(options.bucket)}.`);
    }
    const prefix = (options.prefix ?? '').replace(/^\/+|\/+$/g, '');
    this.prefix = prefix ? `${validateKey(prefix)}/` : '';
    this.bucket = options.bucket;
    this.location = `s3://${this.bucket}/${this.prefix}`;
    this.immutable = options.immutable ?? false;
    this.#partSize = Math.max(MIN_PART_SIZE, options.partSize ?? DEFAULT_PART_SIZE);
    this.#queueSize = Math.max(1, options.queueSize ?? 4);
    this.#presignExpiresIn = checkExpiry(options.presignExpiresIn ?? 3600);
    this.endpointId = JSON.stringify([options.endpoint ?? 'aws', options.region ?? '', options.forcePathStyle ?? false]);
    this.#endpoint = options.endpoint;
    this.#clientOptions = options;
    const settings = signedReadSettings(options, options.env ?? process.env);
    this.#reader = settings ? new SignedReader(settings, this.bucket) : undefined;
  }

  /** The SDK's client, made (and the SDK loaded) on first use. */
  #sdkClient(): S3ClientType {
    if (this.#client) return this.#client;
    const options = this.#clientOptions;
    const client = new (loadSdk().S3Client)({
      ...(options.endpoint ? { endpoint: options.endpoint } : {}),
      ...(options.region ? { region: options.region } : {}),
      ...(options.forcePathStyle === undefined ? {} : { forcePathStyle: options.forcePathStyle }),
      ...(options.credentials ? { credentials: options.credentials } : {}),
      // Without these the SDK signs CRC32 checksums into presigned PUT URLs (real S3 then
      // rejects the upload) and sends aws-chunked bodies that S3-compatible servers mishandle.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 1,
    });
    const send = client.send.bind(client) as Send;
    // Own instance, patched once: lib-storage's part uploads get the same retry policy.
    (client as unknown as { send: Send }).send = (command, sendOptions) => {
      if (!isReplayable(command)) return send(command, sendOptions);
      return this.#retrying(() => send(command, sendOptions), sendOptions?.abortSignal);
    };
    this.#client = client;
    return client;
  }

  /** Retries a request on a transient failure: 5xx, throttling, a dropped connection. */
  #retrying<T>(attempt: () => Promise<T>, signal: AbortSignal | undefined): Promise<T> {
    return pRetry(attempt, {
      retries: this.#clientOptions.retries ?? 4,
      minTimeout: this.#clientOptions.retryDelay ?? 250,
      factor: 2,
      randomize: true,
      ...(signal ? { signal } : {}),
      shouldRetry: ({ error }) => !signal?.aborted && isTransient(error),
    });
  }

  /** A signed HEAD or GET (no SDK), retried and its failure mapped like the SDK's. */
  async #signedRead(reader: SignedReader, method: 'HEAD' | 'GET', key: string, operation: string, options: { range?: string; signal?: AbortSignal | undefined }) {
    throwIfAborted(options.signal);
    try {
      return await this.#retrying(() => reader.request(method, this.#full(key), { ...(options.range ? { range: options.range } : {}), ...(options.signal ? { signal: options.signal } : {}) }), options.signal);
    } catch (error) {
      throw this.#mapError(error, operation, key, options.signal);
    }
  }

  #full(key: string): string {
    return this.prefix + validateKey(key);
  }

  #where(key: string): string {
    return `${this.location}${key}`;
  }

  async #send<T>(command: unknown, operation: string, key: string | undefined, signal: AbortSignal | undefined): Promise<T> {
    throwIfAborted(signal);
    try {
      return (await (this.#sdkClient().send as unknown as Send)(command, signal ? { abortSignal: signal } : {})) as T;
    } catch (error) {
      throw this.#mapError(error, operation, key, signal);
    }
  }

  #mapError(error: unknown, operation: string, key: string | undefined, signal: AbortSignal | undefined): BundleError {
    if (error instanceof BundleError) return error;
    if (signal?.aborted) return abortError(signal);
    const e = (error ?? {}) as SdkError;
    const name = e.name ?? 'Error';
    const status = e.$metadata?.httpStatusCode;
    const where = key === undefined ? this.location : this.#where(key);
    const detail = redact(`${name}${status ? ` (HTTP ${status})` : ''}: ${e.message ?? String(error)}`);
    const details = { bucket: this.bucket, ...(key === undefined ? {} : { key }), operation, sdkError: name, ...(status ? { status } : {}) };
    if (name === 'AbortError') return new BundleError('ERR_ABORTED', `S3 ${operation} of ${where} was cancelled.`, { cause: error });
    if (AUTH_ERRORS.has(name) || status === 401 || status === 403) {
      return new BundleError('ERR_STORE_AUTH', `S3 refused the credentials for ${operation} of ${where}: ${detail}`, { cause: error, hint: CREDENTIALS_HINT, details });
    }
    if (name === 'NoSuchBucket') {
      return new BundleError('ERR_STORE_NOT_FOUND', `The S3 bucket ${JSON.stringify(this.bucket)} does not exist (${operation} of ${where}).`, {
        cause: error,
        hint: 'Create the bucket, or check the store URL, endpoint and region.',
        details,
      });
    }
    if (name === 'NoSuchKey' || name === 'NotFound' || status === 404) {
      return new BundleError('ERR_STORE_NOT_FOUND', `No object at ${where}.`, { cause: error, details });
    }
    if (name === 'PreconditionFailed' || name === 'ConditionalRequestConflict' || status === 412) {
      return new BundleError('ERR_STORE_EXISTS', `${where} already exists or changed during ${operation}.`, { cause: error, details });
    }
    return new BundleError('ERR_STORE_IO', `S3 ${operation} of ${where} failed: ${detail}`, {
      cause: error,
      ...(isTransient(error) ? { hint: 'The endpoint failed or was unreachable after several retries; check that it is up and try again.' } : {}),
      details,
    });
  }

  #info(key: string, output: ObjectOutput, size?: number): ObjectInfo {
    const metadata = { ...(output.Metadata ?? {}) };
    const sha256 = metadata[SHA256_META];
    delete metadata[SHA256_META];
    return {
      key,
      size: size ?? output.ContentLength ?? 0,
      ...(sha256 ? { sha256 } : {}),
      metadata,
      ...(output.ContentType ? { contentType: output.ContentType } : {}),
      ...(output.ETag ? { etag: output.ETag.replace(/"/g, '') } : {}),
      ...(output.LastModified ? { lastModified: output.LastModified } : {}),
    };
  }

  async head(key: string, options: OperationOptions = {}): Promise<ObjectInfo> {
    if (this.#reader) {
      const { output, body } = await this.#signedRead(this.#reader, 'HEAD', key, 'head', { signal: options.signal });
      body.resume();
      return this.#info(key, output);
    }
    const output = await this.#send<ObjectOutput>(new (loadSdk().HeadObjectCommand)({ Bucket: this.bucket, Key: this.#full(key) }), 'head', key, options.signal);
    return this.#info(key, output);
  }

  async #headOrUndefined(key: string, signal: AbortSignal | undefined): Promise<ObjectInfo | undefined> {
    try {
      return await this.head(key, signal ? { signal } : {});
    } catch (error) {
      if (error instanceof BundleError && error.code === 'ERR_STORE_NOT_FOUND' && (error.details as { sdkError?: string } | undefined)?.sdkError !== 'NoSuchBucket') return undefined;
      throw error;
    }
  }

  async exists(key: string, options: OperationOptions = {}): Promise<boolean> {
    return (await this.#headOrUndefined(key, options.signal)) !== undefined;
  }

  async put(key: string, body: PutBody, options: PutOptions = {}): Promise<ObjectInfo> {
    const { signal } = options;
    let fullKey: string;
    let expected: string | undefined;
    let metadata: Record<string, string>;
    try {
      fullKey = this.#full(key);
      expected = options.sha256 === undefined ? undefined : normalizeSha256(options.sha256);
      metadata = normalizeMetadata(options.metadata);
      throwIfAborted(signal);
    } catch (error) {
      discardBody(body);
      throw error;
    }
    const immutable = options.immutable ?? this.immutable;
    const where = this.#where(key);
    const state = new HashState();
    const total = options.size;
    const progress = (value: number): void => options.onProgress?.({ loaded: value, ...(total === undefined ? {} : { total }) });
    let whole: Readable | undefined;
    try {
      // s3rver ignores If-None-Match, so look first (while the body's first part is read);
      // real S3 also gets If-None-Match below.
      const lookup = immutable ? this.#headOrUndefined(key, signal) : undefined;
      lookup?.catch(() => undefined);
      const unknownLarge = { maxBytes: MAX_SINGLE_COPY_BYTES, maxBytesMessage: `${where}: a body over 5 GiB needs its sha256 up front (the staging copy is limited to 5 GiB).` };
      const chunks = hashChunks(toChunks(body), state, {
        location: where,
        ...(expected ? { expected } : unknownLarge),
        ...(signal ? { signal } : {}),
      });
      const peeked = await peekChunks(chunks, this.#partSize);
      const existing = await lookup;
      if (existing) {
        try {
          return await this.#sameOrRefuse(key, existing, peeked.whole(), expected, signal);
        } finally {
          discardBody(body); // the rest of a large body, unread when the hash was known
        }
      }
      const conditional = immutable ? { IfNoneMatch: '*' } : {};
      const common = { ...(options.contentType ? { ContentType: options.contentType } : {}) };
      if (peeked.ended) {
        // Fits in one part: the hash is known now, so one PUT carries it.
        const data = Buffer.concat(peeked.head);
        const sha256 = state.finish();
        const output = await this.#send<{ ETag?: string }>(
          new (loadSdk().PutObjectCommand)({ Bucket: this.bucket, Key: fullKey, Body: data, Metadata: { ...metadata, [SHA256_META]: sha256 }, ...common, ...conditional }),
          'upload',
          key,
          signal,
        );
        progress(data.length);
        return { key, size: data.length, sha256, metadata, ...(options.contentType ? { contentType: options.contentType } : {}), ...(output.ETag ? { etag: output.ETag.replace(/"/g, '') } : {}) };
      }
      whole = peeked.whole();
      if (expected) {
        const etag = await this.#upload(fullKey, key, whole, { ...metadata, [SHA256_META]: expected }, { ...common, ...conditional }, progress, signal);
        return { key, size: state.size, sha256: expected, metadata, ...(options.contentType ? { contentType: options.contentType } : {}), ...(etag ? { etag } : {}) };
      }
      const stagingKey = `${this.prefix}${RESERVED_SEGMENT}/staging/${randomUUID()}`;
      try {
        await this.#upload(stagingKey, key, whole, metadata, common, progress, signal);
        const sha256 = state.finish();
        if (immutable) {
          const existing = await this.#headOrUndefined(key, signal);
          if (existing) return await this.#sameOrRefuse(key, existing, '', sha256, signal);
        }
        const output = await this.#send<{ CopyObjectResult?: { ETag?: string } }>(
          new (loadSdk().CopyObjectCommand)({
            Bucket: this.bucket,
            Key: fullKey,
            CopySource: copySource(this.bucket, stagingKey),
            MetadataDirective: 'REPLACE',
            Metadata: { ...metadata, [SHA256_META]: sha256 },
            ...common,
            ...conditional,
          }),
          'upload (staging copy)',
          key,
          signal,
        );
        const etag = output.CopyObjectResult?.ETag?.replace(/"/g, '');
        return { key, size: state.size, sha256, metadata, ...(options.contentType ? { contentType: options.contentType } : {}), ...(etag ? { etag } : {}) };
      } finally {
        await this.#send(new (loadSdk().DeleteObjectCommand)({ Bucket: this.bucket, Key: stagingKey }), 'delete staging object', key, undefined).catch(() => undefined);
      }
    } catch (error) {
      whole?.destroy();
      discardBody(body);
      const mapped = this.#mapError(error, 'upload', key, signal);
      if (mapped.code === 'ERR_STORE_EXISTS' && immutable) {
        const existing = await this.#headOrUndefined(key, undefined).catch(() => undefined);
        const digest = expected ?? state.digest;
        if (existing?.sha256 && digest && existing.sha256 === digest) return existing;
      }
      throw mapped;
    }
  }

  /** Immutable put onto an existing key: fine if the content is the same, ERR_STORE_EXISTS if not. */
  async #sameOrRefuse(key: string, existing: ObjectInfo, body: PutBody, expected: string | undefined, signal: AbortSignal | undefined): Promise<ObjectInfo> {
    let digest = expected;
    if (digest === undefined && existing.sha256) {
      // Hash the body locally (nothing is uploaded) to compare it with the stored object.
      const state = new HashState();
      for await (const _chunk of hashChunks(toChunks(body), state, { location: this.#where(key), ...(signal ? { signal } : {}) }));
      digest = state.finish();
    } else {
      discardBody(body);
    }
    if (digest && existing.sha256 === digest) return existing;
    throw new BundleError('ERR_STORE_EXISTS', `${this.#where(key)} already exists with different content.`, {
      hint: 'Published objects are immutable; use a new version, or overwrite on purpose (--overwrite).',
      details: { key, existingSha256: existing.sha256, sha256: digest },
    });
  }

  async #upload(
    fullKey: string,
    key: string,
    body: Readable,
    metadata: Record<string, string>,
    extra: { ContentType?: string; IfNoneMatch?: string },
    onProgress: (loaded: number) => void,
    signal: AbortSignal | undefined,
  ): Promise<string | undefined> {
    throwIfAborted(signal);
    const { Upload } = await import('@aws-sdk/lib-storage');
    const upload = new Upload({
      client: this.#sdkClient(),
      params: { Bucket: this.bucket, Key: fullKey, Body: body, Metadata: metadata, ...extra },
      partSize: this.#partSize,
      queueSize: this.#queueSize,
      // lib-storage would abort the multipart upload itself, but when that abort fails too
      // (server gone; s3rver does not implement it) its error replaces the real one. We
      // abort ourselves, best effort, and report the original failure.
      leavePartsOnError: true,
    });
    upload.on('httpUploadProgress', (event) => {
      if (event.loaded !== undefined) onProgress(event.loaded);
    });
    const onAbort = (): void => void upload.abort().catch(() => undefined);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const output = await upload.done();
      return output.ETag?.replace(/"/g, '');
    } catch (error) {
      const uploadId = (upload as unknown as { uploadId?: string }).uploadId;
      if (uploadId) {
        await this.#send(new (loadSdk().AbortMultipartUploadCommand)({ Bucket: this.bucket, Key: fullKey, UploadId: uploadId }), 'abort upload', key, undefined).catch(() => undefined);
      }
      throw this.#mapError(error, 'upload', key, signal);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  async get(key: string, options: GetOptions = {}): Promise<GetResult> {
    const { signal, range } = options;
    const fullKey = this.#full(key);
    if (range && options.verify) throw new BundleError('ERR_STORE_IO', "A byte range cannot be verified against the whole object's sha256.");
    const rangeHeader = range ? `bytes=${range.start}-${range.end ?? ''}` : undefined;
    const output = this.#reader
      ? await this.#signedRead(this.#reader, 'GET', key, 'download', { ...(rangeHeader ? { range: rangeHeader } : {}), signal }).then(({ output: read, body }) => ({ ...read, Body: body }))
      : await this.#send<ObjectOutput & { Body?: unknown; ContentRange?: string }>(
        new (loadSdk().GetObjectCommand)({ Bucket: this.bucket, Key: fullKey, ...(rangeHeader ? { Range: rangeHeader } : {}) }),
        'download',
        key,
        signal,
      );
    const totalFromRange = output.ContentRange ? Number(output.ContentRange.split('/')[1]) : undefined;
    const info = this.#info(key, output, Number.isFinite(totalFromRange) ? totalFromRange : undefined);
    let body = output.Body as Readable;
    const expected = options.sha256 === undefined ? info.sha256 : normalizeSha256(options.sha256);
    if (options.verify) {
      if (!expected) {
        body.destroy();
        throw new BundleError('ERR_INTEGRITY', `${this.#where(key)} has no recorded sha256 to verify against.`);
      }
      const verify = createVerifyStream(expected, this.#where(key), () => this.delete(key));
      body.on('error', (error) => verify.destroy(error));
      body = body.pipe(verify);
    }
    if (signal) addAbortSignal(signal, body);
    return { info, body };
  }

  async delete(key: string, options: OperationOptions = {}): Promise<void> {
    await this.#send(new (loadSdk().DeleteObjectCommand)({ Bucket: this.bucket, Key: this.#full(key) }), 'delete', key, options.signal);
  }

  async list(options: ListOptions = {}): Promise<ListPage> {
    const output = await this.#send<{ Contents?: { Key?: string; Size?: number; ETag?: string; LastModified?: Date }[]; NextContinuationToken?: string; IsTruncated?: boolean }>(
      new (loadSdk().ListObjectsV2Command)({
        Bucket: this.bucket,
        Prefix: this.prefix + (options.prefix ?? ''),
        MaxKeys: Math.min(1000, Math.max(1, options.limit ?? 1000)),
        ...(options.cursor ? { ContinuationToken: options.cursor } : {}),
      }),
      'list',
      undefined,
      options.signal,
    );
    const items: ObjectInfo[] = [];
    for (const entry of output.Contents ?? []) {
      const key = entry.Key?.slice(this.prefix.length);
      if (!key || key.split('/').includes(RESERVED_SEGMENT)) continue;
      items.push({
        key,
        size: entry.Size ?? 0,
        metadata: {},
        ...(entry.ETag ? { etag: entry.ETag.replace(/"/g, '') } : {}),
        ...(entry.LastModified ? { lastModified: entry.LastModified } : {}),
      });
    }
    return output.IsTruncated && output.NextContinuationToken ? { items, cursor: output.NextContinuationToken } : { items };
  }

  async copy(fromKey: string, toKey: string, options: CopyOptions = {}): Promise<ObjectInfo> {
    return copyObject(this, fromKey, this, toKey, options);
  }

  async copyFrom(source: ObjectStore, sourceKey: string, toKey: string, options: CopyOptions = {}): Promise<ObjectInfo | undefined> {
    if (!(source instanceof S3Store) || source.endpointId !== this.endpointId) return undefined;
    const { signal } = options;
    const info = await source.head(sourceKey, signal ? { signal } : {});
    // Without a recorded hash the bytes must be read to record one; over 5 GiB needs
    // UploadPartCopy, which s3rver lacks: both stream instead.
    if (!info.sha256 || info.size > MAX_SINGLE_COPY_BYTES) return undefined;
    const wanted = options.sha256 === undefined ? undefined : normalizeSha256(options.sha256);
    if (wanted && wanted !== info.sha256) {
      throw new BundleError('ERR_INTEGRITY', `${source.location}${sourceKey} has sha256 ${info.sha256}, expected ${wanted}; nothing was copied.`, {
        details: { key: sourceKey, expected: wanted, actual: info.sha256 },
      });
    }
    const immutable = options.immutable ?? this.immutable;
    if (immutable) {
      const existing = await this.#headOrUndefined(toKey, signal);
      if (existing) return this.#sameOrRefuse(toKey, existing, '', info.sha256, signal);
    }
    try {
      await this.#send(
        new (loadSdk().CopyObjectCommand)({
          Bucket: this.bucket,
          Key: this.#full(toKey),
          CopySource: copySource(source.bucket, source.prefix + validateKey(sourceKey)),
          MetadataDirective: 'COPY',
          ...(info.etag ? { CopySourceIfMatch: `"${info.etag}"` } : {}),
          ...(immutable ? { IfNoneMatch: '*' } : {}),
        }),
        'copy',
        toKey,
        signal,
      );
    } catch (error) {
      if (error instanceof BundleError && error.code === 'ERR_STORE_EXISTS' && immutable) {
        const existing = await this.#headOrUndefined(toKey, signal);
        if (existing?.sha256 === info.sha256) return existing;
      }
      throw error;
    }
    options.onProgress?.({ loaded: info.size, total: info.size });
    const copied = await this.head(toKey, signal ? { signal } : {});
    if (copied.sha256 !== info.sha256 || copied.size !== info.size) {
      await this.delete(toKey).catch(() => undefined);
      throw new BundleError('ERR_INTEGRITY', `Server-side copy to ${this.#where(toKey)} does not match its source; the copy was removed.`, {
        details: { key: toKey, expected: info.sha256, actual: copied.sha256 },
      });
    }
    return copied;
  }

  async presignGet(key: string, options: PresignOptions = {}): Promise<PresignedRequest> {
    const expiresIn = checkExpiry(options.expiresIn ?? this.#presignExpiresIn);
    throwIfAborted(options.signal);
    const { getSignedUrl } = await import('@aws-sdk/s3-request-presigner');
    const url = await getSignedUrl(this.#sdkClient(), new (loadSdk().GetObjectCommand)({ Bucket: this.bucket, Key: this.#full(key) }), { expiresIn });
    return { url, method: 'GET', headers: {}, expiresAt: new Date(Date.now() + expiresIn * 1000) };
  }

  async presignPut(key: string, options: PresignPutOptions = {}): Promise<PresignedRequest> {
    const expiresIn = checkExpiry(options.expiresIn ?? this.#presignExpiresIn);
    throwIfAborted(options.signal);
    const sha256 = options.sha256 === undefined ? undefined : normalizeSha256(options.sha256);
    const headers: Record<string, string> = {};
    if (sha256) headers[`x-amz-meta-${SHA256_META}`] = sha256;
    if (options.contentType) headers['content-type'] = options.contentType;
    const command = new (loadSdk().PutObjectCommand)({
      Bucket: this.bucket,
      Key: this.#full(key),
      ...(sha256 ? { Metadata: { [SHA256_META]: sha256 } } : {}),
      ...(options.contentType ? { ContentType: options.contentType } : {}),
    });
    // Metadata stays a signed header (not a query parameter) so that every S3 server records it.
    const { getSignedUrl } = await import('@aws-sdk/s3-request-presigner');
    const url = await getSignedUrl(this.#sdkClient(), command, { expiresIn, unhoistableHeaders: new Set(Object.keys(headers)) });
    return { url, method: 'PUT', headers, expiresAt: new Date(Date.now() + expiresIn * 1000) };
  }

  close(): void {
    this.#client?.destroy();
    this.#reader?.close();
  }
}

function checkExpiry(seconds: number): number {
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > MAX_PRESIGN_SECONDS) {
    throw new BundleError('ERR_STORE_URL', `Presigned URL expiry must be 1…${MAX_PRESIGN_SECONDS} seconds, got ${seconds}.`);
  }
  return seconds;
}

function copySource(bucket: string, fullKey: string): string {
  return `${bucket}/${fullKey.split('/').map(encodeURIComponent).join('/')}`;
}

function isReplayable(command: unknown): boolean {
  const body = (command as { input?: { Body?: unknown } }).input?.Body;
  return body === undefined || typeof body === 'string' || body instanceof Uint8Array;
}

function isTransient(error: unknown): boolean {
  const e = (error ?? {}) as SdkError;
  if (e.name === 'AbortError') return false;
  const status = e.$metadata?.httpStatusCode;
  if (status !== undefined && (status >= 500 || status === 429)) return true;
  if (e.name && TRANSIENT_ERRORS.has(e.name)) return true;
  if (status !== undefined && status >= 400) return false;
  const code = e.code ?? e.cause?.code;
  return code !== undefined && TRANSIENT_CODES.has(code);
}
