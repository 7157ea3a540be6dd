/**
 * Dispatch publishes a result only when its provenance verifies with the pool member's key:
 * real builders (the bin) and s3rver, plus a client in front of a real builder that tampers
 * with the records it answers (a man in the middle) for the unsigned and re-written cases.
 */
import { generateKeyPairSync } from 'node:crypto';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BuilderClient } from '../../lib/builder/client.js';
import { prepareInput, type ToolEnvironment } from '../../lib/dispatch/input.js';
import { ensureLockfile } from '../../lib/dispatch/lockfile.js';
import { parseTargets, planTargets, type Pool } from '../../lib/dispatch/plan.js';
import { dispatch, provenanceKey, type DispatchResult, type Manifest } from '../../lib/dispatch/run.js';
import type { BuildRecord } from '../../lib/protocol.js';
import { keyId } from '../../lib/provenance/keys.js';
import { parseJsonl, verifyProvenance } from '../../lib/provenance/verify.js';
import { locateNpm } from '../../lib/workflow/npm.js';
import { NODE, startDispatchWorld, writeFixture, type DispatchWorld } from '../helpers/dispatch.js';
import { tempDir, testCacheDir } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
let world: DispatchWorld;

beforeAll(async () => {
  root = await tempDir('bd-dispatch-provenance-');
  world = await startDispatchWorld(root.dir);
}, 60_000);
afterAll(async () => {
  await world?.stop();
  await root?.remove();
});

const tools = (): ToolEnvironment => ({
  node: process.execPath,
  npmCli: locateNpm(process.env.PATH),
  env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root', npm_config_cache: path.join(testCacheDir, 'npm'), npm_config_update_notifier: 'false' },
  secrets: [],
});

async function run(version: string, targets: string[], pools: Pool[] = world.pools()): Promise<DispatchResult> {
  const input = await writeFixture(path.join(root.dir, `signed-${version}.tgz`), { name: 'signed', version });
  const work = await tempDir('bd-dispatch-provenance-run-');
  try {
    const prepared = await prepareInput(input, { cwd: root.dir, workDir: work.dir, tools: tools() });
    const source = await ensureLockfile(prepared, { tools: tools(), workDir: work.dir });
    return await dispatch({
      input: prepared, source, targets: planTargets(parseTargets(targets), pools), sourceStore: world.sources, destination: world.releases,
      keyTemplate: '{name}/{version}/{file}', manifestTemplate: '{name}/{version}/manifest.json', presignExpiry: 3600, signal: new AbortController().signal, tmpDir: work.dir,
    });
  } finally {
    await work.remove();
  }
}

