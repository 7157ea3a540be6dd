/**
 * `bundle-dispatch verify` end to end (the real bin; `npm run build` first): bundles dispatched
 * on the embedded default, then every kind of tampering refused with its own code, the URL
 * form, and openssl as an independent verifier of the very envelope dispatch stored.
 */
import { execFileSync } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DispatchResult, Manifest } from '../../lib/dispatch/run.js';
import { INTOTO_PAYLOAD_TYPE, pae, signEnvelope, type DsseEnvelope } from '../../lib/provenance/dsse.js';
import { keyId } from '../../lib/provenance/keys.js';
import { runCli } from '../helpers/cli.js';
import { NODE, writeFixture } from '../helpers/dispatch.js';
import { tempDir } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
let project: string;
let publicKey: string;
let linux: { file: string; envelope: DsseEnvelope; sourceSha256: string };
let darwin: { file: string; envelope: DsseEnvelope };
let server: Server | undefined;
const env: NodeJS.ProcessEnv = {};

const read = async (file: string) => JSON.parse(await readFile(file, 'utf8')) as DsseEnvelope;
const statementOf = (envelope: DsseEnvelope) => JSON.parse(Buffer.from(envelope.payload, 'base64').toString('utf8')) as Record<string, unknown>;

beforeAll(async () => {
  root = await tempDir('bd-verify-');
  project = path.join(root.dir, 'project');
  await mkdir(project, { recursive: true });
  env.BUNDLE_DISPATCH_WORK_DIR = path.join(root.dir, 'work');
  await writeFile(path.join(project, '.bundlerc'), JSON.stringify({ cacheDir: path.join(root.dir, 'cache') }));
  const fixture = await writeFixture(path.join(root.dir, 'signed-app-1.0.0.tgz'), { name: 'signed-app', version: '1.0.0' });
  const run = await runCli([fixture, '--targets', `linux-${process.arch}@${NODE},darwin-arm64@22`, '--json'], { cwd: project, env });
  expect(run.code, run.stderr).toBe(0);
  const result = JSON.parse(run.stdout) as DispatchResult;
  const [first, second] = result.targets;
  if (!first?.ok || !second?.ok) throw new Error('dispatch failed');
  const dist = path.join(project, 'dist');
  linux = { file: path.join(dist, first.key), envelope: await read(path.join(dist, `${first.key}.intoto.jsonl`)), sourceSha256: result.source.sha256 };
  darwin = { file: path.join(dist, second.key), envelope: await read(path.join(dist, `${second.key}.intoto.jsonl`)) };
  publicKey = path.join(root.dir, 'cache', 'keys', 'embedded-builder.pub.pem');
  // The manifest lists each bundle's provenance and the key that signed it.
  const manifest = JSON.parse(await readFile(path.join(dist, result.manifest ?? ''), 'utf8')) as Manifest;
  const entry = manifest.targets[first.target];
  expect(entry?.ok && entry.provenance).toEqual({ key: `${first.key}.intoto.jsonl`, keyid: linux.envelope.signatures[0]?.keyid });
}, 180_000);

afterAll(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  await root?.remove();
});

/** Copies the linux bundle (and, when given, a provenance file) to `name` in a case directory; runs verify on it. */
async function verifyCase(name: string, options: { bundle?: Buffer; envelope?: DsseEnvelope | string; args?: string[]; key?: string[] } = {}) {
  const dir = path.join(root.dir, 'cases', name);
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, path.basename(linux.file));
  if (options.bundle) await writeFile(file, options.bundle);
  else await copyFile(linux.file, file);
  const envelope = options.envelope ?? linux.envelope;
  await writeFile(`${file}.intoto.jsonl`, typeof envelope === 'string' ? envelope : `${JSON.stringify(envelope)}\n`);
  const run = await runCli(['verify', file, ...(options.key ?? ['--key', publicKey]), '--json', ...(options.args ?? [])], { cwd: project });
  const body = run.stdout ? (JSON.parse(run.stdout) as { ok?: boolean; error?: { code: string } }) : {};
  return { ...run, body, code: run.code };
}

