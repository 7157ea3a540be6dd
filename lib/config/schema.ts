/**
 * The one table of configuration keys. Validation, `--help` text, the env names and the
 * committed `.bundlerc.example` all come from it (npm's config definitions, changesets' schema).
 */
export type KeyType = 'string' | 'number' | 'boolean' | 'string[]' | 'record';

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
];

export function findKey(key: string): KeyDefinition | undefined {
  return CONFIG_KEYS.find((definition) => definition.key === key);
}
