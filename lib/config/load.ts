import { readFile } from 'node:fs/promises';
import { availableParallelism, hostname } from 'node:os';
import path from 'node:path';
import { editDistance } from '../edit-distance.js';
import { CONFIG_KEYS, findKey, type KeyDefinition } from './schema.js';
import type { ToolchainSettings } from '../workflow/toolchains.js';
import type { SandboxSetting } from '../workflow/sandbox.js';

/** The resolved configuration, typed. Keys mirror CONFIG_KEYS. */
export interface ResolvedConfig {
  hooks: string[];
  registry: string;
  scopes: Record<string, string>;
  registryTokens: Record<string, string>;
  runtimes: string[];
  toolchains: ToolchainSettings;
  allowHeaderOnlyVerify: boolean;
  sandbox: SandboxSetting;
  envAllow: string[];
  cacheDir: string;
  workDir: string;
  keepWorkdir: boolean;
  /** zlib level of the bundle's gzip (1–9). */
  gzipLevel: number;
  limits: { maxBytes: number; maxEntries: number };
  builder: BuilderConfig;
  dispatch: DispatchConfig;
  watch: WatchConfig;
}

/** `watch.*`: `bundle-dispatch watch` (docs/release-automation.md). */
export interface WatchConfig {
  entries: Array<{ input: string; targets?: string[]; destination?: string; label?: string }>;
  /** Seconds between checks of a long-running watcher. */
  interval: number;
  /** On an entry's first check: how many of the newest matches to build. */
  backfill: number;
  maxTries: number;
  /** Seconds of the first back-off after a failed dispatch (then ×4 each time, at most a day). */
  retryDelay: number;
}

/** One builder of a pool: its URL, the NAME of the env var holding its token, and its provenance public key. */
export interface PoolMember {
  url: string;
  tokenEnv?: string;
  /** A PEM file (resolved from where the config was written) or the PEM itself. */
  publicKey: string;
}

/** `dispatch.*`: the main command (`bundle-dispatch <input> --targets …`). */
export interface DispatchConfig {
  /** Undefined: `<cacheDir>/dispatch/store`. */
  source?: string;
  destination: string;
  keyTemplate: string;
  manifestTemplate: string;
  /** Target (`os-cpu[-libc]`) → builders. Empty: the embedded default builder. */
  pools: Record<string, PoolMember[]>;
  concurrency: number;
  /** Seconds. */
  presignExpiry: number;
  /** Seconds. */
  waitLock: number;
  notify?: string;
  s3: { endpoint?: string; region?: string; forcePathStyle: boolean };
}

/** `builder.*`: the `bundle-dispatch builder` service. */
export interface BuilderConfig {
  host: string;
  port: number;
  store: string;
  id: string;
  slots: number;
  targets: string[];
  tokenFile?: string;
  /** The provenance signing key (PEM); generated there when absent. */
  signingKey: string;
  /** Seconds. */
  buildTimeout: number;
  maxSourceBytes: number;
  maxBodyBytes: number;
  minFreeDisk: number;
  /** `first-last` or `off`. */
  runAsUids: string;
  /** CIDRs, IP addresses and host names the builder may reach besides public addresses. */
  allowSources: string[];
  /** Seconds. */
  shutdownGrace: number;
  /** Builds that may wait; 0: no limit. */
  maxQueued: number;
  /** Where the other replicas reach this one; undefined: the listening URL. */
  advertiseUrl?: string;
  /** `api`, `off` or a port number (as text). */
  metrics: string;
  /** Seconds. */
  heartbeat: number;
}

export interface ConfigResult {
  config: ResolvedConfig;
  /** Every problem, with its key path and where it came from. Empty means valid. */
  errors: string[];
  warnings: string[];
  /** The .bundlerc that was read, if any. */
  file?: string;
}

export interface LoadConfigOptions {
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** Values from CLI flags, by config key (already mapped from flag names). */
  flags?: Record<string, unknown>;
  homeDir: string;
  tmpDir: string;
  /** An explicit config file instead of searching up from cwd. */
  configFile?: string;
  /**
   * A service running as root (the builder in a container): the default cache, work and store
   * directories are the system's (/var/cache, /var/tmp, /var/lib), which the build users can
   * pass through, instead of root's home.
   */
  systemDirs?: boolean;
}

/** The defaults of a service run as root (FHS): passable by the unprivileged build users. */
export const SYSTEM_DIRS = {
  cacheDir: '/var/cache/bundle-dispatch',
  workDir: '/var/tmp/bundle-dispatch',
  store: '/var/lib/bundle-dispatch/builder',
} as const;

export const CONFIG_FILE_NAME = '.bundlerc';

/** The nearest `.bundlerc` from `cwd` up to the root. */
export async function findConfigFile(cwd: string): Promise<string | undefined> {
  for (let dir = path.resolve(cwd); ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, CONFIG_FILE_NAME);
    if (await readFile(candidate).then(() => true, () => false)) return candidate;
    if (path.dirname(dir) === dir) return undefined;
  }
}

