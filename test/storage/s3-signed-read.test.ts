/**
 * The S3 store's signed read path (lib/storage/s3-signed-read.ts): HEAD and GET signed with aws4
 * and sent with node:http when region and credentials are known, so reads never load the AWS SDK.
 * Its signatures are compared with the SDK's own signer (s3rver checks the access key id, not
 * signatures); its answers and errors with the SDK path's, on a real s3rver.
 */
import { createHash, createHmac } from 'node:crypto';
import { createRequire } from 'node:module';
import { buffer } from 'node:stream/consumers';
import { SignatureV4 } from '@smithy/signature-v4';
import aws4 from 'aws4';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signedReadSettings } from '../../lib/storage/s3-signed-read.js';
import { S3Store } from '../../lib/storage/s3-store.js';
import { startS3, type S3TestServer } from '../helpers/s3.js';
import { expectCode } from './contract.js';

/** The SHA-256 the SDK's signer is given (the SDK's own is @smithy/hash-node, the same digest). */
type SourceData = string | ArrayBuffer | ArrayBufferView;
const bytes = (data: SourceData) => (typeof data === 'string' ? data : ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data));
class Sha256 {
  readonly #hash;
  constructor(secret?: SourceData) {
    this.#hash = secret === undefined ? createHash('sha256') : createHmac('sha256', bytes(secret));
  }
  update(data: SourceData): void {
    this.#hash.update(bytes(data));
  }
  digest(): Promise<Uint8Array> {
    return Promise.resolve(new Uint8Array(this.#hash.digest()));
  }
}

const credentials = { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY', sessionToken: 'session-token' };
const sdkLoaded = () => Object.keys(createRequire(import.meta.url).cache).some((file) => file.includes('@aws-sdk/client-s3'));

describe('signed reads: settings', () => {
  const env = { AWS_ACCESS_KEY_ID: 'id', AWS_SECRET_ACCESS_KEY: 'secret' };
  it('takes given static credentials, else the environment\'s (the SDK\'s first provider); the given region, else AWS_REGION', () => {
    expect(signedReadSettings({ bucket: 'b', region: 'eu-west-1', credentials }, {})).toMatchObject({ region: 'eu-west-1', credentials, pathStyle: false });
    expect(signedReadSettings({ bucket: 'b' }, { ...env, AWS_REGION: 'us-west-2', AWS_SESSION_TOKEN: 't' })).toMatchObject({ region: 'us-west-2', credentials: { accessKeyId: 'id', secretAccessKey: 'secret', sessionToken: 't' } });
  });

  it('builds the bucket\'s AWS address as the SDK does: its virtual host, path style for a name with dots or when asked', () => {
    expect(signedReadSettings({ bucket: 'releases', region: 'eu-west-1', credentials }, {})?.base.href).toBe('https://releases.s3.eu-west-1.amazonaws.com/');
    expect(signedReadSettings({ bucket: 'my.releases', region: 'eu-west-1', credentials }, {})).toMatchObject({ pathStyle: true, base: new URL('https://s3.eu-west-1.amazonaws.com') });
    expect(signedReadSettings({ bucket: 'b', endpoint: 'http://127.0.0.1:9000', forcePathStyle: true, region: 'us-east-1', credentials }, {})).toMatchObject({ pathStyle: true, base: new URL('http://127.0.0.1:9000') });
  });

  it('leaves to the SDK what only it resolves: a credential provider, a profile, no region, endpoint or FIPS settings, a virtual host on an endpoint', () => {
    expect(signedReadSettings({ bucket: 'b', region: 'r', credentials: async () => credentials }, {})).toBeUndefined();
    expect(signedReadSettings({ bucket: 'b', region: 'r' }, { ...env, AWS_PROFILE: 'prod' })).toBeUndefined();
    expect(signedReadSettings({ bucket: 'b' }, env)).toBeUndefined();
    expect(signedReadSettings({ bucket: 'b', region: 'r' }, {})).toBeUndefined();
    expect(signedReadSettings({ bucket: 'b', region: 'r' }, { ...env, AWS_ENDPOINT_URL_S3: 'http://x' })).toBeUndefined();
    expect(signedReadSettings({ bucket: 'b', region: 'r' }, { ...env, AWS_USE_FIPS_ENDPOINT: 'true' })).toBeUndefined();
    expect(signedReadSettings({ bucket: 'b', region: 'r', endpoint: 'http://minio.local:9000' }, env)).toBeUndefined();
  });

  it('signs as the SDK\'s SignatureV4 does: the same Authorization for HEAD and a ranged GET, with a session token, of keys S3 must escape', async () => {
    const signer = new SignatureV4({ service: 's3', region: 'eu-west-1', credentials, sha256: Sha256, uriEscapePath: false, applyChecksum: true });
    const escape = (segment: string) => encodeURIComponent(segment).replace(/[!'()*]/g, (char) => `%${char.charCodeAt(0).toString(16).toUpperCase()}`);
    for (const key of ['plain/key.tgz', '@acme/app/1.0.0+build.7/app (x64)/naïve ü*\'!~.tgz']) {
      for (const [method, range] of [['HEAD', undefined], ['GET', undefined], ['GET', 'bytes=0-99']] as const) {
        const path = `/${key.split('/').map(escape).join('/')}`;
        const request = { method, host: 'releases.s3.eu-west-1.amazonaws.com', path, service: 's3', region: 'eu-west-1', headers: { 'X-Amz-Date': '20261207T120000Z', ...(range ? { Range: range } : {}) } as Record<string, string> };
        aws4.sign(request, credentials);
        const ours = request.headers.Authorization;
        const { Authorization: _authorization, ...headers } = request.headers;
        // aws4 leaves Range out of SignedHeaders (SigV4 signs the headers that list names; S3
        // accepts it), so the SDK's signer is told the same.
        const sdk = await signer.sign({ method, protocol: 'https:', hostname: request.host, path, query: {}, headers: Object.fromEntries(Object.entries(headers).map(([name, value]) => [name.toLowerCase(), value])) }, { signingDate: new Date('2026-12-07T12:00:00Z'), unsignableHeaders: new Set(['range']) });
        expect(ours, `${method} ${key} ${range ?? ''}`).toBe(sdk.headers.authorization);
      }
    }
  });
});

describe('signed reads on s3rver', () => {
  let s3: S3TestServer;
  let signed: S3Store;
  let viaSdk: S3Store;
  beforeAll(async () => {
    s3 = await startS3({ buckets: ['reads'] });
    signed = new S3Store({ ...s3.storeOptions, retries: 1, retryDelay: 10, bucket: 'reads', prefix: 'p' });
    // A credential provider: the SDK resolves it, so this store reads through the SDK.
    viaSdk = new S3Store({ ...s3.storeOptions, credentials: async () => s3.credentials, retries: 1, retryDelay: 10, bucket: 'reads', prefix: 'p' });
  });
  afterAll(async () => {
    signed?.close();
    viaSdk?.close();
    await s3?.stop();
  });

  it('checkConfiguration, head, exists and get (whole, ranged, verified) never load the SDK, and answer what the SDK path answers', async () => {
    expect(sdkLoaded()).toBe(false);
    await signed.checkConfiguration();
    expect(await signed.exists('@scope/app/1.0.0 (x)/a.json')).toBe(false);
    await expectCode(signed.head('@scope/app/1.0.0 (x)/a.json'), 'ERR_STORE_NOT_FOUND');
    expect(sdkLoaded()).toBe(false);
    // Written through the SDK (a write loads it); read back both ways.
    const written = await viaSdk.put('@scope/app/1.0.0 (x)/a.json', '{"hello":"world"}\n', { contentType: 'application/json' });
    expect(sdkLoaded()).toBe(true);
    const [ours, theirs] = await Promise.all([signed.head('@scope/app/1.0.0 (x)/a.json'), viaSdk.head('@scope/app/1.0.0 (x)/a.json')]);
    expect(ours).toEqual(theirs);
    expect(ours).toMatchObject({ size: 18, sha256: written.sha256, contentType: 'application/json' });
    const got = await signed.get('@scope/app/1.0.0 (x)/a.json', { verify: true });
    expect(got.info).toEqual((await viaSdk.get('@scope/app/1.0.0 (x)/a.json')).info);
    expect((await buffer(got.body)).toString()).toBe('{"hello":"world"}\n');
    const part = await signed.get('@scope/app/1.0.0 (x)/a.json', { range: { start: 1, end: 7 } });
    expect((await buffer(part.body)).toString()).toBe('"hello"');
    expect(part.info.size).toBe(18);
  });

  it('fails as the SDK path fails: a missing key, a missing bucket, an unknown access key id', async () => {
    const [ours, theirs] = await Promise.all([expectCode(signed.get('absent.json'), 'ERR_STORE_NOT_FOUND'), expectCode(viaSdk.get('absent.json'), 'ERR_STORE_NOT_FOUND')]);
    expect(ours.message).toBe(theirs.message);
    const missing = new S3Store({ ...s3.storeOptions, bucket: 'no-such-bucket', retries: 0 });
    expect(await missing.exists('x')).toBe(false);
    expect((await expectCode(missing.get('x'), 'ERR_STORE_NOT_FOUND')).message).toContain('The S3 bucket "no-such-bucket" does not exist');
    missing.close();
    const wrong = new S3Store({ ...s3.storeOptions, credentials: { accessKeyId: 'WRONG', secretAccessKey: 'S3RVER' }, bucket: 'reads', retries: 0 });
    const refused = await expectCode(wrong.get('p/x'), 'ERR_STORE_AUTH');
    expect(refused.message).toContain('InvalidAccessKeyId');
    expect(refused.message).not.toContain('S3RVER');
    await expectCode(wrong.head('p/x'), 'ERR_STORE_AUTH');
    wrong.close();
  });
});
