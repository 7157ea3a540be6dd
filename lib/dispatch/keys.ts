/**
 * The keys of a dispatch run: the build key (known before any build starts, DESIGN.md), the
 * content-addressed source key, the destination key template and the cache marker.
 */
import { createHash } from 'node:crypto';
// One function, not semver's index (48 modules): the main command's start-up loads this.
import semverMajor from 'semver/functions/major.js';
import { BundleError } from '../errors.js';
import { packFileStem } from '../keys.js';
import type { RequestOverrides } from '../protocol.js';
import { validateKey } from '../storage/index.js';
import { normalizeTarget, type Target } from '../target.js';

/**
 * Version of the bundle format: bump it when the workflow's output changes for the same input,
 * so every build key changes and destinations rebuild instead of serving old bundles.
 */
export const BUNDLE_FORMAT_VERSION = 1;

/** JSON with object keys sorted, so equal values hash equally whatever their key order. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((item) => canonicalJson(item)).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, inner]) => inner !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([name, inner]) => `${JSON.stringify(name)}:${canonicalJson(inner)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * sha256 over (source sha256 — lockfile included —, normalized target with its node range,
 * overrides, bundle format version). The resolved Node/npm versions are not part of it: they
 * are recorded in the manifest.
 *
 * @example
 * buildKey({ sourceSha256, target: parseTarget('linux-x64@22') }) // → 64 hex digits
 */
export function buildKey(options: { sourceSha256: string; target: Target; overrides?: RequestOverrides; formatVersion?: number }): string {
  const target = normalizeTarget(options.target);
  return createHash('sha256').update(canonicalJson({
    source: options.sourceSha256,
    target: { os: target.os, cpu: target.cpu, libc: target.libc, node: target.node },
    overrides: options.overrides ?? {},
    format: options.formatVersion ?? BUNDLE_FORMAT_VERSION,
  })).digest('hex');
}

/** Where a source lives in the source store: by its content. */
export function sourceKey(sha256: string): string {
  return `sources/${sha256.slice(0, 2)}/${sha256}.tgz`;
}

/**
 * Where a builder PUTs its result (presigned), until dispatch copies it to the destination. One
 * per build key, so a run that finds a build of an earlier run (same Idempotency-Key) finds its
 * result too.
 */
export function stagingKey(buildKeyHex: string): string {
  return `staging/${buildKeyHex}.tgz`;
}

/**
 * The cache marker of a build key at the destination: written after the bundle was copied and
 * verified; its presence (with the bundle it names) is a cache hit.
 */
export function markerKey(vars: { name: string; version: string }, buildKeyHex: string): string {
  return validateKey(`${vars.name}/${vars.version}/builds/${buildKeyHex}.json`);
}

export interface TemplateVars {
  name: string;
  version: string;
  /** `{pkgfile}-{version}-{os}-{cpu}[-{libc}]-node{major}.tgz` as the builder named it. */
  file?: string;
  target?: Target;
  /** Resolved Node version (for `{node}`, the major). */
  node?: string;
  commit?: string;
  sourceSha: string;
  buildKey?: string;
}

/**
 * Fills a key template (`{name}/{version}/{file}`). A placeholder without a value, or a result
 * that is not a valid key, is ERR_CONFIG naming the template.
 */
export function renderKey(template: string, vars: TemplateVars): string {
  const values: Record<string, string | undefined> = {
    name: vars.name,
    version: vars.version,
    file: vars.file,
    pkgfile: packFileStem(vars.name),
    os: vars.target?.os,
    cpu: vars.target?.cpu,
    libc: vars.target?.os === 'linux' ? (vars.target.libc ?? 'glibc') : vars.target ? '' : undefined,
    node: vars.node ? String(semverMajor(vars.node)) : undefined,
    commit: vars.commit,
    sourceSha: vars.sourceSha,
    buildKey: vars.buildKey,
  };
  const key = template.replace(/\{([^}]*)\}/g, (_match, name: string) => {
    const value = values[name];
    if (value === undefined) {
      throw new BundleError('ERR_CONFIG', `Key template "${template}": {${name}} has no value here${name === 'commit' ? ' (the input is not a git URL)' : ''}.`, {
        hint: 'Use {name} {version} {file} {pkgfile} {os} {cpu} {libc} {node} {sourceSha} {buildKey}; {commit} only for git inputs.',
      });
    }
    return value;
  });
  try {
    return validateKey(key.replace(/\/{2,}/g, '/'));
  } catch (error) {
    throw new BundleError('ERR_CONFIG', `Key template "${template}" gives an invalid key "${key}".`, { cause: error });
  }
}
