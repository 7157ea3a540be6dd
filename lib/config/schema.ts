/**
 * The one table of configuration keys. Validation, `--help` text, the env names and the
 * committed `.bundlerc.example` all come from it (npm's config definitions, changesets' schema).
 */
import { allowSourcesProblem } from '../builder/network.js';
import { DEFAULT_GZIP_LEVEL } from '../protocol.js';

/** `json`: any JSON value whose shape the key's `check` validates (builder pools). */
export type KeyType = 'string' | 'number' | 'boolean' | 'string[]' | 'record' | 'json';

export interface KeyDefinition {
  /** Dotted path in `.bundlerc` (`limits.maxBytes`). */
  key: string;
  type: KeyType;
  description: string;
  /** Default value; a function when it depends on the machine (home dir, tmp dir). */
  default?: unknown;
  /** Environment variable that sets it (`BUNDLE_DISPATCH_*`). */
  env?: string;
  /** The CLI flag that sets it, without dashes. */
  flag?: string;
  /** An example value for `.bundlerc.example`. */
  example?: unknown;
  /** Extra check; returns a problem or undefined. */
  check?: (value: unknown) => string | undefined;
}

const positive = (value: unknown) => (typeof value === 'number' && Number.isFinite(value) && value > 0 ? undefined : 'must be a positive number');
const nonNegative = (value: unknown) => (typeof value === 'number' && Number.isFinite(value) && value >= 0 ? undefined : 'must be a number ≥ 0');
const positiveInteger = (value: unknown) => (Number.isInteger(value) && (value as number) > 0 ? undefined : 'must be a whole number ≥ 1');
const port = (value: unknown) => (Number.isInteger(value) && (value as number) >= 0 && (value as number) <= 65535 ? undefined : 'must be a port number (0–65535; 0 = any free port)');
const metricsSetting = (value: unknown) => (value === 'api' || value === 'off' || (/^\d{1,5}$/.test(String(value)) && Number(value) <= 65535) ? undefined : 'must be "api", "off" or a port number (0-65535)');
const watchEntries = (value: unknown) => {
  if (!Array.isArray(value)) return 'must be a list of { "input": "my-app@latest", "targets": ["linux-x64"], "destination": "s3://releases", "label": "…" }';
  const problems: string[] = [];
  value.forEach((entry: unknown, index) => {
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
      problems.push(`[${index}]: must be { input, targets, destination, label }`);
      return;
    }
    const { input, targets, destination, label, ...rest } = entry as Record<string, unknown>;
    if (typeof input !== 'string' || input === '') problems.push(`[${index}].input: required: what to follow, a registry package with a tag or range (my-app@latest, @acme/app@^2)`);
    if (targets !== undefined && (!Array.isArray(targets) || !targets.every((target) => typeof target === 'string'))) problems.push(`[${index}].targets: must be a list of targets (["linux-x64", "linux-arm64"])`);
    if (destination !== undefined && typeof destination !== 'string') problems.push(`[${index}].destination: must be a store location (a directory or s3://bucket/prefix)`);
    if (label !== undefined && typeof label !== 'string') problems.push(`[${index}].label: must be text`);
    for (const name of Object.keys(rest)) problems.push(`[${index}]: unknown key "${name}"`);
  });
  return problems.length > 0 ? problems.join('; ') : undefined;
};

const uidRange = (value: unknown) => {
  if (value === 'off') return undefined;
  const match = /^(\d+)-(\d+)$/.exec(String(value));
  return match && Number(match[1]) > 0 && Number(match[1]) <= Number(match[2]) && Number(match[2]) < 2 ** 31 ? undefined : 'must be "first-last" (e.g. 61000-61999) or "off"';
};
const httpUrl = (value: unknown) => {
  try {
    const url = new URL(String(value));
    return url.protocol === 'http:' || url.protocol === 'https:' ? undefined : 'must be an http(s) URL';
  } catch {
    return 'must be an http(s) URL';
  }
};
const envName = (value: unknown) => {
  for (const name of Object.values(value as Record<string, unknown>)) {
    if (typeof name !== 'string' || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) return 'values must be names of environment variables (the token itself never goes in .bundlerc)';
  }
  return undefined;
};

