/**
 * `--help` without the parser: each command's help text is rendered by yargs at build time
 * (scripts/render-help.js, for every width the CLI wraps at) and read back here, so asking for
 * help costs a file read instead of loading yargs and the command table. What it prints is
 * yargs' own text for that width, byte for byte (a test compares the two).
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** The commands whose help is rendered ahead (`main` is the top-level `--help`). */
export const HELP_COMMANDS = ['main', 'bundle', 'builder', 'dispatch', 'status', 'runs', 'logs', 'cancel', 'prune', 'verify', 'watch'] as const;
/** The widths rendered ahead: the terminal's columns from 60 up to 110 (narrower ones: the parser), 100 without a terminal. */
export const HELP_WIDTHS = { min: 60, max: 110, default: 100 } as const;

/** Where the rendered texts are: beside this module in the build (build/lib/cli/help/). */
export const HELP_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'help');

/** The width yargs wraps help at for an output of `columns` columns (none: not a terminal). */
export function helpWidth(columns: number | undefined): number {
  return Math.min(HELP_WIDTHS.max, columns ?? HELP_WIDTHS.default);
}

/** `['--help']` → `main`, `['bundle', '-h']` → `bundle`; anything else (more arguments) → undefined. */
export function helpRequest(argv: readonly string[]): string | undefined {
  const isHelp = (arg: string | undefined) => arg === '--help' || arg === '-h';
  if (argv.length === 1 && isHelp(argv[0])) return 'main';
  if (argv.length === 2 && isHelp(argv[1]) && (HELP_COMMANDS as readonly string[]).includes(argv[0] ?? '') && argv[0] !== 'main') return argv[0];
  return undefined;
}

/** The text rendered ahead for `command` at `width`, or undefined (not built: the parser renders it). */
export async function cachedHelp(command: string, width: number): Promise<string | undefined> {
  if (width < HELP_WIDTHS.min) return undefined;
  return readFile(path.join(HELP_DIR, `${command}.${width}.txt`), 'utf8').catch(() => undefined);
}