function typeProblem(definition: KeyDefinition, value: unknown): string | undefined {
  switch (definition.type) {
    case 'string': return typeof value === 'string' && value !== '' ? undefined : 'must be a non-empty string';
    case 'number': return typeof value === 'number' && Number.isFinite(value) ? undefined : 'must be a number';
    case 'boolean': return typeof value === 'boolean' ? undefined : 'must be true or false';
    case 'string[]': return Array.isArray(value) && value.every((item) => typeof item === 'string') ? undefined : 'must be a list of strings';
    case 'record': return typeof value === 'object' && value !== null && !Array.isArray(value) && Object.values(value).every((item) => typeof item === 'string')
      ? undefined : 'must be an object of strings';
    case 'json': return value === undefined ? 'must be JSON' : undefined;
  }
}

/** A value as it was written, cut short (a whole pools object would drown the message). */
function shortJson(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}…` : text;
}

/** Edit distance (Levenshtein), for "did you mean". */
/**
 * The known keys closest to an unknown one: by edit distance of the whole key or of its last
 * part (`concurency` → `dispatch.concurrency`), at most 2, and only near misses.
 */
export function closestKeys(key: string): string[] {
  const last = (name: string) => name.split('.').at(-1) ?? name;
  const scored = CONFIG_KEYS.map((definition) => ({ key: definition.key, score: Math.min(editDistance(key.toLowerCase(), definition.key.toLowerCase()), editDistance(last(key).toLowerCase(), last(definition.key).toLowerCase())) }));
  const limit = Math.max(2, Math.floor(last(key).length / 3));
  return scored.filter((entry) => entry.score <= limit).sort((a, b) => a.score - b.score || a.key.localeCompare(b.key)).slice(0, 2).map((entry) => entry.key);
}

/** Flattens a .bundlerc object into dotted keys, stopping at keys the schema knows. */
function flatten(value: Record<string, unknown>, prefix: string, out: Map<string, unknown>): void {
  for (const [name, inner] of Object.entries(value)) {
    if (name.startsWith('$')) continue; // "$comment" and friends document, they don't configure
    const key = prefix ? `${prefix}.${name}` : name;
    const isNamespace = CONFIG_KEYS.some((definition) => definition.key.startsWith(`${key}.`));
    if (!findKey(key) && isNamespace && typeof inner === 'object' && inner !== null && !Array.isArray(inner)) {
      flatten(inner as Record<string, unknown>, key, out);
    } else {
      out.set(key, inner);
    }
  }
}

function parseEnvValue(definition: KeyDefinition, raw: string): unknown {
  switch (definition.type) {
    // Text that is no number stays text, so the error shows it as written.
    case 'number': return raw.trim() === '' || Number.isNaN(Number(raw)) ? raw : Number(raw);
    case 'boolean': return /^(1|true|yes)$/i.test(raw) ? true : /^(0|false|no)$/i.test(raw) ? false : raw;
    case 'string[]': return raw.split(',').map((item) => item.trim()).filter(Boolean);
    case 'record':
    case 'json':
      try {
        return JSON.parse(raw) as unknown;
      } catch {
        return raw;
      }
    default: return raw;
  }
}

function setPath(target: Record<string, unknown>, key: string, value: unknown): void {
  const parts = key.split('.');
  let node = target;
  for (const part of parts.slice(0, -1)) {
    node[part] ??= {};
    node = node[part] as Record<string, unknown>;
  }
  node[parts.at(-1) as string] = value;
}

function machineDefault(definition: KeyDefinition, options: LoadConfigOptions): unknown {
  if (options.systemDirs) {
    if (definition.key === 'cacheDir') return SYSTEM_DIRS.cacheDir;
    if (definition.key === 'workDir') return SYSTEM_DIRS.workDir;
    if (definition.key === 'builder.store') return SYSTEM_DIRS.store;
    if (definition.key === 'builder.signingKey') return path.join(path.dirname(SYSTEM_DIRS.store), 'builder-signing-key.pem');
  }
  if (definition.key === 'cacheDir') return path.join(options.env.XDG_CACHE_HOME ?? path.join(options.homeDir, '.cache'), 'bundle-dispatch');
  if (definition.key === 'workDir') return path.join(options.tmpDir, 'bundle-dispatch');
  if (definition.key === 'builder.store') return path.join(options.env.XDG_STATE_HOME ?? path.join(options.homeDir, '.local', 'state'), 'bundle-dispatch', 'builder');
  if (definition.key === 'builder.signingKey') return path.join(options.env.XDG_STATE_HOME ?? path.join(options.homeDir, '.local', 'state'), 'bundle-dispatch', 'builder-signing-key.pem');
  if (definition.key === 'builder.id') return hostname();
  if (definition.key === 'builder.slots') return availableParallelism();
  if (definition.key === 'dispatch.source') return undefined;
  if (definition.key === 'dispatch.destination') return path.resolve(options.cwd, 'dist');
  return structuredClone(definition.default);
}

/**
 * Loads configuration with one precedence, applied once: defaults < .bundlerc < BUNDLE_DISPATCH_*
 * env < flags. Never throws for bad values and never prints: every problem is returned.
 */
export async function loadConfig(options: LoadConfigOptions): Promise<ConfigResult> {
  const errors: string[] = [];
  const warnings: string[] = [];
  const layers: Array<{ origin: string; values: Map<string, unknown>; baseDir: string }> = [];

  const file = options.configFile ? path.resolve(options.cwd, options.configFile) : await findConfigFile(options.cwd);
  if (file) {
    const values = new Map<string, unknown>();
    try {
      const parsed: unknown = JSON.parse(await readFile(file, 'utf8'));
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) errors.push(`${file}: must hold a JSON object`);
      else flatten(parsed as Record<string, unknown>, '', values);
    } catch (error) {
      errors.push(`${file}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : `is not valid JSON (${(error as Error).message})`}`);
    }
    layers.push({ origin: file, values, baseDir: path.dirname(file) });
  }
  const envValues = new Map<string, unknown>();
  for (const definition of CONFIG_KEYS) {
    const raw = definition.env ? options.env[definition.env] : undefined;
    if (definition.env && raw !== undefined) envValues.set(definition.key, parseEnvValue(definition, raw));
  }
  layers.push({ origin: 'environment', values: envValues, baseDir: options.cwd });
  layers.push({ origin: 'flags', values: new Map(Object.entries(options.flags ?? {}).filter(([, value]) => value !== undefined)), baseDir: options.cwd });

  const config: Record<string, unknown> = {};
  for (const definition of CONFIG_KEYS) setPath(config, definition.key, machineDefault(definition, options));
  for (const layer of layers) {
    for (const [key, value] of layer.values) {
      const definition = findKey(key);
      const where = layer.origin === 'environment' ? `${findKey(key)?.env ?? key}` : layer.origin === 'flags' ? `--${definition?.flag ?? key}` : `${layer.origin}: ${key}`;
      if (!definition) {
        const near = closestKeys(key);
        errors.push(`${where}: unknown key "${key}"${near.length > 0 ? ` (did you mean ${near.map((name) => `"${name}"`).join(' or ')}?)` : ''}`);
        continue;
      }
      const problem = typeProblem(definition, value) ?? definition.check?.(value);
      if (problem) {
        // The value as written, for plain values only: an object may hold a token pasted in by mistake.
        // A flag's text that was no number reaches here as NaN (yargs), which JSON would show as null.
        const shown = (definition.type === 'string' || definition.type === 'number' || definition.type === 'boolean') && !Number.isNaN(value) ? `${shortJson(value)} ` : '';
        errors.push(`${where}: ${shown}${problem}`);
        continue;
      }
      setPath(config, key, resolvePaths(definition, value, layer.baseDir, options.homeDir));
    }
  }
  return { config: config as unknown as ResolvedConfig, errors, warnings, ...(file ? { file } : {}) };
}

/** Paths in the config resolve from where they were written (the .bundlerc's dir, or cwd). */
function resolvePaths(definition: KeyDefinition, value: unknown, baseDir: string, homeDir: string): unknown {
  const resolve = (item: string) => (item.startsWith('~/') ? path.join(homeDir, item.slice(2)) : path.resolve(baseDir, item));
  const isRelativePath = (item: string) => item.startsWith('.') || item.startsWith('~/') || path.isAbsolute(item);
  if (definition.key === 'hooks') return (value as string[]).map((item) => (isRelativePath(item) ? resolve(item) : item));
  if (definition.key === 'runtimes') return (value as string[]).map(resolve);
  if (definition.key === 'cacheDir' || definition.key === 'workDir' || definition.key === 'builder.tokenFile' || definition.key === 'builder.signingKey') return resolve(value as string);
  // A pool member's publicKey is a file (resolved like the others) or the PEM itself.
  if (definition.key === 'dispatch.pools') {
    return Object.fromEntries(Object.entries(value as Record<string, Array<Record<string, unknown>>>).map(([target, members]) => [target, members.map((member) =>
      typeof member.publicKey === 'string' && !member.publicKey.includes('-----BEGIN') ? { ...member, publicKey: resolve(member.publicKey) } : member)]));
  }
  // A store is a directory path (resolved like the others) or an s3:// / file:// URL (as written).
  if (definition.key === 'builder.store' || definition.key === 'dispatch.source' || definition.key === 'dispatch.destination') return /^[a-z][a-z0-9+.-]+:/i.test(value as string) ? value : resolve(value as string);
  return value;
}

/** Renders `.bundlerc.example` from the schema table: every key, its default and description. */
export function renderExampleConfig(): string {
  const example: Record<string, unknown> = {};
  const docs: string[] = [];
  for (const definition of CONFIG_KEYS) {
    setPath(example, definition.key, definition.example ?? definition.default);
    docs.push(`${definition.key}: ${definition.description}`);
  }
  return `${JSON.stringify({ $comment: docs, ...example }, null, 2)}\n`;
}
