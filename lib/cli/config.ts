/**
 * What every command does with configuration: load it once (defaults < .bundlerc < env <
 * flags), refuse it with every problem listed, and turn it into the workflow's defaults.
 */
import { homedir, tmpdir } from 'node:os';
import { loadConfig, type ResolvedConfig } from '../config/load.js';
import { CONFIG_KEYS } from '../config/schema.js';
import { BundleError } from '../errors.js';
import type { BuildOverrides, RegistryAuth } from '../workflow/types.js';
import type { CliContext } from './context.js';
import type { OpenStoreOptions } from '../storage/index.js';

/** Loads the configuration or throws ERR_CONFIG listing every problem with its key path. */
export async function loadCliConfig(context: Pick<CliContext, 'cwd' | 'env'>, flags: Record<string, unknown>, configFile?: string, options: { systemDirs?: boolean } = {}): Promise<ResolvedConfig> {
  const loaded = await loadConfig({ cwd: context.cwd, env: context.env, flags, homeDir: homedir(), tmpDir: tmpdir(), ...(configFile ? { configFile } : {}), ...(options.systemDirs ? { systemDirs: true } : {}) });
  if (loaded.errors.length > 0) {
    // Each problem names its key, the value and what is expected; the full list of keys helps
    // only when a key is unknown and nothing near it was found.
    const lost = loaded.errors.some((error) => /unknown key "[^"]*"$/.test(error));
    throw new BundleError('ERR_CONFIG', `Invalid configuration:\n  ${loaded.errors.join('\n  ')}`, {
      hint: lost ? `Known keys: ${CONFIG_KEYS.map((key) => key.key).join(', ')}.` : 'Every key, its type and default: .bundlerc.example and the README\'s configuration table.',
    });
  }
  return loaded.config;
}

/** A list flag given comma-separated, repeated or both (`-t a,b -t c`): its items, trimmed. */
export function commaList(values: readonly string[] | undefined): string[] | undefined {
  return values?.flatMap((value) => value.split(',')).map((value) => value.trim()).filter(Boolean);
}

/** Registry tokens come from the env vars that .bundlerc names, never from the file itself. */
export function registryAuth(config: ResolvedConfig, env: NodeJS.ProcessEnv): Record<string, RegistryAuth> {
  const auth: Record<string, RegistryAuth> = {};
  for (const [url, variable] of Object.entries(config.registryTokens)) {
    const token = env[variable];
    if (!token) {
      throw new BundleError('ERR_CONFIG', `registryTokens: the environment variable ${variable} (token for ${url}) is not set.`, {
        hint: `Export ${variable} with the registry's token, or remove the entry.`,
      });
    }
    auth[url] = { token };
  }
  return auth;
}

/** The bundle workflow's defaults from the configuration (and SOURCE_DATE_EPOCH). */
export function workflowDefaults(config: ResolvedConfig, env: NodeJS.ProcessEnv): BuildOverrides {
  return {
    registry: config.registry,
    scopes: config.scopes,
    auth: registryAuth(config, env),
    runtimes: config.runtimes,
    toolchains: config.toolchains,
    allowHeaderOnlyVerify: config.allowHeaderOnlyVerify,
    envAllow: config.envAllow,
    keepWorkdir: config.keepWorkdir,
    limits: config.limits,
    ...(env.SOURCE_DATE_EPOCH ? { sourceDateEpoch: Number(env.SOURCE_DATE_EPOCH) } : {}),
  };
}

/**
 * How this process opens s3:// stores (dispatch's source and destination, a builder's
 * builder.store): the `dispatch.s3.*` settings (BUNDLE_DISPATCH_S3_*), one S3 connection for both.
 */
export function storeOptions(config: ResolvedConfig, cwd: string): OpenStoreOptions {
  const { s3 } = config.dispatch;
  return {
    cwd,
    s3: {
      ...(s3.endpoint ? { endpoint: s3.endpoint } : {}),
      ...(s3.region ? { region: s3.region } : {}),
      ...(s3.forcePathStyle ? { forcePathStyle: true } : {}),
      presignExpiresIn: config.dispatch.presignExpiry,
    },
  };
}
