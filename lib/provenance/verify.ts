/**
 * Verifies a bundle against its provenance (`<bundle>.intoto.jsonl`): an envelope signed by a
 * trusted key, an in-toto Statement v1 with an SLSA provenance v1 predicate, whose subject is
 * the bundle's sha256, and optionally its source, target and builder. Used by dispatch before
 * it publishes and by `bundle-dispatch verify`. Pure: the bytes' sha256 comes in.
 */
import { BundleError, isBundleError } from '../errors.js';
import { formatTarget, parseTarget } from '../target.js';
import { parseEnvelope, verifyEnvelope, type DsseEnvelope, type TrustedKey } from './dsse.js';
import { SLSA_PROVENANCE_V1, STATEMENT_TYPE, builderUri, type ProvenanceStatement } from './statement.js';

export interface ProvenanceChecks {
  keys: readonly TrustedKey[];
  /** sha256 (hex) of the bundle's bytes. */
  sha256: string;
  /** The bundle's file name; only used to tell "modified" from "another bundle's envelope". */
  file?: string;
  sourceSha256?: string;
  /** `linux-x64`, `linux-arm64-musl` (a node range, if given, is ignored: the statement has the requested one). */
  target?: string;
  /** A builder name (`builder.id`) or its URI (`urn:bundle-dispatch:builder:<id>`). */
  builder?: string;
}

export interface VerifiedProvenance {
  keyid: string;
  envelope: DsseEnvelope;
  statement: ProvenanceStatement;
  subject: { name: string; sha256: string };
  builderId: string;
  target: string;
  sourceSha256: string;
  invocationId: string;
  finishedOn: string;
  /** What was checked, in order, for people and --json. */
  checks: string[];
}

/** Stages in check order: when no envelope passes, the error of the one that got furthest is reported. */
const STAGES = ['ERR_PROVENANCE_MALFORMED', 'ERR_PROVENANCE_PAYLOAD_TYPE', 'ERR_PROVENANCE_UNSIGNED', 'ERR_PROVENANCE_UNTRUSTED_KEY', 'ERR_PROVENANCE_SIGNATURE', 'ERR_PROVENANCE_PREDICATE', 'ERR_PROVENANCE_SUBJECT', 'ERR_PROVENANCE_DIGEST', 'ERR_PROVENANCE_SOURCE', 'ERR_PROVENANCE_TARGET', 'ERR_PROVENANCE_BUILDER'];

/** The envelopes of a `.intoto.jsonl` file: one JSON envelope per line. */
export function parseJsonl(text: string): unknown[] {
  const lines = text.split('\n').map((line) => line.trim()).filter(Boolean);
  if (lines.length === 0) throw new BundleError('ERR_PROVENANCE_MISSING', 'The provenance file holds no envelope.');
  return lines.map((line, index) => {
    try {
      return JSON.parse(line) as unknown;
    } catch (error) {
      throw new BundleError('ERR_PROVENANCE_MALFORMED', `Line ${index + 1} of the provenance is not JSON.`, { cause: error });
    }
  });
}

function checkOne(value: unknown, checks: ProvenanceChecks): VerifiedProvenance {
  const envelope = parseEnvelope(value);
  const { body, keyid } = verifyEnvelope(envelope, checks.keys);
  const done = [`signature by ${keyid}`, 'payloadType application/vnd.in-toto+json'];
  let statement: ProvenanceStatement;
  try {
    statement = JSON.parse(body.toString('utf8')) as ProvenanceStatement;
  } catch (error) {
    throw new BundleError('ERR_PROVENANCE_MALFORMED', 'The signed payload is not JSON.', { cause: error });
  }
  if (statement?._type !== STATEMENT_TYPE || statement.predicateType !== SLSA_PROVENANCE_V1) {
    throw new BundleError('ERR_PROVENANCE_PREDICATE', `The signed statement is ${String(statement?._type)} with predicate ${String(statement?.predicateType)}, not an in-toto Statement v1 with ${SLSA_PROVENANCE_V1}.`);
  }
  done.push(`${STATEMENT_TYPE} ${SLSA_PROVENANCE_V1}`);
  const subjects = Array.isArray(statement.subject) ? statement.subject : [];
  const subject = subjects.find((candidate) => candidate?.digest?.sha256?.toLowerCase() === checks.sha256.toLowerCase());
  if (!subject) {
    const names = subjects.map((candidate) => candidate?.name).join(', ');
    if (checks.file !== undefined && subjects.some((candidate) => candidate?.name === checks.file)) {
      throw new BundleError('ERR_PROVENANCE_DIGEST', `${checks.file} has sha256 ${checks.sha256}, not the one that was signed: the file was changed after it was built.`, { details: { sha256: checks.sha256 } });
    }
    throw new BundleError('ERR_PROVENANCE_SUBJECT', `The provenance is for ${names || 'nothing'}, not for this file (sha256 ${checks.sha256}).`, { details: { subjects: names } });
  }
  done.push(`subject ${subject.name} sha256 ${checks.sha256}`);
  const external = statement.predicate?.buildDefinition?.externalParameters ?? {};
  const sourceSha256 = String((external.source as { sha256?: unknown } | undefined)?.sha256 ?? '');
  const target = String(external.target ?? '');
  const builderId = String(statement.predicate?.runDetails?.builder?.id ?? '');
  if (checks.sourceSha256 !== undefined) {
    if (sourceSha256.toLowerCase() !== checks.sourceSha256.toLowerCase()) {
      throw new BundleError('ERR_PROVENANCE_SOURCE', `The bundle was built from source ${sourceSha256 || '(none named)'}, not ${checks.sourceSha256}.`, { details: { source: sourceSha256 } });
    }
    done.push(`source sha256 ${sourceSha256}`);
  }
  if (checks.target !== undefined) {
    const wanted = formatTarget(parseTarget(checks.target), { withNode: false });
    if (target !== wanted) throw new BundleError('ERR_PROVENANCE_TARGET', `The bundle was built for ${target || '(no target)'}, not ${wanted}.`, { details: { target } });
    done.push(`target ${target}`);
  }
  if (checks.builder !== undefined) {
    if (builderId !== checks.builder && builderId !== builderUri(checks.builder)) {
      throw new BundleError('ERR_PROVENANCE_BUILDER', `The bundle was built by ${builderId || '(no builder)'}, not ${checks.builder}.`, { details: { builder: builderId } });
    }
    done.push(`builder ${builderId}`);
  }
  const metadata = statement.predicate?.runDetails?.metadata;
  return {
    keyid, envelope, statement, subject: { name: subject.name, sha256: checks.sha256 }, builderId, target, sourceSha256,
    invocationId: String(metadata?.invocationId ?? ''), finishedOn: String(metadata?.finishedOn ?? ''), checks: done,
  };
}

/**
 * The first envelope that passes every check. None → the error of the envelope that got
 * furthest (each failure has its own ERR_PROVENANCE_* code: see docs/errors.md).
 */
export function verifyProvenance(envelopes: readonly unknown[], checks: ProvenanceChecks): VerifiedProvenance {
  if (envelopes.length === 0) throw new BundleError('ERR_PROVENANCE_MISSING', 'There is no provenance to verify.');
  let worst: BundleError | undefined;
  for (const value of envelopes) {
    try {
      return checkOne(value, checks);
    } catch (error) {
      if (!isBundleError(error)) throw error;
      if (!worst || STAGES.indexOf(error.code) > STAGES.indexOf(worst.code)) worst = error;
    }
  }
  throw worst as BundleError;
}
