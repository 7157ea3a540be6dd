/**
 * A second, independent verifier from the npm registry: sigstore-js (`@sigstore/verify` with
 * `@sigstore/bundle`) verifies our DSSE envelope offline with the builder's plain public key —
 * wrapped in a Sigstore bundle v0.3 whose verification material is that key's hint, no
 * transparency log and no timestamps (thresholds 0). (openssl is the other: dsse.test.ts.)
 */
import { createPublicKey } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { bundleFromJSON } from '@sigstore/bundle';
import { Verifier, toSignedEntity, toTrustMaterial } from '@sigstore/verify';
import { afterAll, describe, expect, it } from 'vitest';
import { INTOTO_PAYLOAD_TYPE, signEnvelope, type DsseEnvelope } from '../../lib/provenance/dsse.js';
import { loadOrCreateSigningKey, type SigningKey } from '../../lib/provenance/keys.js';
import { buildStatement } from '../../lib/provenance/statement.js';

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

function sigstoreVerify(envelope: DsseEnvelope, key: SigningKey): void {
  const bundle = bundleFromJSON({
    mediaType: 'application/vnd.dev.sigstore.bundle.v0.3+json',
    verificationMaterial: { publicKey: { hint: key.keyid }, tlogEntries: [], timestampVerificationData: { rfc3161Timestamps: [] } },
    dsseEnvelope: envelope,
  });
  const trust = toTrustMaterial(
    { mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1', tlogs: [], certificateAuthorities: [], ctlogs: [], timestampAuthorities: [] },
    { [key.keyid]: { rawBytes: createPublicKey(key.publicKeyPem).export({ type: 'spki', format: 'der' }), // keyDetails is not consulted for a given key (sigstore-js derives the algorithm from the DER).
      keyDetails: 'PKIX_ED25519' as never, validFor: undefined } },
  );
  new Verifier(trust, { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 }).verify(toSignedEntity(bundle));
}

describe('interoperability', () => {
  it('@sigstore/verify accepts a signed provenance statement with the plain public key, and refuses a changed one', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'bd-interop-'));
    dirs.push(dir);
    const key = await loadOrCreateSigningKey(path.join(dir, 'key.pem'));
    const statement = buildStatement({
      bundle: { file: 'app-1.0.0-linux-x64-glibc-node20.tgz', sha256: 'a'.repeat(64) },
      source: { sha256: 'b'.repeat(64), size: 1234, uri: 'https://bucket.example/src.tgz' },
      target: { os: 'linux', cpu: 'x64', libc: 'glibc', node: '20' }, overrides: {},
      runtime: { version: '20.20.2', abi: '115', source: 'host', nodeSha256: 'c'.repeat(64) },
      npmVersion: '11.19.1', method: 'native', builder: { id: 'b1', version: '0.1.0', node: '20.20.2' }, buildId: 'x1',
      startedOn: '2026-12-03T00:00:00.000Z', finishedOn: '2026-12-03T00:00:05.000Z',
    });
    const envelope = signEnvelope(Buffer.from(JSON.stringify(statement)), INTOTO_PAYLOAD_TYPE, key);
    expect(() => sigstoreVerify(envelope, key)).not.toThrow();
    const changed = { ...envelope, payload: Buffer.from(JSON.stringify({ ...statement, subject: [{ name: 'other.tgz', digest: { sha256: 'd'.repeat(64) } }] })).toString('base64') };
    expect(() => sigstoreVerify(changed, key)).toThrow(/signature verification failed/);
    expect(() => sigstoreVerify({ ...envelope, payloadType: 'application/json' }, key)).toThrow();
  });
});
