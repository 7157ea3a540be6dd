/**
 * The SLSA provenance v1 statement of one bundle (in-toto Statement v1), built from what the
 * builder knows when the bundle is written: nothing in it is a placeholder. Fields the builder
 * does not know are left out, and where leaving one out would mislead, an annotation says why.
 */
import type { Target } from '../target.js';
import { formatTarget } from '../target.js';

export const STATEMENT_TYPE = 'https://in-toto.io/Statement/v1';
export const SLSA_PROVENANCE_V1 = 'https://slsa.dev/provenance/v1';
/**
 * What a bundle-dispatch build is; docs/provenance.md describes its parameters. URNs, not
 * https URLs: the project has no web address of its own, and an invented one would be a placeholder.
 */
export const BUILD_TYPE = 'urn:bundle-dispatch:build-type:bundle:v1';
/** `runDetails.builder.id` of a builder named `id` (`builder.id`). */
export const builderUri = (id: string): string => `urn:bundle-dispatch:builder:${id}`;

/** in-toto ResourceDescriptor (subset used here). */
export interface ResourceDescriptor {
  name?: string;
  uri?: string;
  digest?: Record<string, string>;
  annotations?: Record<string, unknown>;
}

export interface ProvenanceStatement {
  _type: typeof STATEMENT_TYPE;
  subject: Array<{ name: string; digest: { sha256: string } }>;
  predicateType: typeof SLSA_PROVENANCE_V1;
  predicate: {
    buildDefinition: {
      buildType: string;
      externalParameters: Record<string, unknown>;
      internalParameters?: Record<string, unknown>;
      resolvedDependencies: ResourceDescriptor[];
    };
    runDetails: {
      builder: { id: string; version: Record<string, string> };
      metadata: { invocationId: string; startedOn: string; finishedOn: string };
    };
  };
}

/** What the dispatcher says about the input (a claim of the requester, kept as given). */
export interface ProvenanceInput {
  spec: string;
  kind: string;
  sha256: string;
  commit?: string;
}

export interface StatementFacts {
  bundle: { file: string; sha256: string };
  source: { sha256: string; size: number; uri?: string };
  target: Target;
  overrides: Record<string, unknown>;
  input?: ProvenanceInput;
  runId?: string;
  lockfile?: { name: string; sha256: string };
  runtime: { version: string; abi: string; source: string; package?: string; integrity?: string; nodeSha256?: string };
  npmVersion: string;
  method: string;
  /** What isolated the build's install scripts (bubblewrap, a build user, both, or none). */
  isolation?: string;
  /** Packages whose prebuilds they ship were used instead of compiling (cross targets). */
  prebuilt?: Array<{ name: string; path: string; file: string }>;
  builder: { id: string; version?: string; node: string };
  buildId: string;
  startedOn: string;
  finishedOn: string;
}

/** sha512-<base64> (npm's integrity) → the in-toto digest `{sha512: <hex>}`. */
function integrityDigest(integrity: string): Record<string, string> | undefined {
  const match = /^(sha512|sha384|sha256|sha1)-([A-Za-z0-9+/=]+)$/.exec(integrity.split(/\s+/)[0] ?? '');
  return match?.[1] && match[2] ? { [match[1]]: Buffer.from(match[2], 'base64').toString('hex') } : undefined;
}

function runtimeDescriptor(runtime: StatementFacts['runtime']): ResourceDescriptor {
  const name = runtime.package ? `${runtime.package}@${runtime.version}` : `node@${runtime.version}`;
  const digest = runtime.integrity ? integrityDigest(runtime.integrity) : undefined;
  const annotations: Record<string, unknown> = { role: 'runtime', version: runtime.version, abi: runtime.abi, source: runtime.source };
  if (runtime.integrity) annotations.integrity = runtime.integrity;
  if (digest) return { name, uri: `pkg:npm/${runtime.package ?? 'node'}@${runtime.version}`, digest, annotations };
  if (runtime.nodeSha256) {
    // A Node installed on the builder (not a registry package): the binary that ran is what is true.
    annotations.digestOf = 'the node binary the build ran (not a registry package)';
    return { name, digest: { sha256: runtime.nodeSha256 }, annotations };
  }
  annotations.digestOmitted = 'the runtime was not downloaded: nothing ran it (an addon compiled for it used the same version\'s headers, from the builder\'s own build); its version locks engines.node';
  return { name, uri: `pkg:npm/${runtime.package ?? 'node'}@${runtime.version}`, annotations };
}

export function buildStatement(facts: StatementFacts): ProvenanceStatement {
  const resolvedDependencies: ResourceDescriptor[] = [
    { name: 'source', ...(facts.source.uri ? { uri: facts.source.uri } : {}), digest: { sha256: facts.source.sha256 }, annotations: { role: 'source', size: facts.source.size } },
  ];
  if (facts.lockfile) resolvedDependencies.push({ name: facts.lockfile.name, digest: { sha256: facts.lockfile.sha256 }, annotations: { role: 'lockfile', in: 'source' } });
  resolvedDependencies.push(runtimeDescriptor(facts.runtime));
  return {
    _type: STATEMENT_TYPE,
    subject: [{ name: facts.bundle.file, digest: { sha256: facts.bundle.sha256 } }],
    predicateType: SLSA_PROVENANCE_V1,
    predicate: {
      buildDefinition: {
        buildType: BUILD_TYPE,
        externalParameters: {
          ...(facts.input ? { input: facts.input } : {}),
          source: { sha256: facts.source.sha256 },
          target: formatTarget(facts.target, { withNode: false }),
          ...(facts.target.node ? { node: facts.target.node } : {}),
          overrides: facts.overrides,
        },
        internalParameters: { method: facts.method, npm: facts.npmVersion, ...(facts.isolation ? { isolation: facts.isolation } : {}), ...(facts.prebuilt && facts.prebuilt.length > 0 ? { prebuilt: facts.prebuilt } : {}) },
        resolvedDependencies,
      },
      runDetails: {
        builder: { id: builderUri(facts.builder.id), version: { ...(facts.builder.version ? { 'bundle-dispatch': facts.builder.version } : {}), node: facts.builder.node } },
        metadata: {
          invocationId: facts.runId ? `${facts.runId}/${facts.buildId}` : facts.buildId,
          startedOn: facts.startedOn,
          finishedOn: facts.finishedOn,
        },
      },
    },
  };
}
