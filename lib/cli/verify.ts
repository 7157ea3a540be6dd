/**
 * `bundle-dispatch verify <bundle.tgz|url> --key PUB…`: for the people who install a bundle.
 * Checks, offline (a URL is only downloaded, nothing else is asked), that its provenance is
 * signed by a trusted key, is an SLSA provenance v1 statement, and names this file's sha256,
 * and optionally its source, target and builder. Exit 0 only when every check holds.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { downloadToFile } from '../builder/client.js';
import { BundleError } from '../errors.js';
import { sha256File } from '../hash-stream.js';
import { loadTrustedKey } from '../provenance/keys.js';
import { parseJsonl, verifyProvenance, type VerifiedProvenance } from '../provenance/verify.js';
import { EXIT } from './errors.js';
import type { CliContext } from './context.js';

export interface VerifyArgs {
  bundle: string;
  provenance?: string;
  key?: string[];
  'source-sha256'?: string;
  /** The target the bundle must be for (`--targets`, alias `--target`). */
  targets?: string;
  builder?: string;
  json: boolean;
}

const isUrl = (value: string) => /^https?:\/\//i.test(value);

/** A local file or an http(s) URL, downloaded into `dir`. Missing → `missing()`. */
async function fetchFile(location: string, cwd: string, dir: string, name: string, signal: AbortSignal, missing: () => BundleError): Promise<string> {
  if (!isUrl(location)) {
    const file = path.resolve(cwd, location);
    await readFile(file, { flag: 'r' }).catch(() => {
      throw missing();
    });
    return file;
  }
  const file = path.join(dir, name);
  await downloadToFile(location, file, { signal, maxBytes: 1024 ** 3 }).catch((error: unknown) => {
    if (signal.aborted) throw error;
    throw missing();
  });
  return file;
}

export async function commandVerify(args: VerifyArgs, context: CliContext, signal: AbortSignal): Promise<{ code: number; verified: VerifiedProvenance; file: string }> {
  const keys = args.key ?? [];
  if (keys.length === 0) throw new BundleError('ERR_USAGE', 'verify needs the builder\'s public key: --key <file.pub.pem>.', { hint: 'The key is the builder\'s GET /v1/keys, its signing key\'s .pub.pem, or <cacheDir>/keys/embedded-builder.pub.pem for the embedded default.' });
  const trusted = await Promise.all(keys.map((key) => loadTrustedKey(isUrl(key) || key.includes('-----BEGIN') ? key : path.resolve(context.cwd, key))));
  const dir = await mkdtemp(path.join(tmpdir(), 'bd-verify-'));
  try {
    const fileName = decodeURIComponent(path.basename(isUrl(args.bundle) ? new URL(args.bundle).pathname : args.bundle));
    const bundle = await fetchFile(args.bundle, context.cwd, dir, fileName || 'bundle.tgz', signal, () => new BundleError('ERR_INPUT_NOT_FOUND', `Cannot read ${args.bundle}.`));
    const provenanceAt = args.provenance ?? (isUrl(args.bundle) ? `${args.bundle.split(/[?#]/)[0] ?? args.bundle}.intoto.jsonl` : `${args.bundle}.intoto.jsonl`);
    const statements = await fetchFile(provenanceAt, context.cwd, dir, 'provenance.intoto.jsonl', signal, () => new BundleError('ERR_PROVENANCE_MISSING', `No provenance at ${provenanceAt}.`, { hint: 'Dispatch stores it beside the bundle as <bundle>.intoto.jsonl; give another place with --provenance.' }));
    const { sha256 } = await sha256File(bundle);
    const verified = verifyProvenance(parseJsonl(await readFile(statements, 'utf8')), {
      keys: trusted, sha256, file: fileName,
      ...(args['source-sha256'] ? { sourceSha256: args['source-sha256'] } : {}),
      ...(args.targets ? { target: args.targets } : {}),
      ...(args.builder ? { builder: args.builder } : {}),
    });
    return { code: EXIT.ok, verified, file: fileName };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** What was verified, for people. */
export function formatVerified(result: { verified: VerifiedProvenance; file: string }, checked: { source: boolean; target: boolean; builder: boolean }): string {
  const { verified } = result;
  const input = (verified.statement.predicate.buildDefinition.externalParameters as { input?: { spec?: string } }).input;
  const mark = (yes: boolean) => (yes ? 'checked' : 'not checked: pass it to check');
  return [
    `✔ ${result.file}: provenance verified`,
    `  sha256     ${verified.subject.sha256} (the statement's subject ${verified.subject.name})`,
    `  signed by  ${verified.keyid}`,
    `  statement  ${verified.statement._type}, ${verified.statement.predicateType}`,
    `  source     sha256 ${verified.sourceSha256} (${mark(checked.source)} --source-sha256)`,
    `  target     ${verified.target} (${mark(checked.target)} --targets)`,
    `  builder    ${verified.builderId} (${mark(checked.builder)} --builder)`,
    `  built      ${verified.finishedOn}, invocation ${verified.invocationId}${input?.spec ? `, input ${input.spec}` : ''}`,
    '',
  ].join('\n');
}

/** `bundle-dispatch verify`: verifies, prints the outcome (JSON or for people), returns the exit code. */
export async function runVerify(args: VerifyArgs, context: CliContext, signal: AbortSignal): Promise<number> {
  const result = await commandVerify(args, context, signal);
  const checked = { source: Boolean(args['source-sha256']), target: Boolean(args.targets), builder: Boolean(args.builder) };
  if (args.json) {
    const { verified } = result;
    context.stdout.write(`${JSON.stringify({
      ok: true, file: result.file, sha256: verified.subject.sha256, keyid: verified.keyid,
      statementType: verified.statement._type, predicateType: verified.statement.predicateType,
      source: { sha256: verified.sourceSha256, checked: checked.source }, target: { value: verified.target, checked: checked.target },
      builder: { id: verified.builderId, checked: checked.builder }, invocationId: verified.invocationId, finishedOn: verified.finishedOn,
      checks: verified.checks, statement: verified.statement,
    }, null, 2)}\n`);
  } else {
    context.stdout.write(formatVerified(result, checked));
  }
  return result.code;
}
