import { execFileSync } from 'node:child_process';
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { pae, parseEnvelope, signEnvelope, verifyEnvelope, INTOTO_PAYLOAD_TYPE } from '../../lib/provenance/dsse.js';
import { keyId, loadOrCreateSigningKey, loadTrustedKey, publicKeyPath } from '../../lib/provenance/keys.js';

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
});
async function temp(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bd-dsse-'));
  dirs.push(dir);
  return dir;
}

/** A decimal integer as the 32-byte big-endian base64url a JWK wants. */
const coordinate = (decimal: string) => Buffer.from(BigInt(decimal).toString(16).padStart(64, '0'), 'hex').toString('base64url');

describe('DSSE', () => {
  it('encodes PAE exactly as the specification\'s test vector (protocol.md)', () => {
    expect(pae('http://example.com/HelloWorld', Buffer.from('hello world')).toString()).toBe('DSSEv1 29 http://example.com/HelloWorld 11 hello world');
    // Lengths are in bytes, not characters.
    expect(pae('t/é', Buffer.from('ü')).toString()).toBe('DSSEv1 4 t/é 2 ü');
  });

  it('verifies the specification\'s own test vector (ECDSA P-256, raw r‖s signature)', () => {
    // secure-systems-lab/dsse protocol.md, "Test Vectors" (commit eebf7b5).
    const publicKey = createPublicKey({
      key: {
        kty: 'EC', crv: 'P-256',
        x: coordinate('46950820868899156662930047687818585632848591499744589407958293238635476079160'),
        y: coordinate('5640078356564379163099075877009565129882514886557779369047442380624545832820'),
      },
      format: 'jwk',
    });
    const envelope = parseEnvelope({
      payload: 'aGVsbG8gd29ybGQ=',
      payloadType: 'http://example.com/HelloWorld',
      signatures: [{ sig: 'A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA==' }],
    });
    const key = { publicKey, keyid: keyId(publicKey) };
    const { body } = verifyEnvelope(envelope, [key], 'http://example.com/HelloWorld');
    expect(body.toString()).toBe('hello world');
    // One changed byte of the payload and the vector no longer verifies.
    expect(() => verifyEnvelope({ ...envelope, payload: Buffer.from('hello World').toString('base64') }, [key], 'http://example.com/HelloWorld')).toThrow(expect.objectContaining({ code: 'ERR_PROVENANCE_SIGNATURE' }));
  });

  it('signs with ed25519 and verifies; an ECDSA P-256 key signs (DER) and verifies too', () => {
    for (const type of ['ed25519', 'ec'] as const) {
      const pair = type === 'ec' ? generateKeyPairSync('ec', { namedCurve: 'P-256' }) : generateKeyPairSync('ed25519');
      const keyid = keyId(pair.publicKey);
      const envelope = signEnvelope(Buffer.from('{"a":1}'), INTOTO_PAYLOAD_TYPE, { privateKey: pair.privateKey, keyid });
      expect(envelope.signatures[0]?.keyid).toBe(keyid);
      expect(verifyEnvelope(envelope, [{ publicKey: pair.publicKey, keyid }]).keyid).toBe(keyid);
    }
  });

  it('refuses another payloadType, no signature, a changed signature and an untrusted key, each with its own code', () => {
    const pair = generateKeyPairSync('ed25519');
    const other = generateKeyPairSync('ed25519');
    const key = { publicKey: pair.publicKey, keyid: keyId(pair.publicKey) };
    const envelope = signEnvelope(Buffer.from('{}'), INTOTO_PAYLOAD_TYPE, { privateKey: pair.privateKey, keyid: key.keyid });
    const sig = Buffer.from(envelope.signatures[0]?.sig ?? '', 'base64');
    sig[5] = (sig[5] ?? 0) ^ 1;
    const code = (run: () => unknown) => {
      try {
        run();
        return 'ok';
      } catch (error) {
        return (error as { code: string }).code;
      }
    };
    expect(code(() => verifyEnvelope({ ...envelope, payloadType: 'application/json' }, [key]))).toBe('ERR_PROVENANCE_PAYLOAD_TYPE');
    expect(code(() => verifyEnvelope({ ...envelope, signatures: [] }, [key]))).toBe('ERR_PROVENANCE_UNSIGNED');
    expect(code(() => verifyEnvelope({ ...envelope, signatures: [{ keyid: key.keyid, sig: sig.toString('base64') }] }, [key]))).toBe('ERR_PROVENANCE_SIGNATURE');
    expect(code(() => verifyEnvelope(envelope, [{ publicKey: other.publicKey, keyid: keyId(other.publicKey) }]))).toBe('ERR_PROVENANCE_UNTRUSTED_KEY');
    expect(code(() => parseEnvelope({ payload: '%%', payloadType: 'x', signatures: [] }))).toBe('ERR_PROVENANCE_MALFORMED');
  });

  it('is verified by an independent verifier: openssl pkeyutl -verify -rawin over the PAE bytes', async () => {
    const dir = await temp();
    const key = await loadOrCreateSigningKey(path.join(dir, 'keys', 'signing.pem'));
    const envelope = signEnvelope(Buffer.from('{"_type":"https://in-toto.io/Statement/v1"}'), INTOTO_PAYLOAD_TYPE, key);
    await writeFile(path.join(dir, 'pae.bin'), pae(envelope.payloadType, Buffer.from(envelope.payload, 'base64')));
    await writeFile(path.join(dir, 'sig.bin'), Buffer.from(envelope.signatures[0]?.sig ?? '', 'base64'));
    const verify = (message: string) => execFileSync('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', publicKeyPath(path.join(dir, 'keys', 'signing.pem')), '-rawin', '-in', path.join(dir, message), '-sigfile', path.join(dir, 'sig.bin')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(verify('pae.bin')).toContain('Signature Verified Successfully');
    // openssl refuses the same signature over a changed PAE (it is not just echoing success).
    await writeFile(path.join(dir, 'changed.bin'), pae(envelope.payloadType, Buffer.from('{"_type":"x"}')));
    expect(() => verify('changed.bin')).toThrow();
    // And openssl's own ed25519 signature over our PAE verifies with our code.
    execFileSync('openssl', ['pkeyutl', '-sign', '-inkey', path.join(dir, 'keys', 'signing.pem'), '-rawin', '-in', path.join(dir, 'pae.bin'), '-out', path.join(dir, 'openssl.sig')]);
    const theirs = { ...envelope, signatures: [{ sig: (await readFile(path.join(dir, 'openssl.sig'))).toString('base64') }] };
    expect(verifyEnvelope(theirs, [key]).keyid).toBe(key.keyid);
  });
});

describe('keys', () => {
  it('generates an ed25519 key with mode 0600 and its public PEM beside it, and loads the same key again', async () => {
    const dir = await temp();
    const file = path.join(dir, 'k', 'builder.pem');
    const first = await loadOrCreateSigningKey(file);
    expect(first.created).toBe(true);
    expect(first.algorithm).toBe('ed25519');
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await stat(path.dirname(file))).mode & 0o777).toBe(0o700);
    const again = await loadOrCreateSigningKey(file);
    expect(again.created).toBe(false);
    expect(again.keyid).toBe(first.keyid);
    // keyid = sha256 of the SPKI DER, hex; the same from the public PEM file.
    expect(first.keyid).toMatch(/^[0-9a-f]{64}$/);
    expect((await loadTrustedKey(publicKeyPath(file))).keyid).toBe(first.keyid);
    expect((await loadTrustedKey(first.publicKeyPem)).keyid).toBe(first.keyid);
    // keyid matches openssl's view of the same DER.
    const der = execFileSync('openssl', ['pkey', '-pubin', '-in', publicKeyPath(file), '-outform', 'DER']);
    expect(execFileSync('openssl', ['dgst', '-sha256', '-r'], { input: der, encoding: 'utf8' }).split(' ')[0]).toBe(first.keyid);
  });

  it('refuses a key file group or others may read, a private key given as a trusted key, and an RSA key', async () => {
    const dir = await temp();
    const file = path.join(dir, 'builder.pem');
    await loadOrCreateSigningKey(file);
    const { chmod } = await import('node:fs/promises');
    await chmod(file, 0o640);
    await expect(loadOrCreateSigningKey(file)).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    await expect(loadTrustedKey(file)).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    await expect(loadTrustedKey(rsa.publicKey.export({ type: 'spki', format: 'pem' }) as string)).rejects.toMatchObject({ code: 'ERR_CONFIG' });
  });
});