/**
 * `dispatch.pools`: target (`os-cpu[-libc]`) → builders, each `{ url, tokenEnv }`. Lists every
 * problem, each with its path inside the value.
 */
const pools = (value: unknown) => {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return 'must be an object: { "linux-x64": [{ "url": "https://…", "tokenEnv": "POOL_TOKEN" }] }';
  const problems: string[] = [];
  for (const [target, members] of Object.entries(value as Record<string, unknown>)) {
    if (!/^[a-z0-9]+-[a-z0-9]+(-(glibc|musl))?$/.test(target)) problems.push(`["${target}"]: not a target (os-cpu[-libc], e.g. linux-x64, linux-arm64-musl)`);
    if (!Array.isArray(members) || members.length === 0) {
      problems.push(`["${target}"]: must be a non-empty list of { url, tokenEnv, publicKey }`);
      continue;
    }
    members.forEach((member: unknown, index) => {
      const where = `["${target}"][${index}]`;
      if (typeof member !== 'object' || member === null || Array.isArray(member)) {
        problems.push(`${where}: must be { url, tokenEnv, publicKey }`);
        return;
      }
      const { url, tokenEnv, publicKey, ...rest } = member as Record<string, unknown>;
      const urlProblem = httpUrl(url);
      if (urlProblem) problems.push(`${where}.url: ${urlProblem}`);
      if (typeof publicKey !== 'string' || publicKey === '') {
        problems.push(`${where}.publicKey: required: the builder's provenance public key, a PEM file (its signing key's .pub, or GET /v1/keys) or the PEM itself; results are published only when their provenance verifies with it`);
      }
      if (tokenEnv !== undefined && (typeof tokenEnv !== 'string' || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(tokenEnv))) {
        problems.push(`${where}.tokenEnv: must be the NAME of an environment variable (the token itself never goes in .bundlerc)`);
      }
      for (const name of Object.keys(rest)) problems.push(`${where}: unknown key "${name}"`);
    });
  }
  return problems.length > 0 ? problems.join('; ') : undefined;
};
/** `toolchains`: target (linux, win32-x64, darwin) → { triple?, cc?, cxx?, ar?, sysroot?, emulator? } or false. */
const toolchains = (value: unknown) => {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return 'must be an object: { "linux-arm64": { "cc": "aarch64-linux-gnu-gcc", … } | false }';
  const problems: string[] = [];
  for (const [target, setting] of Object.entries(value as Record<string, unknown>)) {
    if (!/^linux-[a-z0-9]+(-(glibc|musl))?$/.test(target) && !['win32-x64', 'darwin-x64', 'darwin-arm64'].includes(target)) problems.push(`["${target}"]: not a target a toolchain here can build (linux-cpu[-libc] such as linux-arm64, win32-x64, darwin-x64, darwin-arm64)`);
    if (setting === false) continue;
    if (typeof setting !== 'object' || setting === null || Array.isArray(setting)) {
      problems.push(`["${target}"]: must be { triple?, cc?, cxx?, ar?, sysroot?, emulator? } or false`);
      continue;
    }
    for (const [name, field] of Object.entries(setting as Record<string, unknown>)) {
      if (!['triple', 'cc', 'cxx', 'ar', 'sysroot', 'emulator'].includes(name)) problems.push(`["${target}"]: unknown key "${name}"`);
      else if (!(typeof field === 'string' && field !== '') && !(name === 'emulator' && (field === false || field === null))) problems.push(`["${target}"].${name}: must be a non-empty string${name === 'emulator' ? ' or false' : ''}`);
    }
  }
  return problems.length > 0 ? problems.join('; ') : undefined;
};
const keyTemplate = (value: unknown) => {
  const unknown = [...String(value).matchAll(/\{([^}]*)\}/g)].map((match) => match[1]).filter((name) => !['name', 'version', 'file', 'pkgfile', 'os', 'cpu', 'libc', 'node', 'commit', 'sourceSha', 'buildKey'].includes(name ?? ''));
  return unknown.length > 0 ? `unknown placeholder(s) ${unknown.map((name) => `{${name}}`).join(', ')}` : undefined;
};

