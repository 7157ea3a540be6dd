/**
 * The builder's side of provenance: the statement of a finished build from its record, its
 * request and the workflow's summary, signed with the builder's key (lib/provenance/).
 */
import { stat } from 'node:fs/promises';
import { sha256File } from '../hash-stream.js';
import { redact } from '../redact.js';
import type { BuildRecord, CreateBuildRequest, ProvenanceEnvelope } from '../protocol.js';
import { INTOTO_PAYLOAD_TYPE, signEnvelope } from '../provenance/dsse.js';
import type { SigningKey } from '../provenance/keys.js';
import { buildStatement } from '../provenance/statement.js';
import { normalizeTarget } from '../target.js';
import type { BuildSummary } from '../workflow/types.js';

/** sha256 of Node binaries by `path\0size\0mtime`. */
export type NodeHashes = Map<string, Promise<string | undefined>>;

/** A URL without its query (a presigned signature never reaches a statement). */
function withoutQuery(url: string): string | undefined {
  try {
    const parsed = new URL(url);
    return `${parsed.origin}${parsed.pathname}`;
  } catch {
    return undefined;
  }
}

async function nodeSha256(nodePath: string | undefined, cache: NodeHashes): Promise<string | undefined> {
  if (!nodePath) return undefined;
  const info = await stat(nodePath).catch(() => undefined);
  if (!info?.isFile()) return undefined;
  const key = `${nodePath}\0${info.size}\0${info.mtimeMs}`;
  let hashed = cache.get(key);
  if (!hashed) {
    hashed = sha256File(nodePath).then(({ sha256 }) => sha256, () => undefined);
    cache.set(key, hashed);
  }
  return hashed;
}

export async function signProvenance(options: {
  key: SigningKey;
  record: BuildRecord;
  request: CreateBuildRequest;
  summary: BuildSummary;
  artifact: { file: string; sha256: string };
  builderId: string;
  version?: string;
  nodeHashes: NodeHashes;
}): Promise<ProvenanceEnvelope> {
  const { record, request, summary } = options;
  const runtime = summary.runtime;
  // A registry runtime is named by its package's integrity; any other by the binary that ran.
  const nodeHash = runtime.integrity ? undefined : await nodeSha256(runtime.nodePath, options.nodeHashes);
  const sourceUri = request.source.url !== undefined ? withoutQuery(request.source.url) : undefined;
  const statement = buildStatement({
    bundle: options.artifact,
    source: { sha256: record.source.sha256, size: record.source.size, ...(sourceUri ? { uri: sourceUri } : request.source.key ? { uri: `store:${request.source.key}` } : {}) },
    target: normalizeTarget(request.target),
    // Credentials in a registry URL never reach a published statement.
    overrides: JSON.parse(redact(JSON.stringify(request.overrides ?? {}))) as Record<string, unknown>,
    ...(request.provenance?.input ? { input: request.provenance.input } : {}),
    ...(request.provenance?.runId ? { runId: request.provenance.runId } : {}),
    ...(summary.lockfile ? { lockfile: summary.lockfile } : {}),
    runtime: {
      version: runtime.version, abi: runtime.abi, source: runtime.source,
      ...(runtime.package ? { package: runtime.package } : {}), ...(runtime.integrity ? { integrity: runtime.integrity } : {}), ...(nodeHash ? { nodeSha256: nodeHash } : {}),
    },
    npmVersion: summary.npmVersion,
    method: summary.method,
    isolation: summary.isolation,
    prebuilt: summary.prebuilt,
    builder: { id: options.builderId, ...(options.version ? { version: options.version } : {}), node: process.versions.node },
    buildId: record.id,
    startedOn: record.startedAt ?? record.createdAt,
    finishedOn: new Date().toISOString(),
  });
  return signEnvelope(Buffer.from(JSON.stringify(statement), 'utf8'), INTOTO_PAYLOAD_TYPE, options.key);
}
