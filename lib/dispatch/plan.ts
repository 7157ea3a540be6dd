/**
 * Plan: which targets, and which builders may build each. Everything here is checked before
 * anything is uploaded.
 */
import type { BuilderClient } from '../builder/client.js';
import { BundleError } from '../errors.js';
import type { TrustedKey } from '../provenance/dsse.js';
import { loadTrustedKeys } from '../provenance/keys.js';
import { access } from 'node:fs/promises';
import path from 'node:path';
import { formatTarget, normalizeTarget, parseTarget, sameTarget, type Target } from '../target.js';

/** One builder of a pool, ready to call. */
export interface PoolBuilder {
  url: string;
  client: BuilderClient;
  /** The public keys its results' provenance must verify with before they are published. */
  keys: TrustedKey[];
}

/** The pools: one entry per configured platform (`linux-x64`), its builders in config order. */
export interface Pool {
  platform: Target;
  builders: PoolBuilder[];
}

export interface PlannedTarget {
  /** Normalized, with the node range when one was asked for. */
  target: Target;
  /** `linux-x64@22` as the user wrote it (normalized). */
  label: string;
  builders: PoolBuilder[];
}

/** `--targets linux-x64,darwin-arm64@22 --targets linux-arm64`: parsed, duplicates dropped. */
export function parseTargets(values: readonly string[]): Target[] {
  const targets: Target[] = [];
  for (const text of values.flatMap((value) => value.split(',')).map((value) => value.trim()).filter(Boolean)) {
    const target = parseTarget(text);
    if (!targets.some((known) => formatTarget(known) === formatTarget(target))) targets.push(target);
  }
  if (targets.length === 0) {
    throw new BundleError('ERR_USAGE', 'No targets given.', { hint: 'Pass --targets os-cpu[-libc][@node], e.g. --targets linux-x64,linux-arm64-musl@22.' });
  }
  return targets;
}

/**
 * Matches each target to its pool (by os, cpu and libc; the node range is the build's). A
 * target without a pool is ERR_TARGET_UNSUPPORTED naming the configured targets.
 */
export function planTargets(targets: readonly Target[], pools: readonly Pool[]): PlannedTarget[] {
  const missing = targets.filter((target) => !pools.some((pool) => sameTarget(pool.platform, target)));
  if (missing.length > 0) {
    const configured = pools.map((pool) => formatTarget(pool.platform));
    throw new BundleError('ERR_TARGET_UNSUPPORTED', `No builder for ${missing.map((target) => formatTarget(target)).join(', ')}. Configured targets: ${configured.join(', ') || 'none'}.`, {
      hint: 'Add a pool for the target under dispatch.pools in .bundlerc, or drop it from --targets.',
      details: { missing: missing.map((target) => formatTarget(target)), configured },
    });
  }
  return targets.map((target) => ({
    target,
    label: formatTarget(target),
    builders: pools.filter((pool) => sameTarget(pool.platform, target)).flatMap((pool) => pool.builders),
  }));
}

/**
 * Refuses, before anything is uploaded, the targets that certainly cannot be built: the package
 * itself has native work (a binding.gyp, gypfile or install script of its own, and no
 * `prebuilds/` that might serve the target) and every builder of the target's pool says it
 * cannot compile for it (method `cross` in its health answer). A builder that does not answer
 * leaves the target to the build, as does a package whose native work is only in dependencies
 * (they are known once installed).
 */
