/**
 * Replicas of one target share a store, and a balancer sends any request to any of them. Reads
 * are served from the store by whichever replica gets them; a cancel must reach the replica
 * that runs the build. Each replica writes its advertised URL to the store when it starts
 * (`builder/replicas/<id>.json`); a DELETE landing elsewhere is forwarded there, once.
 */
import { networkInterfaces } from 'node:os';
import { BundleError } from '../errors.js';
import type { BuildRecord } from '../protocol.js';
import type { RecordStore } from './records.js';

/** Marks a forwarded request: the replica that gets it does not forward it again. */
export const FORWARDED_HEADER = 'x-bundle-dispatch-forwarded';
/** A forwarded cancel waits for the owner this long (the owner's own wait is at most ~5 s). */
const FORWARD_TIMEOUT_MS = 15_000;

/**
 * The URL other replicas reach this one at: builder.advertiseUrl, else the listening URL, with
 * a wildcard host (0.0.0.0, ::) replaced by this machine's first non-loopback IPv4 address (a
 * pod's own address in Kubernetes).
 */
export function advertisedUrl(listening: { host: string; port: number }, configured?: string): string {
  if (configured) return configured.replace(/\/+$/, '');
  const wildcard = listening.host === '0.0.0.0' || listening.host === '::';
  const external = wildcard ? Object.values(networkInterfaces()).flat().find((address) => address && address.family === 'IPv4' && !address.internal)?.address : undefined;
  const host = wildcard ? external ?? '127.0.0.1' : listening.host;
  return `http://${host.includes(':') ? `[${host}]` : host}:${listening.port}`;
}

export interface ForwardCancelOptions {
  records: RecordStore;
  record: BuildRecord;
  /** The replica forwarding (named in the owner's log and the cancel reason). */
  from: string;
  /** `Authorization` for the owner: the caller's bearer token (replicas of a pool share tokens). */
  authorization: string;
  requestId: string;
  signal?: AbortSignal;
}

/** Sends a cancel to the replica that runs the build and answers with what it answered. */
export async function forwardCancel(options: ForwardCancelOptions): Promise<BuildRecord> {
  const { record } = options;
  const owner = await options.records.readReplica(record.builder, options.signal);
  if (!owner) {
    throw new BundleError('ERR_BUILDER_REJECTED', `Build ${record.id} runs on builder ${record.builder}, which has not written its address to the store; cancel it there.`, { details: { builder: record.builder, status: 409 } });
  }
  const url = `${owner.url}/v1/builds/${encodeURIComponent(record.id)}`;
  let response: Response;
  try {
    response = await fetch(url, {
      method: 'DELETE',
      headers: { authorization: options.authorization, [FORWARDED_HEADER]: options.from, 'x-request-id': options.requestId },
      signal: options.signal ? AbortSignal.any([options.signal, AbortSignal.timeout(FORWARD_TIMEOUT_MS)]) : AbortSignal.timeout(FORWARD_TIMEOUT_MS),
    });
  } catch (error) {
    throw new BundleError('ERR_BUILDER_UNREACHABLE', `Build ${record.id} runs on builder ${record.builder} (${owner.url}), which did not answer the cancel: ${(error as Error).message}.`, { cause: error, details: { builder: record.builder, status: 502 } });
  }
  const body = (await response.json().catch(() => undefined)) as (BuildRecord & { error?: { code?: string; message?: string } }) | undefined;
  if (response.ok && body) return body;
  const code = body?.error?.code;
  throw new BundleError(code === 'ERR_BUILD_NOT_FOUND' ? 'ERR_BUILD_NOT_FOUND' : 'ERR_BUILDER_REJECTED', `Builder ${record.builder} (${owner.url}) answered the forwarded cancel with ${response.status}${body?.error?.message ? `: ${body.error.message}` : ''}`, { details: { builder: record.builder, status: response.status === 401 ? 502 : response.status } });
}
