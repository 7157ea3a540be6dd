/**
 * deploy/: the Kubernetes manifests, the Containerfile and the systemd unit, checked without a
 * cluster (none runs here). Every manifest validates against the Kubernetes API schemas and
 * KEDA's (kubernetes-models); unknown or misspelled fields, which those validators let through,
 * are caught by TypeScript's excess-property check against the same models' types (tsc on the
 * manifests as object literals). Then cross-checks against the code: selectors and labels,
 * probe paths from the builder's route table, ports and config keys from the schema, the drain
 * deadline, the scaling query the docs name, the entrypoint.
 */
import { execFile } from 'node:child_process';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { Namespace, Secret, ConfigMap, Service } from 'kubernetes-models/v1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ScaledObject } from '@kubernetes-models/keda/keda.sh/v1alpha1';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROUTES } from '../../lib/builder/routes.js';
import { loadConfig } from '../../lib/config/load.js';
import { repoRoot, tempDir } from '../helpers/packages.js';

const execFileAsync = promisify(execFile);
const K8S = path.join(repoRoot, 'deploy', 'kubernetes');
const ARCHES = { 'linux-x64': 'amd64', 'linux-arm64': 'arm64' } as const;

type Manifest = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
const MODELS: Record<string, { type: string; from: string; validate: (doc: Manifest) => void }> = {
  Namespace: { type: 'INamespace', from: 'kubernetes-models/v1', validate: (doc) => new Namespace(doc as never).validate() },
  Secret: { type: 'ISecret', from: 'kubernetes-models/v1', validate: (doc) => new Secret(doc as never).validate() },
  ConfigMap: { type: 'IConfigMap', from: 'kubernetes-models/v1', validate: (doc) => new ConfigMap(doc as never).validate() },
  Service: { type: 'IService', from: 'kubernetes-models/v1', validate: (doc) => new Service(doc as never).validate() },
  Deployment: { type: 'IDeployment', from: 'kubernetes-models/apps/v1', validate: (doc) => new Deployment(doc as never).validate() },
  PodDisruptionBudget: { type: 'IPodDisruptionBudget', from: 'kubernetes-models/policy/v1', validate: (doc) => new PodDisruptionBudget(doc as never).validate() },
  ScaledObject: { type: 'IScaledObject', from: '@kubernetes-models/keda/keda.sh/v1alpha1', validate: (doc) => new ScaledObject(doc as never).validate() },
};

let scratch: { dir: string; remove: () => Promise<void> };
const files = new Map<string, Manifest[]>();
beforeAll(async () => {
  scratch = await tempDir('bd-manifests-');
  for (const name of (await readdir(K8S)).filter((file) => file.endsWith('.yaml')).sort()) {
    const documents = parseAllDocuments(await readFile(path.join(K8S, name), 'utf8'));
    for (const document of [documents].flat()) expect(document.errors, name).toEqual([]);
    files.set(name, [documents].flat().map((document) => document.toJS() as Manifest));
  }
});
afterAll(async () => {
  await scratch?.remove();
});

const all = () => [...files.values()].flat();
const ofKind = (file: string, kind: string): Manifest => {
  const found = files.get(file)?.find((doc) => doc.kind === kind);
  expect(found, `${file}: ${kind}`).toBeDefined();
  return found as Manifest;
};