export const CONFIG_KEYS: readonly KeyDefinition[] = [
  {
    key: 'hooks',
    type: 'string[]',
    description: 'Hook modules (paths relative to the .bundlerc, or package names); each default-exports { "hook.name": fn }.',
    default: [],
    env: 'BUNDLE_DISPATCH_HOOKS',
    flag: 'hooks',
    example: ['./bundle-hooks.js'],
  },
  {
    key: 'registry',
    type: 'string',
    description: 'The npm registry dependencies are installed from.',
    default: 'https://registry.npmjs.org/',
    env: 'BUNDLE_DISPATCH_REGISTRY',
    flag: 'registry',
    check: httpUrl,
    example: 'https://registry.npmjs.org/',
  },
  {
    key: 'scopes',
    type: 'record',
    description: 'Scoped registries: { "@acme": "https://npm.acme.example/" }.',
    default: {},
    example: { '@acme': 'https://npm.acme.example/' },
  },
  {
    key: 'registryTokens',
    type: 'record',
    description: 'Registry URL → NAME of the environment variable that holds its token (never the token itself).',
    default: {},
    check: envName,
    example: { 'https://npm.acme.example/': 'ACME_NPM_TOKEN' },
  },
  {
    key: 'runtimes',
    type: 'string[]',
    description: 'Node runtimes installed on this machine (paths to node binaries or install prefixes) to choose from besides the host and the registry.',
    default: [],
    example: ['/opt/node-22/bin/node'],
  },
  {
    key: 'toolchains',
    type: 'json',
    description: 'Cross toolchains by target: { "linux-arm64": { "triple", "cc", "cxx", "ar", "sysroot", "emulator" } } overrides what is detected (a GNU cross compiler on PATH plus a qemu-user emulator; MinGW-w64 with Wine for win32-x64; zig for darwin, where "cc" names the zig); false switches a target\'s toolchain off. Empty: detected.',
    default: {},
    env: 'BUNDLE_DISPATCH_TOOLCHAINS',
    check: toolchains,
    example: { 'linux-arm64': { cc: 'aarch64-linux-gnu-gcc', cxx: 'aarch64-linux-gnu-g++', sysroot: '/usr/aarch64-linux-gnu', emulator: 'qemu-aarch64-static' }, 'linux-arm': false },
  },
  {
    key: 'allowHeaderOnlyVerify',
    type: 'boolean',
    description: 'Accept a cross-compiled target whose toolchain has no emulator, verified by its binaries\' headers only (nothing loaded). Off: such builds fail with ERR_NATIVE_VERIFY.',
    default: false,
    env: 'BUNDLE_DISPATCH_ALLOW_HEADER_ONLY_VERIFY',
  },
  {
    key: 'sandbox',
    type: 'string',
    description: 'Where npm, install scripts and the addon check run: "auto" in a bubblewrap sandbox where bwrap works (else as a build user when the builder runs as root, else unsandboxed, said in the summary, record and provenance); "required" fails a build that would run without it (ERR_SANDBOX_UNAVAILABLE); "off" never sandboxes. See docs/sandbox.md.',
    default: 'auto',
    env: 'BUNDLE_DISPATCH_SANDBOX',
    flag: 'sandbox',
    check: (value) => (['auto', 'required', 'off'].includes(String(value)) ? undefined : 'must be "auto", "required" or "off"'),
  },
  {
    key: 'envAllow',
    type: 'string[]',
    description: 'Extra environment variable names passed to npm and lifecycle scripts (everything not allow-listed is withheld).',
    default: [],
    example: ['SHARP_DIST_BASE_URL'],
  },
  {
    key: 'cacheDir',
    type: 'string',
    description: 'Where npm\'s cache and fetched Node runtimes are kept (shared by all builds).',
    default: '~/.cache/bundle-dispatch',
    env: 'BUNDLE_DISPATCH_CACHE_DIR',
    flag: 'cache-dir',
  },
  {
    key: 'workDir',
    type: 'string',
    description: 'Parent directory of the per-build workdirs.',
    default: '<tmp>/bundle-dispatch',
    env: 'BUNDLE_DISPATCH_WORK_DIR',
    example: '/var/tmp/bundle-dispatch',
  },
  {
    key: 'keepWorkdir',
    type: 'boolean',
    description: 'Keep each build\'s workdir for debugging instead of removing it.',
    default: false,
    env: 'BUNDLE_DISPATCH_KEEP_WORKDIR',
    flag: 'keep-workdir',
  },
  {
    key: 'gzipLevel',
    type: 'number',
    description: 'zlib level of the bundle\'s gzip, 1 (fastest) to 9 (smallest). On the large app of docs/bench.md (a 338 MB tar), level 1 takes 2.4× less CPU than 6 for a 14 % larger .tgz. Changes the .tgz\'s bytes, never the tar inside (tarSha256); the main command sends it with each build (part of the build key when not 6).',
    default: DEFAULT_GZIP_LEVEL,
    env: 'BUNDLE_DISPATCH_GZIP_LEVEL',
    flag: 'gzip-level',
    check: (value) => (Number.isInteger(value) && (value as number) >= 1 && (value as number) <= 9 ? undefined : 'must be a whole number from 1 (fastest) to 9 (smallest)'),
  },
  {
    key: 'limits.maxBytes',
    type: 'number',
    description: 'Largest unpacked size of an input tarball, in bytes (tar-bomb guard).',
    default: 1024 ** 3,
    check: positive,
  },
  {
    key: 'limits.maxEntries',
    type: 'number',
    description: 'Most entries an input tarball may have (tar-bomb guard).',
    default: 100_000,
    check: positive,
  },
  {
    key: 'builder.host',
    type: 'string',
    description: 'Address the builder listens on (`bundle-dispatch builder`).',
    default: '127.0.0.1',
    env: 'BUNDLE_DISPATCH_BUILDER_HOST',
    flag: 'host',
  },
  {
    key: 'builder.port',
    type: 'number',
    description: 'Port the builder listens on; 0 picks a free port (the URL is the first line on stdout).',
    default: 7420,
    env: 'BUNDLE_DISPATCH_BUILDER_PORT',
    flag: 'port',
    check: port,
  },
  {
    key: 'builder.store',
    type: 'string',
    description: 'Where the builder keeps build records, logs and results: a directory or s3://bucket/prefix.',
    default: '~/.local/state/bundle-dispatch/builder',
    env: 'BUNDLE_DISPATCH_BUILDER_STORE',
    flag: 'store',
    example: 's3://builds/linux-x64',
  },
  {
    key: 'builder.id',
    type: 'string',
    description: 'This builder\'s name in build records (replicas sharing a store need different ids); default the host name.',
    default: '<hostname>',
    env: 'BUNDLE_DISPATCH_BUILDER_ID',
    flag: 'id',
    example: 'builder-linux-x64-1',
  },
  {
    key: 'builder.slots',
    type: 'number',
    description: 'Builds that run at once; the rest wait in a FIFO queue. Default: the number of CPUs.',
    default: '<cpus>',
    env: 'BUNDLE_DISPATCH_BUILDER_SLOTS',
    flag: 'slots',
    check: positiveInteger,
    example: 2,
  },
  {
    key: 'builder.targets',
    type: 'string[]',
    description: 'Targets this builder serves (os-cpu[-libc]); default: the host plus the cross targets (built only when nothing needs compiling).',
    default: [],
    env: 'BUNDLE_DISPATCH_BUILDER_TARGETS',
    flag: 'targets',
    example: ['linux-x64', 'linux-x64-musl'],
  },
  {
    key: 'builder.tokenFile',
    type: 'string',
    description: 'File with the builder\'s accepted bearer tokens, one per line (besides BUNDLE_DISPATCH_BUILDER_TOKENS). Keep it mode 0600.',
    env: 'BUNDLE_DISPATCH_BUILDER_TOKEN_FILE',
    flag: 'token-file',
    example: '/etc/bundle-dispatch/builder-tokens',
  },
  {
    key: 'builder.signingKey',
    type: 'string',
    description: 'PEM private key (ed25519 or ECDSA P-256) the builder signs each bundle\'s provenance with; generated (ed25519, mode 0600) when absent, its public key written beside it (key.pem → key.pub.pem) and served at GET /v1/keys. Refused when group or others may read it.',
    default: '~/.local/state/bundle-dispatch/builder-signing-key.pem',
    env: 'BUNDLE_DISPATCH_BUILDER_SIGNING_KEY',
    flag: 'signing-key',
    example: '/etc/bundle-dispatch/signing-key.pem',
  },
  {
    key: 'builder.buildTimeout',
    type: 'number',
    description: 'Seconds a build may run before it fails with ERR_BUILD_TIMEOUT.',
    default: 1800,
    env: 'BUNDLE_DISPATCH_BUILDER_BUILD_TIMEOUT',
    check: positive,
  },
  {
    key: 'builder.maxSourceBytes',
    type: 'number',
    description: 'Largest source .tgz the builder downloads, in bytes.',
    default: 512 * 1024 ** 2,
    check: positive,
  },
  {
    key: 'builder.maxBodyBytes',
    type: 'number',
    description: 'Largest request body the builder API accepts, in bytes (HTTP 413 above).',
    default: 64 * 1024,
    check: positive,
  },
  {
    key: 'builder.minFreeDisk',
    type: 'number',
    description: 'Free bytes the work disk must have for a build to start (ERR_DISK_FULL below).',
    default: 1024 ** 3,
    check: nonNegative,
  },
  {
    key: 'builder.runAsUids',
    type: 'string',
    description: 'When the builder runs as root: the uid range (first-last) whose uids run npm and scripts, one uid per running build (gid = uid). "off" runs them as root.',
    default: '61000-61999',
    env: 'BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS',
    check: uidRange,
  },
  {
    key: 'builder.allowSources',
    type: 'string[]',
    description: 'Loopback, private and unique-local addresses the builder may fetch sources from and PUT outputs to: CIDRs (10.0.0.0/8, fd00::/8), IP addresses, host names (minio.internal, *.internal; a listed name may resolve to any of them). Empty: public addresses only. Link-local (169.254.0.0/16, fe80::/10: cloud metadata) is refused even when listed.',
    default: [],
    env: 'BUNDLE_DISPATCH_BUILDER_ALLOW_SOURCES',
    flag: 'allow-sources',
    check: allowSourcesProblem,
    example: ['10.0.0.0/8', 'minio.internal'],
  },
  {
    key: 'builder.shutdownGrace',
    type: 'number',
    description: 'Seconds running builds get to finish after SIGTERM before they are cancelled.',
    default: 30,
    env: 'BUNDLE_DISPATCH_BUILDER_SHUTDOWN_GRACE',
    flag: 'shutdown-grace',
    check: nonNegative,
  },
  {
    key: 'builder.maxQueued',
    type: 'number',
    description: 'Builds that may wait for a slot; beyond it POST /v1/builds answers 503 ERR_BUILDER_BUSY with Retry-After (dispatch then tries another builder of the pool, or waits). 0: no limit.',
    default: 0,
    env: 'BUNDLE_DISPATCH_BUILDER_MAX_QUEUED',
    check: (value: unknown) => (Number.isInteger(value) && (value as number) >= 0 ? undefined : 'must be a whole number ≥ 0 (0: no limit)'),
  },
  {
    key: 'builder.advertiseUrl',
    type: 'string',
    description: 'The URL the other replicas of this builder\'s pool reach it at (a DELETE for one of its builds that lands on another replica is forwarded here). Default: the listening URL, with 0.0.0.0 replaced by this machine\'s first non-loopback IPv4 address.',
    env: 'BUNDLE_DISPATCH_BUILDER_ADVERTISE_URL',
    flag: 'advertise-url',
    check: httpUrl,
    example: 'http://10.0.3.17:8080',
  },
  {
    key: 'builder.metrics',
    type: 'string',
    description: 'Where GET /metrics (Prometheus) is served: "api" on the API port without a token, a port number for a listener of its own on builder.host (0: any free port; the API port then has no /metrics), or "off".',
    default: 'api',
    env: 'BUNDLE_DISPATCH_BUILDER_METRICS',
    flag: 'metrics',
    check: metricsSetting,
  },
  {
    key: 'builder.heartbeat',
    type: 'number',
    description: 'Seconds between heartbeats written to a running build\'s record.',
    default: 10,
    check: positive,
  },
  {
    key: 'dispatch.source',
    type: 'string',
    description: 'The SOURCE store: where dispatch uploads each input once, content-addressed (a directory or s3://bucket/prefix). Default: <cacheDir>/dispatch/store.',
    default: '<cacheDir>/dispatch/store',
    env: 'BUNDLE_DISPATCH_SOURCE',
    flag: 'source',
    example: 's3://bundle-sources/src',
  },
  {
    key: 'dispatch.destination',
    type: 'string',
    description: 'The DESTINATION store: where finished bundles and manifest.json go (a directory or s3://bucket/prefix).',
    default: './dist',
    env: 'BUNDLE_DISPATCH_DESTINATION',
    flag: 'destination',
    example: 's3://releases/bundles',
  },
  {
    key: 'dispatch.keyTemplate',
    type: 'string',
    description: 'Destination key of a bundle: {name} {version} {file} {pkgfile} {os} {cpu} {libc} {node} {commit} {sourceSha} {buildKey}.',
    default: '{name}/{version}/{file}',
    env: 'BUNDLE_DISPATCH_KEY_TEMPLATE',
    flag: 'key-template',
    check: keyTemplate,
  },
  {
    key: 'dispatch.manifestTemplate',
    type: 'string',
    description: 'Destination key of the run\'s manifest.json (written last); same placeholders as keyTemplate except the per-target ones.',
    default: '{name}/{version}/manifest.json',
    env: 'BUNDLE_DISPATCH_MANIFEST_TEMPLATE',
    check: keyTemplate,
  },
  {
    key: 'dispatch.pools',
    type: 'json',
    description: 'Builder pools: target (os-cpu[-libc]) → list of { "url", "tokenEnv", "publicKey" } (tokenEnv = NAME of the env var holding that builder\'s token; publicKey = the PEM file of its provenance key, checked before a result is published). Empty: the embedded default builder for this machine.',
    default: {},
    check: pools,
    example: { 'linux-x64': [{ url: 'https://builder-x64-1.internal:7420', tokenEnv: 'BUILDER_X64_TOKEN', publicKey: 'keys/builder-x64-1.pub' }, { url: 'https://builder-x64-2.internal:7420', tokenEnv: 'BUILDER_X64_TOKEN', publicKey: 'keys/builder-x64-2.pub' }], 'linux-arm64': [{ url: 'https://builder-arm64.internal:7420', tokenEnv: 'BUILDER_ARM64_TOKEN', publicKey: 'keys/builder-arm64.pub' }] },
  },
  {
    key: 'dispatch.concurrency',
    type: 'number',
    description: 'Targets dispatched at once (builds queue on the builders beyond their slots).',
    default: 8,
    env: 'BUNDLE_DISPATCH_CONCURRENCY',
    flag: 'concurrency',
    check: positiveInteger,
  },
  {
    key: 'dispatch.presignExpiry',
    type: 'number',
    description: 'Seconds the presigned source GET and output PUT URLs stay valid; must cover queue wait + build timeout.',
    default: 7200,
    env: 'BUNDLE_DISPATCH_PRESIGN_EXPIRY',
    check: positive,
  },
  {
    key: 'dispatch.waitLock',
    type: 'number',
    description: 'Seconds to wait for another run on the same destination + input to finish; 0 fails at once with ERR_LOCKED.',
    default: 0,
    env: 'BUNDLE_DISPATCH_WAIT_LOCK',
    flag: 'wait-lock',
    check: nonNegative,
  },
  {
    key: 'dispatch.notify',
    type: 'string',
    description: 'Webhook URL that receives the final JSON summary of every run (POST).',
    env: 'BUNDLE_DISPATCH_NOTIFY',
    flag: 'notify',
    check: httpUrl,
    example: 'https://hooks.example/bundle-dispatch',
  },
  {
    key: 'dispatch.s3.endpoint',
    type: 'string',
    description: 'S3-compatible endpoint for the s3:// stores: dispatch\'s source and destination, and a builder\'s builder.store (unset: AWS). Credentials come from the AWS SDK\'s default chain, never from .bundlerc.',
    env: 'BUNDLE_DISPATCH_S3_ENDPOINT',
    check: httpUrl,
    example: 'https://s3.eu-central-1.amazonaws.com',
  },
  {
    key: 'dispatch.s3.region',
    type: 'string',
    description: 'Region for the s3:// stores (unset: the SDK resolves AWS_REGION / the profile).',
    env: 'BUNDLE_DISPATCH_S3_REGION',
    example: 'eu-central-1',
  },
  {
    key: 'dispatch.s3.forcePathStyle',
    type: 'boolean',
    description: 'Path-style S3 URLs (endpoint/bucket/key), needed by most S3-compatible servers.',
    default: false,
    env: 'BUNDLE_DISPATCH_S3_FORCE_PATH_STYLE',
  },
  {
    key: 'watch.entries',
    type: 'json',
    description: 'What `bundle-dispatch watch` follows when no input is given: a list of { input, targets, destination, label } (input: a registry package with a dist-tag or semver range, or a git URL with #<tag pattern or branch>; destination: default dispatch.destination; label: shown in `runs`, default the input).',
    default: [],
    check: watchEntries,
    example: [{ input: 'my-app@latest', targets: ['linux-x64', 'linux-arm64'], destination: 's3://releases/bundles', label: 'my-app releases' }],
  },
  {
    key: 'watch.interval',
    type: 'number',
    description: 'Seconds between checks of a long-running watcher (without --once).',
    default: 300,
    env: 'BUNDLE_DISPATCH_WATCH_INTERVAL',
    flag: 'interval',
    check: positive,
  },
  {
    key: 'watch.backfill',
    type: 'number',
    description: 'On an entry\'s first check: how many of the newest matching versions to build (older ones are passed over).',
    default: 1,
    flag: 'backfill',
    check: positiveInteger,
  },
  {
    key: 'watch.maxTries',
    type: 'number',
    description: 'Dispatches of a failing version before the watcher gives up on it (and notifies dispatch.notify).',
    default: 3,
    flag: 'max-tries',
    check: positiveInteger,
  },
  {
    key: 'watch.retryDelay',
    type: 'number',
    description: 'Seconds before a failed version is tried again; each further failure waits four times longer (at most a day).',
    default: 300,
    check: positive,
  },
];

export function findKey(key: string): KeyDefinition | undefined {
  return CONFIG_KEYS.find((definition) => definition.key === key);
}
