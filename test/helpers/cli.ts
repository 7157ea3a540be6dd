import { spawn } from 'node:child_process';
import path from 'node:path';
import { repoRoot } from './packages.js';

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the real bin (the compiled build/) as a user would, with no TTY. */
export function runCli(args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv; onStderr?: (text: string, child: ReturnType<typeof spawn>) => void }): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(repoRoot, 'bin', 'bundle-dispatch.js'), ...args], {
      cwd: options.cwd,
      env: { ...process.env, CI: 'true', ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      options.onStderr?.(stderr, child);
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * Runs the real bin in a real terminal of `columns` columns (util-linux `script` gives it a
 * pty), CI unset, as a user at a terminal would; returns what the terminal showed, without
 * colour and cursor sequences, and the exit code.
 */
export function runCliInTerminal(args: string[], options: { cwd: string; columns: number; env?: NodeJS.ProcessEnv; stopAfterSeconds?: number }): Promise<{ code: number | null; screen: string }> {
  const quote = (text: string) => `'${text.replaceAll("'", "'\\''")}'`;
  // A service (the builder) gets SIGTERM after stopAfterSeconds, as from `timeout`.
  const stop = options.stopAfterSeconds ? `timeout ${options.stopAfterSeconds} ` : 'exec ';
  const command = `stty cols ${options.columns} rows 50; ${stop}${[process.execPath, path.join(repoRoot, 'bin', 'bundle-dispatch.js'), ...args].map(quote).join(' ')}`;
  return new Promise((resolve, reject) => {
    const { CI: _ci, ...env } = { ...process.env, ...options.env };
    const child = spawn('script', ['-qec', command, '/dev/null'], { cwd: options.cwd, env: { ...env, TERM: 'xterm' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let screen = '';
    child.stdout.on('data', (chunk: Buffer) => {
      screen += chunk.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, screen: screen.replace(new RegExp(`${String.fromCharCode(27)}\\[[0-9;?]*[a-zA-Z]`, 'g'), '').replace(/\r/g, '') }));
  });
}