describe('bundle-dispatch verify', () => {
  it('accepts an untouched bundle: signature, statement, subject, and the optional source, target and builder checks', async () => {
    const builder = String((statementOf(linux.envelope).predicate as { runDetails: { builder: { id: string } } }).runDetails.builder.id);
    const run = await verifyCase('ok', { args: ['--source-sha256', linux.sourceSha256, '--target', `linux-${process.arch}`, '--builder', builder] });
    expect(run.code, run.stderr).toBe(0);
    expect(run.body).toMatchObject({ ok: true, predicateType: 'https://slsa.dev/provenance/v1', source: { sha256: linux.sourceSha256, checked: true }, target: { checked: true }, builder: { id: builder, checked: true } });
    // Human output says what was verified.
    const human = await runCli(['verify', linux.file, '--key', publicKey], { cwd: project });
    expect(human.code).toBe(0);
    expect(human.stdout).toContain('provenance verified');
    expect(human.stdout).toContain(`signed by  ${linux.envelope.signatures[0]?.keyid}`);
  });

  it('the statement is honest: subject, source, lockfile, runtime, builder and invocation from the build', () => {
    const statement = statementOf(linux.envelope) as { subject: unknown; predicate: { buildDefinition: { externalParameters: Record<string, unknown>; resolvedDependencies: Array<Record<string, unknown>> }; runDetails: { metadata: Record<string, string> } } };
    expect(statement.subject).toEqual([{ name: path.basename(linux.file), digest: { sha256: execFileSync('sha256sum', [linux.file], { encoding: 'utf8' }).split(' ')[0] } }]);
    const { externalParameters, resolvedDependencies } = statement.predicate.buildDefinition;
    expect(externalParameters).toMatchObject({ input: { kind: 'tarball', spec: expect.stringContaining('signed-app-1.0.0.tgz') }, source: { sha256: linux.sourceSha256 }, target: `linux-${process.arch}`, node: NODE, overrides: {} });
    expect(resolvedDependencies.map((dependency) => (dependency.annotations as { role: string }).role)).toEqual(['source', 'lockfile', 'runtime']);
    // The host Node is no registry package: named by the sha256 of the binary that ran.
    const runtime = resolvedDependencies[2] as { digest: { sha256: string }; annotations: Record<string, unknown> };
    expect(runtime.digest.sha256).toBe(execFileSync('sha256sum', [process.execPath], { encoding: 'utf8' }).split(' ')[0]);
    expect(runtime.annotations).toMatchObject({ source: 'host', version: NODE });
    expect(statement.predicate.runDetails.metadata.invocationId).toMatch(/^\d{8}T\d{6}Z-[0-9a-f]{8}\/[0-9a-z]+$/);
    // A cross target's runtime is not downloaded: no digest, and it says why.
    const cross = (statementOf(darwin.envelope) as typeof statement).predicate.buildDefinition.resolvedDependencies[2] as { digest?: unknown; annotations: Record<string, unknown> };
    expect(cross.digest).toBeUndefined();
    expect(String(cross.annotations.digestOmitted)).toContain('not downloaded');
  });

  it('refuses each kind of tampering with its own code (exit 1)', async () => {
    const bundle = await readFile(linux.file);
    const flipped = Buffer.from(bundle);
    flipped[100] = (flipped[100] ?? 0) ^ 1;
    const statement = statementOf(linux.envelope) as { subject: Array<{ digest: { sha256: string } }>; predicateType: string };
    const changedPayload = { ...linux.envelope, payload: Buffer.from(JSON.stringify({ ...statement, subject: [{ ...statement.subject[0], digest: { sha256: 'f'.repeat(64) } }] })).toString('base64') };
    const sig = Buffer.from(linux.envelope.signatures[0]?.sig ?? '', 'base64');
    sig[7] = (sig[7] ?? 0) ^ 1;
    const changedSig = { ...linux.envelope, signatures: [{ ...linux.envelope.signatures[0], sig: sig.toString('base64') }] };
    // A statement of another predicate type, validly signed by the very same builder key.
    const privateKey = createPrivateKey(await readFile(path.join(root.dir, 'cache', 'keys', 'embedded-builder.pem'), 'utf8'));
    const otherType = signEnvelope(Buffer.from(JSON.stringify({ ...statement, predicateType: 'https://in-toto.io/attestation/vulns/v0.1' })), INTOTO_PAYLOAD_TYPE, { privateKey, keyid: linux.envelope.signatures[0]?.keyid ?? '' });
    const stranger = generateKeyPairSync('ed25519');
    const strangerKey = path.join(root.dir, 'stranger.pub.pem');
    await writeFile(strangerKey, stranger.publicKey.export({ type: 'spki', format: 'pem' }));
    const cases: Array<[string, Parameters<typeof verifyCase>[1], string]> = [
      ['one byte of the bundle', { bundle: flipped }, 'ERR_PROVENANCE_DIGEST'],
      ['the payload', { envelope: changedPayload }, 'ERR_PROVENANCE_SIGNATURE'],
      ['the payloadType', { envelope: { ...linux.envelope, payloadType: 'application/json' } }, 'ERR_PROVENANCE_PAYLOAD_TYPE'],
      ['the signature', { envelope: changedSig }, 'ERR_PROVENANCE_SIGNATURE'],
      ['no signature', { envelope: { ...linux.envelope, signatures: [] } }, 'ERR_PROVENANCE_UNSIGNED'],
      ['a valid envelope of another bundle', { envelope: darwin.envelope }, 'ERR_PROVENANCE_SUBJECT'],
      ['the wrong key', { key: ['--key', strangerKey] }, 'ERR_PROVENANCE_UNTRUSTED_KEY'],
      ['another predicate type', { envelope: otherType }, 'ERR_PROVENANCE_PREDICATE'],
      ['not JSON', { envelope: 'nonsense\n' }, 'ERR_PROVENANCE_MALFORMED'],
      ['another source', { args: ['--source-sha256', 'a'.repeat(64)] }, 'ERR_PROVENANCE_SOURCE'],
      ['another target', { args: ['--target', 'linux-s390x'] }, 'ERR_PROVENANCE_TARGET'],
      ['another builder', { args: ['--builder', 'builder-elsewhere'] }, 'ERR_PROVENANCE_BUILDER'],
    ];
    for (const [name, options, code] of cases) {
      const run = await verifyCase(name.replace(/\W+/g, '-'), options);
      expect([name, run.code, run.body.error?.code]).toEqual([name, 1, code]);
    }
    // A trusted key among others is enough; a missing provenance file fails; no --key is a usage error.
    expect((await verifyCase('two-keys', { key: ['--key', strangerKey, '--key', publicKey] })).code).toBe(0);
    const missing = await runCli(['verify', path.join(root.dir, 'signed-app-1.0.0.tgz'), '--key', publicKey, '--json'], { cwd: project });
    expect([missing.code, (JSON.parse(missing.stdout) as { error: { code: string } }).error.code]).toEqual([1, 'ERR_PROVENANCE_MISSING']);
    const usage = await runCli(['verify', linux.file], { cwd: project });
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('ERR_USAGE');
  });

  it('verifies a bundle by URL, its provenance fetched from beside it', async () => {
    const dist = path.join(project, 'dist');
    server = createServer((request, response) => {
      void readFile(path.join(dist, decodeURIComponent(request.url ?? '/'))).then((body) => response.writeHead(200).end(body), () => response.writeHead(404).end());
    });
    await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/${path.relative(dist, linux.file)}`;
    const run = await runCli(['verify', url, '--key', publicKey, '--json'], { cwd: project });
    expect(run.code, run.stderr).toBe(0);
    expect((await runCli(['verify', url, '--key', publicKey, '--provenance', `${url.replace('linux', 'darwin')}-none`], { cwd: project })).code).toBe(1);
  });

  it('openssl, an independent verifier, accepts the stored envelope over its PAE with the published public key', async () => {
    const dir = path.join(root.dir, 'openssl');
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'pae.bin'), pae(linux.envelope.payloadType, Buffer.from(linux.envelope.payload, 'base64')));
    await writeFile(path.join(dir, 'sig.bin'), Buffer.from(linux.envelope.signatures[0]?.sig ?? '', 'base64'));
    const out = execFileSync('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', publicKey, '-rawin', '-in', path.join(dir, 'pae.bin'), '-sigfile', path.join(dir, 'sig.bin')], { encoding: 'utf8' });
    expect(out).toContain('Signature Verified Successfully');
    // The keyid in the envelope is the sha256 of that public key's DER.
    const { createPublicKey } = await import('node:crypto');
    expect(keyId(createPublicKey(await readFile(publicKey, 'utf8')))).toBe(linux.envelope.signatures[0]?.keyid);
  });
});
