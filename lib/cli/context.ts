/**
 * What every command gets from the CLI's entry: its own module, so command files never import
 * main.ts (which imports the command table) and the CLI has no import circle.
 */
import type { EventEmitter } from 'node:events';
import type { Writable } from 'node:stream';

export interface CliContext {
  env: NodeJS.ProcessEnv;
  cwd: string;
  stdout: Writable & { isTTY?: boolean };
  stderr: Writable & { isTTY?: boolean };
  /** Where SIGINT/SIGTERM come from (the process, in the bin). */
  signals?: EventEmitter;
}
