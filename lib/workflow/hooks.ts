import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { BundleError } from '../errors.js';
import type { EventFunctions, EventName, HookFunctions, HookModule, HookName } from './types.js';

export const HOOK_NAMES: readonly HookName[] = ['build.defaults', 'build.configure', 'npm.configure', 'npm.package', 'build.output'];
export const EVENT_NAMES: readonly EventName[] = ['npm.spawned', 'build.complete'];

type Listeners = { [K in HookName]: HookFunctions[K][] } & { [K in EventName]: EventFunctions[K][] };

/** Hooks and event listeners of a scaffold, validated when registered (like fastify's hook names). */
export class HookRegistry {
  readonly #listeners: Listeners = {
    'build.defaults': [],
    'build.configure': [],
    'npm.configure': [],
    'npm.package': [],
    'build.output': [],
    'npm.spawned': [],
    'build.complete': [],
  };

  /** Adds every hook and listener of a module's default export, in its order. */
  add(module: HookModule, origin = 'hooks'): this {
    if (module === null || typeof module !== 'object') {
      throw new BundleError('ERR_HOOK_MODULE', `${origin} must export an object that maps hook names to functions.`, {
        hint: `Known names: ${[...HOOK_NAMES, ...EVENT_NAMES].join(', ')}.`,
      });
    }
    for (const [name, value] of Object.entries(module)) {
      if (!(name in this.#listeners)) {
        throw new BundleError('ERR_HOOK_UNKNOWN', `${origin}: "${name}" is not a hook or event of the bundle workflow.`, {
          hint: `Known names: ${[...HOOK_NAMES, ...EVENT_NAMES].join(', ')}.`,
        });
      }
      for (const fn of Array.isArray(value) ? value : [value]) {
        if (typeof fn !== 'function') {
          throw new BundleError('ERR_HOOK_MODULE', `${origin}: "${name}" must be a function or a list of functions.`);
        }
        (this.#listeners[name as HookName | EventName] as unknown[]).push(fn);
      }
    }
    return this;
  }

  /**
   * Awaits each hook of `name` in order; a hook that returns something other than undefined
   * replaces the value at `replaceIndex` for the hooks after it. Returns that value.
   */
  async run<K extends HookName>(name: K, args: Parameters<HookFunctions[K]>, replaceIndex?: number): Promise<unknown> {
    const current = [...args] as unknown[];
    for (const hook of this.#listeners[name] as ((...a: unknown[]) => unknown)[]) {
      let returned: unknown;
      try {
        returned = await hook(...current);
      } catch (error) {
        if (error instanceof BundleError && error.code !== 'ERR_INTERNAL') throw error;
        const message = error instanceof Error ? error.message : String(error);
        throw new BundleError('ERR_HOOK_FAILED', `The ${name} hook${hook.name ? ` (${hook.name})` : ''} failed: ${message}`, {
          cause: error,
          details: { hook: name },
        });
      }
      if (replaceIndex !== undefined && returned !== undefined) current[replaceIndex] = returned;
    }
    return replaceIndex === undefined ? undefined : current[replaceIndex];
  }

  /** Calls every listener of `name`; a throwing listener is reported to `onError`, never rethrown. */
  emit<K extends EventName>(name: K, args: Parameters<EventFunctions[K]>, onError: (error: unknown) => void): void {
    for (const listener of this.#listeners[name] as ((...a: unknown[]) => unknown)[]) {
      try {
        listener(...args);
      } catch (error) {
        onError(error);
      }
    }
  }

  count(name: HookName | EventName): number {
    return this.#listeners[name].length;
  }
}

/**
 * Imports hook modules named by `--hooks` or `.bundlerc` (paths resolve from `cwd`; bare
 * names resolve as packages from `cwd`).
 */
export async function loadHookModules(specifiers: readonly string[], cwd: string): Promise<Array<{ specifier: string; module: HookModule }>> {
  const loaded: Array<{ specifier: string; module: HookModule }> = [];
  for (const specifier of specifiers) {
    const isPath = specifier.startsWith('.') || path.isAbsolute(specifier);
    let url: string;
    try {
      url = isPath
        ? pathToFileURL(path.resolve(cwd, specifier)).href
        : pathToFileURL(createRequire(path.join(cwd, 'noop.js')).resolve(specifier)).href;
    } catch (error) {
      throw new BundleError('ERR_HOOK_MODULE', `Cannot find the hook module "${specifier}".`, { cause: error, hint: 'Give a path (./hooks.js) or an installed package name.' });
    }
    let imported: { default?: unknown };
    try {
      imported = (await import(url)) as { default?: unknown };
    } catch (error) {
      throw new BundleError('ERR_HOOK_MODULE', `Cannot load the hook module "${specifier}": ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    }
    if (imported.default === undefined) {
      throw new BundleError('ERR_HOOK_MODULE', `The hook module "${specifier}" has no default export.`, {
        hint: 'Export default an object such as { "npm.configure": (scaffold, config, spawn) => {…} }.',
      });
    }
    loaded.push({ specifier, module: imported.default as HookModule });
  }
  return loaded;
}