async function readText(key: string): Promise<string> {
  const { body } = await world.releases.get(key);
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Everything the destination holds under a version (bundles, provenance, markers, manifest). */
async function published(version: string): Promise<string[]> {
  return (await world.releases.list({ prefix: `signed/${version}/` })).items.map((item) => item.key).sort();
}

/** A's client, its records passed through `tamper` on the way back. */
function tampering(client: BuilderClient, tamper: (record: BuildRecord) => BuildRecord): BuilderClient {
  return {
    ...client,
    get url() {
      return client.url;
    },
    getBuild: async (...args) => tamper(await client.getBuild(...args)),
    followBuild: async (...args) => tamper(await client.followBuild(...args)),
  };
}

describe('dispatch and provenance', () => {
  it('stores <bundle>.intoto.jsonl beside each bundle, verified with the pool\'s key, listed in the manifest; a cached re-run keeps it as it was', async () => {
    const targets = [`linux-x64@${NODE}`, `linux-arm64@${NODE}`];
    const result = await run('1.0.0', targets);
    expect(result.ok).toBe(true);
    const manifest = JSON.parse(await readText('signed/1.0.0/manifest.json')) as Manifest;
    const stored: string[] = [];
    for (const [index, outcome] of result.targets.entries()) {
      if (!outcome.ok) throw new Error(outcome.error.message);
      const keys = index === 0 ? world.a.keys : world.b.keys;
      expect(outcome.provenance).toEqual({ key: provenanceKey(outcome.key), keyid: keys[0]?.keyid });
      expect(manifest.targets[outcome.target]).toMatchObject({ provenance: outcome.provenance });
      const text = await readText(provenanceKey(outcome.key));
      stored.push(text);
      const verified = verifyProvenance(parseJsonl(text), { keys, sha256: outcome.sha256, sourceSha256: result.source.sha256, target: outcome.target.split('@')[0], builder: index === 0 ? 'builder-a' : 'builder-b' });
      expect(verified.invocationId).toBe(`${result.runId}/${outcome.buildId}`);
    }
    const builds = (await world.a.client.listBuilds({ limit: 100 })).builds.length;
    const again = await run('1.0.0', targets);
    expect(again.targets.every((outcome) => outcome.ok && outcome.cached)).toBe(true);
    expect((await world.a.client.listBuilds({ limit: 100 })).builds.length).toBe(builds);
    for (const [index, outcome] of again.targets.entries()) {
      if (!outcome.ok) throw new Error('unreachable');
      expect(outcome.provenance?.key).toBe(provenanceKey(outcome.key));
      expect(await readText(provenanceKey(outcome.key))).toBe(stored[index]);
    }
  }, 120_000);

  it('a result signed by another key than the pool\'s, an unsigned one and a re-written one fail their target with nothing published', async () => {
    const stranger = generateKeyPairSync('ed25519').publicKey;
    const cases: Array<[string, Pool[], string]> = [
      ['2.0.0', world.pools({ 'linux-x64': [{ url: world.a.url, client: world.a.client, keys: [{ publicKey: stranger, keyid: keyId(stranger) }] }] }), 'ERR_PROVENANCE_UNTRUSTED_KEY'],
      ['2.0.1', world.pools({ 'linux-x64': [{ url: world.a.url, client: tampering(world.a.client, ({ provenance: _dropped, ...record }) => record), keys: world.a.keys }] }), 'ERR_PROVENANCE_UNSIGNED'],
      ['2.0.2', world.pools({ 'linux-x64': [{ url: world.a.url, keys: world.a.keys, client: tampering(world.a.client, (record) => {
        if (!record.provenance) return record;
        // The statement re-written (another builder named) under the same signature: it no longer holds.
        const statement = JSON.parse(Buffer.from(record.provenance.payload, 'base64').toString()) as { predicate: { runDetails: { builder: { id: string } } } };
        statement.predicate.runDetails.builder.id = 'urn:bundle-dispatch:builder:someone-else';
        return { ...record, provenance: { ...record.provenance, payload: Buffer.from(JSON.stringify(statement)).toString('base64') } };
      }) }] }), 'ERR_PROVENANCE_SIGNATURE'],
    ];
    for (const [version, pools, code] of cases) {
      const result = await run(version, [`linux-x64@${NODE}`, `linux-arm64@${NODE}`], pools);
      const [x64, arm] = result.targets;
      expect([version, x64?.ok, x64?.ok === false ? x64.error.code : undefined]).toEqual([version, false, code]);
      expect(arm?.ok).toBe(true);
      // Only the other target's bundle, its provenance and marker, and the manifest (recording the failure).
      const keys = await published(version);
      expect(keys.filter((key) => key.includes('linux-x64'))).toEqual([]);
      expect(keys.filter((key) => key.endsWith('.tgz') || key.endsWith('.intoto.jsonl'))).toHaveLength(2);
      const manifest = JSON.parse(await readText(`signed/${version}/manifest.json`)) as Manifest;
      expect(manifest.targets[`linux-x64@${NODE}`]).toMatchObject({ ok: false, error: { code } });
    }
    expect((await world.sources.list({ prefix: 'staging/' })).items).toEqual([]);
  }, 180_000);
});
