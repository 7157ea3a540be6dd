/**
 * The builder signs every bundle's provenance: GET /v1/keys and the OpenAPI document publish the
 * key, record.provenance verifies with it for exactly the artifact, and the statement carries
 * what the request and the build were (a source URL without its query, the request's input).
 */
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KeysResponse } from '../../lib/protocol.js';
import { loadTrustedKey, publicKeyPath } from '../../lib/provenance/keys.js';
import { verifyProvenance } from '../../lib/provenance/verify.js';
import { TEST_UID_RANGES, childEnv, hostTargetSpec, startSourceServer, startTestBuilder, tgz, type SourceServer, type TestBuilder } from '../helpers/builder.js';
import { runCli } from '../helpers/cli.js';
import { packageTar, tempDir } from '../helpers/packages.js';

let builder: TestBuilder;
let sources: SourceServer;
beforeAll(async () => {
  [builder, sources] = await Promise.all([startTestBuilder({ uids: TEST_UID_RANGES.provenance }), startSourceServer()]);
});
afterAll(async () => {
  await Promise.all([builder?.stop(), sources?.stop()]);
});

describe('builder provenance', () => {
  it('publishes its key at GET /v1/keys (no token) and in the OpenAPI document', async () => {
    const keys = await (await fetch(`${builder.url}/v1/keys`)).json() as KeysResponse;
    expect(keys.keys).toEqual([{ keyid: builder.signingKey.keyid, algorithm: 'ed25519', publicKey: builder.signingKey.publicKeyPem }]);
    expect((await loadTrustedKey(keys.keys[0]?.publicKey ?? '')).keyid).toBe(builder.signingKey.keyid);
    const openapi = await (await fetch(`${builder.url}/v1/openapi.json`)).json() as { info: Record<string, unknown>; paths: Record<string, unknown> };
    expect(openapi.info['x-signing-keys']).toEqual(keys.keys);
    expect(Object.keys(openapi.paths)).toContain('/v1/keys');
    // The public key is also written beside the private one, as PEM.
    expect((await loadTrustedKey(publicKeyPath(path.join(builder.dir, 'signing-key.pem')))).keyid).toBe(builder.signingKey.keyid);
  });

  it('signs the finished build: record.provenance verifies for the artifact, source and target; the statement has what the request said', async () => {
    const source = await tgz(packageTar({ name: 'signed', version: '1.2.3' }));
    const url = sources.add('signed-1.2.3.tgz', source.body);
    const input = { spec: 'signed@1.2.3', kind: 'registry', sha256: source.sha256 };
    const { id } = await builder.client.createBuild({
      source: { url: `${url}?X-Amz-Signature=secret-signature`, sha256: source.sha256 }, target: hostTargetSpec(),
      overrides: { registry: 'https://user:hunter2@registry.npmjs.org/' }, provenance: { runId: 'run-1', input },
    }, { idempotencyKey: 'provenance-1' });
    const record = await builder.client.followBuild(id);
    expect(record.state, JSON.stringify(record.error)).toBe('succeeded');
    const target = `${hostTargetSpec().os}-${hostTargetSpec().cpu}`;
    const verified = verifyProvenance([record.provenance], { keys: [builder.signingKey], sha256: record.artifact?.sha256 ?? '', file: record.artifact?.file ?? '', sourceSha256: source.sha256, target, builder: 'test-builder' });
    expect(verified.invocationId).toBe(`run-1/${id}`);
    const text = Buffer.from(record.provenance?.payload ?? '', 'base64').toString();
    expect(text).not.toContain('secret-signature');
    expect(text).not.toContain('hunter2');
    const statement = verified.statement.predicate;
    expect(statement.buildDefinition.externalParameters).toMatchObject({ input, source: { sha256: source.sha256 }, target, node: hostTargetSpec().node });
    expect(statement.buildDefinition.resolvedDependencies[0]).toMatchObject({ name: 'source', uri: url, digest: { sha256: source.sha256 } });
    expect(statement.runDetails.metadata.startedOn).toBe(record.startedAt);
    // The record as the store keeps it (another replica's view) carries it too.
    expect((await builder.builder.service.records.readRecord(id))?.provenance).toEqual(record.provenance);
  }, 120_000);

  it('a builder refuses to start with a signing key that group or others may read (exit 2)', async () => {
    const root = await tempDir('bd-provenance-cli-');
    try {
      const key = path.join(root.dir, 'signing-key.pem');
      await writeFile(key, builder.signingKey.privateKey.export({ type: 'pkcs8', format: 'pem' }));
      await chmod(key, 0o644);
      const run = await runCli(['builder', '--port', '0', '--store', path.join(root.dir, 'store'), '--signing-key', key], {
        cwd: root.dir, env: childEnv({ BUNDLE_DISPATCH_BUILDER_TOKENS: 'a-long-enough-test-token', BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work'), BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: 'off' }),
      });
      expect(run.code).toBe(2);
      expect(run.stderr).toContain('ERR_CONFIG');
      expect(run.stderr).toContain('chmod 600');
    } finally {
      await root.remove();
    }
  });
});
