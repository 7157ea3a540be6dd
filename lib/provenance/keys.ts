/**
 * Signing keys: load a PEM private key (generating an ed25519 one, mode 0600, when the file is
 * absent), load trusted public keys, and key ids (sha256 of the public key's SPKI DER, hex).
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { chmod, link, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BundleError } from '../errors.js';
import type { TrustedKey } from './dsse.js';

export interface SigningKey extends TrustedKey {
  privateKey: KeyObject;
  /** `ed25519` or `ecdsa-p256`. */
  algorithm: 'ed25519' | 'ecdsa-p256';
  /** The public key as SPKI PEM (what `GET /v1/keys` serves and consumers pin). */
  publicKeyPem: string;
}

/** sha256 of the key's SubjectPublicKeyInfo DER, hex: the same for a key however it is written. */
export function keyId(publicKey: KeyObject): string {
  return createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
}

function algorithmOf(key: KeyObject, where: string): SigningKey['algorithm'] {
  if (key.asymmetricKeyType === 'ed25519') return 'ed25519';
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ecdsa-p256';
  throw new BundleError('ERR_CONFIG', `${where} is a ${key.asymmetricKeyType ?? 'unknown'} key; provenance keys are ed25519 or ECDSA P-256.`);
}

/** The public key file written beside a private key file: `key.pem` → `key.pub.pem`. */
export function publicKeyPath(privateKeyFile: string): string {
  return `${privateKeyFile.replace(/\.pem$/, '')}.pub.pem`;
}

/**
 * The builder's signing key from `file` (PEM, PKCS#8 or SEC1). Absent → an ed25519 key is
 * generated there (mode 0600, in a 0700 directory if it has to be made) with its public key
 * beside it ({@link publicKeyPath}: `key.pem` → `key.pub.pem`). A key file that group or others may read is refused: with
 * builder.runAsUids the builds' uids could read it.
 */
export async function loadOrCreateSigningKey(file: string): Promise<SigningKey & { created: boolean }> {
  let pem: string | undefined;
  let created = false;
  const info = await stat(file).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw new BundleError('ERR_CONFIG', `Cannot read the signing key ${file}: ${error.message}`, { cause: error });
  });
  if (info) {
    if ((info.mode & 0o077) !== 0) {
      throw new BundleError('ERR_CONFIG', `The signing key ${file} has mode ${(info.mode & 0o777).toString(8)}; group and others must not read it.`, { hint: `chmod 600 ${file}` });
    }
    pem = await readFile(file, 'utf8');
  } else {
    await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    const { privateKey } = generateKeyPairSync('ed25519');
    pem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    // Written whole under a temporary name, then linked into place: two builders starting on one
    // key path never overwrite each other's key, nor read a half-written one.
    const temporary = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      await writeFile(temporary, pem, { mode: 0o600, flag: 'wx' });
      await chmod(temporary, 0o600);
      await link(temporary, file);
      created = true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw new BundleError('ERR_CONFIG', `Cannot write the signing key ${file}: ${(error as Error).message}`, { cause: error });
      pem = await readFile(file, 'utf8');
    } finally {
      await rm(temporary, { force: true });
    }
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(pem);
  } catch (error) {
    throw new BundleError('ERR_CONFIG', `${file} is not a PEM private key.`, { cause: error });
  }
  const algorithm = algorithmOf(privateKey, file);
  const publicKey = createPublicKey(privateKey);
  const publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' }) as string;
  const pub = publicKeyPath(file);
  if ((await readFile(pub, 'utf8').catch(() => undefined)) !== publicKeyPem) {
    const temporary = `${pub}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    await writeFile(temporary, publicKeyPem, { mode: 0o644 });
    await rename(temporary, pub);
  }
  return { privateKey, publicKey, publicKeyPem, keyid: keyId(publicKey), algorithm, created };
}

/** PEM text given inline, or read from the file it names; `where` names it in messages. */
async function keyText(fileOrPem: string): Promise<{ text: string; where: string; source: string }> {
  if (fileOrPem.includes('-----BEGIN')) return { text: fileOrPem, where: 'The key given', source: 'inline' };
  try {
    return { text: await readFile(fileOrPem, 'utf8'), where: fileOrPem, source: fileOrPem };
  } catch (error) {
    throw new BundleError('ERR_CONFIG', `Cannot read the public key ${fileOrPem}: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * Every public key of a PEM file (or PEM text) that holds one or more: during a signing-key
 * rotation a pool member's publicKey file lists the old key and the new one, and a result signed
 * with either is trusted.
 */
export async function loadTrustedKeys(fileOrPem: string): Promise<Array<TrustedKey & { source: string }>> {
  const { text, where, source } = await keyText(fileOrPem);
  const blocks = text.match(/-----BEGIN [A-Z ]+-----[^-]+-----END [A-Z ]+-----/g);
  if (!blocks) throw new BundleError('ERR_CONFIG', `${where} is not a PEM public key.`);
  return blocks.map((block) => ({ ...publicKeyOf(block, where), source }));
}

/** A trusted public key from PEM text (SPKI) or a file holding it. */
export async function loadTrustedKey(fileOrPem: string): Promise<TrustedKey & { source: string }> {
  const { text, where, source } = await keyText(fileOrPem);
  return { ...publicKeyOf(text, where), source };
}

function publicKeyOf(text: string, where: string): TrustedKey {
  if (text.includes('PRIVATE KEY-----')) throw new BundleError('ERR_CONFIG', `${where} is a private key; give the public key.`);
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey(text);
  } catch (error) {
    throw new BundleError('ERR_CONFIG', `${where} is not a PEM public key.`, { cause: error });
  }
  algorithmOf(publicKey, where);
  return { publicKey, keyid: keyId(publicKey) };
}