/** tsc on the manifests as typed object literals: excess properties (unknown or misspelled fields) are errors. */
async function typecheck(documents: Manifest[], name: string): Promise<{ code: number; output: string }> {
  const used = [...new Set(documents.map((doc) => doc.kind as string))];
  const imports = used.map((kind) => `import type { ${MODELS[kind]?.type} } from '${MODELS[kind]?.from}';`);
  const body = documents.map((doc, index) => `export const doc${index}: ${MODELS[doc.kind]?.type} = ${JSON.stringify(doc, null, 2)};`);
  const file = path.join(repoRoot, 'test', 'deploy', `.${name}.check.ts`);
  await writeFile(file, `${imports.join('\n')}\n${body.join('\n')}\n`);
  try {
    await execFileAsync(process.execPath, [path.join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '--strict', '--skipLibCheck', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', file], { cwd: repoRoot });
    return { code: 0, output: '' };
  } catch (error) {
    const failure = error as { code?: number; stdout?: string };
    return { code: failure.code ?? 1, output: failure.stdout ?? '' };
  } finally {
    await import('node:fs/promises').then(({ rm }) => rm(file, { force: true }));
  }
}

describe('deploy/kubernetes', () => {
  it('every document is a known kind and validates against the Kubernetes and KEDA schemas', () => {
    expect(all().length).toBeGreaterThanOrEqual(13);
    for (const doc of all()) {
      expect(Object.keys(MODELS), `${doc.kind} ${doc.metadata?.name}`).toContain(doc.kind);
      expect(() => MODELS[doc.kind]?.validate(doc), `${doc.kind} ${doc.metadata?.name}`).not.toThrow();
      expect(doc.metadata?.namespace ?? doc.metadata?.name, `${doc.kind} ${doc.metadata?.name}`).toBe('bundle-dispatch');
    }
  });

  it('no unknown or misspelled field anywhere (TypeScript excess-property check against the same models); a misspelling is caught', async () => {
    const clean = await typecheck(all(), 'all');
    expect(clean, clean.output).toEqual({ code: 0, output: '' });
    // The check can fail: a misspelled probe, deep in a Deployment, which the schema validators accept.
    const deployment = structuredClone(ofKind('builder-linux-x64.yaml', 'Deployment'));
    const container = deployment.spec.template.spec.containers[0];
    container.readinesProbe = container.readinessProbe;
    delete container.readinessProbe;
    expect(() => new Deployment(deployment as never).validate()).not.toThrow();
    const misspelled = await typecheck([deployment], 'misspelled');
    expect(misspelled.code).not.toBe(0);
    expect(misspelled.output).toMatch(/readinesProbe\W* does not exist in type 'IContainer'/);
  }, 120_000);

  it('the arm64 file is the x64 file with the architecture swapped', async () => {
    const x64 = await readFile(path.join(K8S, 'builder-linux-x64.yaml'), 'utf8');
    const arm64 = await readFile(path.join(K8S, 'builder-linux-arm64.yaml'), 'utf8');
    const swapped = x64.replaceAll('linux-x64', 'linux-arm64').replace('kubernetes.io/arch: amd64', 'kubernetes.io/arch: arm64').split('\n').slice(2);
    expect(arm64.split('\n').slice(2)).toEqual(swapped);
  });

  for (const [target, arch] of Object.entries(ARCHES)) {
    describe(target, () => {
      const file = `builder-${target}.yaml`;
      const settings = async () => {
        const configMap = ofKind(file, 'ConfigMap');
        const text = configMap.data['.bundlerc'] as string;
        const configFile = path.join(scratch.dir, `${target}.bundlerc`);
        await writeFile(configFile, text);
        return { json: JSON.parse(text) as { builder: Record<string, unknown> }, loaded: await loadConfig({ cwd: scratch.dir, env: {}, homeDir: scratch.dir, tmpDir: scratch.dir, configFile }) };
      };

      it('the ConfigMap is a valid builder configuration (every key a real one) for this target alone', async () => {
        const { loaded } = await settings();
        expect(loaded.errors).toEqual([]);
        expect(loaded.config.builder.targets).toEqual([target]);
        expect(loaded.config.builder.store).toMatch(new RegExp(`^s3://.+/${target}$`));
        expect(loaded.config.builder.host).toBe('0.0.0.0');
      });

      it('selectors match the pod labels; Service, PDB and ScaledObject point at this Deployment; the node pool is the architecture\'s', () => {
        const deployment = ofKind(file, 'Deployment');
        const podLabels = deployment.spec.template.metadata.labels as Record<string, string>;
        const matches = (selector: Record<string, string>) => Object.entries(selector).every(([key, value]) => podLabels[key] === value);
        expect(matches(deployment.spec.selector.matchLabels)).toBe(true);
        expect(podLabels['bundle-dispatch/target']).toBe(target);
        expect(matches(ofKind(file, 'Service').spec.selector)).toBe(true);
        expect(matches(ofKind(file, 'PodDisruptionBudget').spec.selector.matchLabels)).toBe(true);
        expect(ofKind(file, 'ScaledObject').spec.scaleTargetRef.name).toBe(deployment.metadata.name);
        expect(deployment.spec.template.spec.nodeSelector['kubernetes.io/arch']).toBe(arch);
        expect(deployment.spec.strategy.rollingUpdate.maxUnavailable).toBe(0);
        const volumes = deployment.spec.template.spec.volumes as Manifest[];
        expect(volumes.find((volume) => volume.name === 'config')?.configMap.name).toBe(ofKind(file, 'ConfigMap').metadata.name);
        for (const name of ['cache', 'work']) expect(volumes.find((volume) => volume.name === name)?.emptyDir.sizeLimit, name).toMatch(/^\d+Gi$/);
      });

      it('probes, preStop and ports are the builder\'s own: routes from its route table, the port from its configuration', async () => {
        const { loaded } = await settings();
        const container = ofKind(file, 'Deployment').spec.template.spec.containers[0];
        const route = (method: string, url: string) => ROUTES.find((candidate) => candidate.method === method && candidate.url === url);
        expect(route('GET', container.readinessProbe.httpGet.path)?.public).toBe(true);
        expect(route('GET', container.livenessProbe.httpGet.path)?.public).toBe(true);
        expect(container.readinessProbe.httpGet.path).toBe('/v1/health/ready');
        expect(container.livenessProbe.httpGet.path).toBe('/v1/health/live');
        const port = container.ports.find((candidate: Manifest) => candidate.name === container.readinessProbe.httpGet.port);
        expect(port.containerPort).toBe(loaded.config.builder.port);
        expect(ofKind(file, 'Service').spec.ports[0].targetPort).toBe(port.name);
        const preStop = (container.lifecycle.preStop.exec.command as string[]).join(' ');
        expect(route('POST', '/v1/drain')).toBeDefined();
        expect(preStop).toContain(`http://127.0.0.1:${loaded.config.builder.port}/v1/drain?wait=true`);
        expect(preStop).toContain(loaded.config.builder.tokenFile);
        const annotations = ofKind(file, 'Deployment').spec.template.metadata.annotations;
        expect(annotations['prometheus.io/port']).toBe(String(loaded.config.builder.port));
        expect(annotations['prometheus.io/path']).toBe('/metrics');
        expect(loaded.config.builder.metrics).toBe('api');
      });

      it('the grace period covers the drain deadline; the ScaledObject runs the documented query with threshold = slots and min replicas >= 1', async () => {
        const { loaded } = await settings();
        const deployment = ofKind(file, 'Deployment');
        expect(deployment.spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(loaded.config.builder.shutdownGrace + 30);
        const scaled = ofKind(file, 'ScaledObject');
        const doc = await readFile(path.join(repoRoot, 'docs', 'builder.md'), 'utf8');
        const query = /### The scaling query[^]*?```promql\n(.+)\n```/.exec(doc)?.[1] as string;
        const trigger = scaled.spec.triggers[0];
        expect(trigger.type).toBe('prometheus');
        expect(trigger.metadata.query).toBe(query.replaceAll('target="linux-x64"', `target="${target}"`));
        expect(Number(trigger.metadata.threshold)).toBe(loaded.config.builder.slots);
        expect(scaled.spec.minReplicaCount).toBeGreaterThanOrEqual(1);
        expect(scaled.spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.stabilizationWindowSeconds).toBeGreaterThan(0);
      });
    });
  }

  it('the signing key and tokens come from Secrets, mounted owner-read-only (the builder refuses a key others may read)', () => {
    for (const target of Object.keys(ARCHES)) {
      const volumes = ofKind(`builder-${target}.yaml`, 'Deployment').spec.template.spec.volumes as Manifest[];
      expect(volumes.find((volume) => volume.name === 'signing-key')?.secret).toMatchObject({ secretName: `builder-signing-key-${target}`, defaultMode: 0o400 });
      expect(volumes.find((volume) => volume.name === 'tokens')?.secret).toMatchObject({ secretName: ofKind('common.yaml', 'Secret').metadata.name, defaultMode: 0o400 });
    }
  });

  it('the dispatch side\'s pools name the Services, at their port', async () => {
    const dispatchSide = JSON.parse(await readFile(path.join(K8S, 'dispatch.bundlerc.json'), 'utf8')) as { dispatch: { pools: Record<string, Array<{ url: string }>> } };
    expect(Object.keys(dispatchSide.dispatch.pools).sort()).toEqual(Object.keys(ARCHES).sort());
    for (const [target, members] of Object.entries(dispatchSide.dispatch.pools)) {
      const service = ofKind(`builder-${target}.yaml`, 'Service');
      expect(members.map((member) => member.url)).toEqual([`http://${service.metadata.name}.${service.metadata.namespace}.svc:${service.spec.ports[0].port}`]);
    }
    const file = path.join(scratch.dir, 'dispatch.bundlerc');
    await writeFile(file, JSON.stringify(dispatchSide));
    expect((await loadConfig({ cwd: scratch.dir, env: {}, homeDir: scratch.dir, tmpDir: scratch.dir, configFile: file })).errors).toEqual([]);
  });
});
