/**
 * DSSE (Dead Simple Signing Envelope, secure-systems-lab/dsse, protocol.md and envelope.md):
 * the pre-authentication encoding, signing and verifying one envelope with node:crypto.
 * ed25519 signs and verifies; ECDSA P-256 (SHA-256; raw r‖s as in the spec's test vector, or
 * DER as sigstore writes it) verifies and signs (DER).
 */
import { sign as cryptoSign, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { BundleError } from '../errors.js';

/** The payloadType of an in-toto statement. */
export const INTOTO_PAYLOAD_TYPE = 'application/vnd.in-toto+json';

/** The JSON envelope (envelope.md): payload is base64 of the serialized body. */
export interface DsseEnvelope {
  payload: string;
  payloadType: string;
  signatures: Array<{ keyid?: string; sig: string }>;
}

/** `DSSEv1 <len(type)> <type> <len(body)> <body>`, lengths in bytes as ASCII decimal. */
export function pae(payloadType: string, body: Buffer): Buffer {
  const type = Buffer.from(payloadType, 'utf8');
  return Buffer.concat([Buffer.from(`DSSEv1 ${type.length} `, 'ascii'), type, Buffer.from(` ${body.length} `, 'ascii'), body]);
}

/** Signs `body` as `payloadType` with an ed25519 or P-256 private key. */
export function signEnvelope(body: Buffer, payloadType: string, key: { privateKey: KeyObject; keyid: string }): DsseEnvelope {
  const message = pae(payloadType, body);
  const sig = key.privateKey.asymmetricKeyType === 'ed25519' ? cryptoSign(null, message, key.privateKey) : cryptoSign('sha256', message, { key: key.privateKey, dsaEncoding: 'der' });
  return { payload: body.toString('base64'), payloadType, signatures: [{ keyid: key.keyid, sig: sig.toString('base64') }] };
}

/** True when `sig` is a valid signature of `message` by `publicKey` (ed25519 or ECDSA P-256). */
export function verifySignature(message: Buffer, sig: Buffer, publicKey: KeyObject): boolean {
  try {
    if (publicKey.asymmetricKeyType === 'ed25519') return sig.length === 64 && cryptoVerify(null, message, publicKey, sig);
    if (publicKey.asymmetricKeyType === 'ec') {
      // The spec's vector is raw r‖s (64 bytes); sigstore and cosign write DER.
      return cryptoVerify('sha256', message, { key: publicKey, dsaEncoding: sig.length === 64 ? 'ieee-p1363' : 'der' }, sig);
    }
  } catch {
    return false;
  }
  return false;
}

/** Standard or URL-safe base64 (envelope.md allows both), refusing anything else. */
export function decodeBase64(text: string): Buffer | undefined {
  if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(text)) return undefined;
  return Buffer.from(text.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
}

/** An envelope from parsed JSON, its shape checked (ERR_PROVENANCE_MALFORMED otherwise). */
export function parseEnvelope(value: unknown): DsseEnvelope {
  const malformed = (why: string) => new BundleError('ERR_PROVENANCE_MALFORMED', `Not a DSSE envelope: ${why}.`);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw malformed('not a JSON object');
  const { payload, payloadType, signatures } = value as Record<string, unknown>;
  if (typeof payload !== 'string' || decodeBase64(payload) === undefined) throw malformed('payload is not base64');
  if (typeof payloadType !== 'string') throw malformed('payloadType is not a string');
  if (!Array.isArray(signatures)) throw malformed('signatures is not a list');
  for (const signature of signatures as unknown[]) {
    const { keyid, sig } = (signature ?? {}) as Record<string, unknown>;
    if (typeof sig !== 'string' || decodeBase64(sig) === undefined) throw malformed('a signature\'s sig is not base64');
    if (keyid !== undefined && typeof keyid !== 'string') throw malformed('a signature\'s keyid is not a string');
  }
  return { payload, payloadType, signatures: signatures as DsseEnvelope['signatures'] };
}

/** A public key the verifier trusts, with its key id (lib/provenance/keys.ts). */
export interface TrustedKey {
  keyid: string;
  publicKey: KeyObject;
}

/**
 * Verifies an envelope against trusted keys and returns its body and the key that signed it.
 * `keyid` is an unauthenticated hint (protocol.md): every signature is tried with every key.
 * No signature verifies → ERR_PROVENANCE_SIGNATURE when a signature names a trusted key (or
 * none names any: the bytes were changed), ERR_PROVENANCE_UNTRUSTED_KEY when every signature
 * names keys the caller does not trust (signed by someone else).
 */
export function verifyEnvelope(envelope: DsseEnvelope, keys: readonly TrustedKey[], expectedType: string = INTOTO_PAYLOAD_TYPE): { body: Buffer; keyid: string } {
  if (envelope.payloadType !== expectedType) {
    throw new BundleError('ERR_PROVENANCE_PAYLOAD_TYPE', `The envelope's payloadType is "${envelope.payloadType}", not ${expectedType}.`, { details: { payloadType: envelope.payloadType } });
  }
  if (envelope.signatures.length === 0) throw new BundleError('ERR_PROVENANCE_UNSIGNED', 'The envelope has no signature.');
  const body = decodeBase64(envelope.payload) as Buffer;
  const message = pae(envelope.payloadType, body);
  for (const signature of envelope.signatures) {
    const sig = decodeBase64(signature.sig) as Buffer;
    for (const key of keys) {
      if (verifySignature(message, sig, key.publicKey)) return { body, keyid: key.keyid };
    }
  }
  const named = envelope.signatures.map((signature) => signature.keyid).filter((keyid): keyid is string => Boolean(keyid));
  if (named.length > 0 && !named.some((keyid) => keys.some((key) => key.keyid === keyid))) {
    throw new BundleError('ERR_PROVENANCE_UNTRUSTED_KEY', `The envelope is signed by ${named.join(', ')}, none of the trusted keys (${keys.map((key) => key.keyid).join(', ') || 'none'}).`, { details: { signedBy: named } });
  }
  throw new BundleError('ERR_PROVENANCE_SIGNATURE', 'No signature of the envelope verifies with the trusted keys: the payload, its type or the signature was changed after signing.', { details: { signedBy: named } });
}