export async function refuseUncompilable(plan: readonly PlannedTarget[], packageDir: string, packageJson: Record<string, unknown>, signal?: AbortSignal): Promise<void> {
  // Most packages compile nothing themselves: known from package.json and one stat, without
  // loading the verify step (a cached re-run pays nothing for this check).
  const scripts = (typeof packageJson.scripts === 'object' && packageJson.scripts !== null ? packageJson.scripts : {}) as Record<string, unknown>;
  const scripted = ['preinstall', 'install', 'postinstall'].some((name) => typeof scripts[name] === 'string');
  if (!scripted && packageJson.gypfile !== true && !(await access(path.join(packageDir, 'binding.gyp')).then(() => true, () => false))) return;
  const { findNativeBuildNeeds } = await import('../workflow/steps/verify.js');
  const own = (await findNativeBuildNeeds({ dir: packageDir })).filter((need) => need.path === '.');
  if (own.length === 0 || (await access(path.join(packageDir, 'prebuilds')).then(() => true, () => false))) return;
  const refused: string[] = [];
  await Promise.all(plan.map(async (planned) => {
    const { node: _node, ...platform } = normalizeTarget(planned.target);
    const name = formatTarget(platform);
    const methods = await Promise.all(planned.builders.map((builder) => builder.client.health(signal ? { signal } : {}).then((health) => health.methods[name], () => undefined)));
    if (methods.length > 0 && methods.every((method) => method === 'cross')) refused.push(planned.label);
  }));
  if (refused.length === 0) return;
  const reasons = own.flatMap((need) => need.reasons).join(', ');
  throw new BundleError('ERR_NATIVE_NEEDS_TARGET', `Cannot build ${refused.sort().join(', ')}: the package compiles native code at install time (${reasons}) and no builder of ${refused.length === 1 ? 'that target\'s pool' : 'those targets\' pools'} can compile for it. Nothing was uploaded.`, {
    hint: `Add a builder running on ${refused.length === 1 ? 'that platform' : 'each of those platforms'} to dispatch.pools in .bundlerc (a builder compiles natively for its own platform), or give a builder a cross toolchain for it (docs/runtimes.md), or drop ${refused.length === 1 ? 'it' : 'them'} from --targets.`,
    details: { targets: refused, reasons: own.flatMap((need) => need.reasons) },
  });
}

const importHostNodeRules = () => Promise.all([import('../workflow/node-range.js'), import('semver/functions/satisfies.js')])
  .then(([{ chooseNodeRange }, { default: satisfies }]) => ({ chooseNodeRange, satisfies }));
let hostNodeRules: ReturnType<typeof importHostNodeRules> | undefined;

/**
 * The runtime rules withHostNode needs (semver: ~10 ms of loading), loaded once: not at start-up,
 * and the dispatch starts loading them while it reads the input.
 */
export function loadHostNodeRules(): ReturnType<typeof importHostNodeRules> {
  hostNodeRules ??= importHostNodeRules();
  return hostNodeRules;
}

/**
 * The default target (this machine) pinned to this machine's Node major, unless package.json's
 * engines.node (or devEngines) rules this machine's version out; the label stays as planned.
 */
export async function withHostNode(plan: PlannedTarget[], packageJson: Record<string, unknown>, hostVersion: string): Promise<PlannedTarget[]> {
  const { chooseNodeRange, satisfies } = await loadHostNodeRules();
  const { range, from } = chooseNodeRange(packageJson);
  if (from !== 'any' && !satisfies(hostVersion, range, { includePrerelease: true })) return plan;
  const major = hostVersion.split('.')[0] ?? hostVersion;
  return plan.map((planned) => (planned.target.node ? planned : { ...planned, target: { ...planned.target, node: major } }));
}

/**
 * Builds the pools from `dispatch.pools`: tokens are read from the env vars the config names
 * (a named variable that is unset is ERR_CONFIG, listing every one).
 */
export async function resolvePools(config: Record<string, Array<{ url: string; tokenEnv?: string; publicKey: string }>>, env: NodeJS.ProcessEnv, createClient: (url: string, token: string | undefined) => BuilderClient): Promise<Pool[]> {
  const problems: string[] = [];
  const pools: Pool[] = [];
  for (const [platform, members] of Object.entries(config)) {
    const builders: PoolBuilder[] = [];
    for (const member of members) {
      const token = member.tokenEnv ? env[member.tokenEnv] : undefined;
      if (member.tokenEnv && !token) problems.push(`dispatch.pools["${platform}"]: the environment variable ${member.tokenEnv} (token for ${member.url}) is not set`);
      const keys = await loadTrustedKeys(member.publicKey).catch((error: unknown) => {
        problems.push(`dispatch.pools["${platform}"]: publicKey of ${member.url}: ${(error as Error).message}`);
        return [];
      });
      builders.push({ url: member.url, client: createClient(member.url, token), keys });
    }
    pools.push({ platform: parseTarget(platform), builders });
  }
  if (problems.length > 0) throw new BundleError('ERR_CONFIG', `Invalid configuration:\n  ${problems.join('\n  ')}`, { hint: 'Export each builder token under the name dispatch.pools gives it; point each publicKey at that builder\'s public key (GET /v1/keys).' });
  return pools;
}
