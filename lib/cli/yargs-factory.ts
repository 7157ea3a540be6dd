/**
 * yargs, built without loading its help renderer. yargs' ESM entry (`index.mjs`) hands its
 * factory a platform shim that imports cliui and string-width, whose module graphs and
 * `Intl.Segmenter` are ~40 ms of every command's start (~65 ms for all of yargs on the 2-core
 * machine) though only help text uses them. This builds yargs from the same factory with the
 * same shim, field for field (test/cli/yargs-factory.test.ts compares them), except that those
 * two load on first use — synchronously, by `require` (Node ≥ 20.19 requires ES modules), when
 * yargs renders help that the build-time cache (help-cache.ts) could not answer — and that its
 * `process.exit` only sets the exit code (main() never lets yargs exit: exitProcess(false)).
 *
 * The factory and the shim's pieces are found where yargs' own entry finds them, resolved from
 * yargs' own files; should a yargs release move them, yargs' entry is loaded instead (slower,
 * same behaviour).
 */
import { notStrictEqual, strictEqual } from 'node:assert';
import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, extname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inspect } from 'node:util';
import type { default as YargsFn } from 'yargs';

export type Yargs = typeof YargsFn;

/** A module's callable export, whether it came through require(esm) (a namespace) or CommonJS. */
function callable<T>(loaded: unknown): T {
  return (typeof loaded === 'function' ? loaded : (loaded as { default: unknown }).default) as T;
}

/** yargs' ESM platform shim (yargs/lib/platform-shims/esm.mjs), with cliui and string-width loaded on first use. */
export async function lazyShim(): Promise<{ shim: Record<string, unknown>; entry: URL }> {
  const entry = new URL(import.meta.resolve('yargs'));
  const shimUrl = new URL('./lib/platform-shims/esm.mjs', entry);
  const shimFile = fileURLToPath(shimUrl);
  // Resolved as yargs' shim resolves them: its own dependencies, from its own directory.
  const requireFromShim = createRequire(shimUrl);
  const load = <T>(name: string): T => callable<T>(requireFromShim(name));
  const { getProcessArgvBin } = await import(new URL('./build/lib/utils/process-argv.js', entry).href) as { getProcessArgvBin: () => string };
  const getCallerFile = load<(position?: number) => string>('get-caller-file');
  const y18n = load<(options: { directory: string; updateFiles: boolean }) => unknown>('y18n');
  let cliui: ((options: unknown) => unknown) | undefined;
  let stringWidth: ((text: string) => number) | undefined;
  const mainFilename = shimFile.substring(0, shimFile.lastIndexOf('node_modules'));
  const shim = {
    assert: { notStrictEqual, strictEqual },
    cliui: (options: unknown) => (cliui ??= load<(options: unknown) => unknown>('cliui'))(options),
    findUp: load('escalade/sync'),
    getEnv: (key: string) => process.env[key],
    inspect,
    getProcessArgvBin,
    mainFilename: mainFilename || process.cwd(),
    Parser: load('yargs-parser'),
    path: { basename, dirname, extname, relative, resolve, join },
    process: {
      argv: () => process.argv,
      cwd: process.cwd,
      emitWarning: (warning: string | Error, type?: string) => process.emitWarning(warning, type),
      execPath: () => process.execPath,
      // main() turns exiting off (exitProcess(false)); yargs' own shim exits here.
      exit: (code: number) => {
        process.exitCode = code;
      },
      nextTick: process.nextTick,
      stdColumns: typeof process.stdout.columns !== 'undefined' ? process.stdout.columns : null,
    },
    readFileSync,
    readdirSync,
    require: requireFromShim,
    getCallerFile: () => {
      const callerFile = getCallerFile(3);
      return callerFile.startsWith('file://') ? fileURLToPath(callerFile) : callerFile;
    },
    stringWidth: (text: string) => (stringWidth ??= load<(text: string) => number>('string-width'))(text),
    y18n: y18n({ directory: resolve(shimFile, '../../../locales'), updateFiles: false }),
  };
  return { shim, entry };
}

/** yargs, as `import('yargs')` gives it, without loading cliui and string-width until help is rendered. */
export async function loadYargs(): Promise<Yargs> {
  try {
    const { shim, entry } = await lazyShim();
    const { YargsFactory } = await import(new URL('./build/lib/yargs-factory.js', entry).href) as { YargsFactory: (shim: unknown) => Yargs };
    return YargsFactory(shim);
  } catch {
    // Another yargs layout: its own entry, with the renderer loaded up front.
    return (await import('yargs')).default;
  }
}
