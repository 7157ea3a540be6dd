import type { Writable } from 'node:stream';

export interface CliContext {
  env: NodeJS.ProcessEnv;
  cwd: string;
  stdout: Writable;
  stderr: Writable;
}

/** Runs the CLI and returns the exit code. The bin sets process.exitCode from it. */
export async function main(_argv: string[], context: CliContext): Promise<number> {
  context.stderr.write('bundle-dispatch: not ready yet\n');
  return 2;
}
