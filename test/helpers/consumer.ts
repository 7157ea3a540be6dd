import { execFile } from 'node:child_process';
import { mkdir, realpath, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { locateNpm } from '../../lib/workflow/npm.js';

const execFileAsync = promisify(execFile);

/**
 * Installs a bundle the way a consumer without a toolchain would: `npm install <bundle.tgz>
 * --offline` with an empty cache, no npmrc of this machine, and a PATH holding only node and
 * npm (no cc, c++, make or python3), scripts allowed.
 */
export async function installOffline(bundle: string, dir: string, node: string = process.execPath, options: { emulator?: string[] } = {}): Promise<{ stdout: string; stderr: string; env: NodeJS.ProcessEnv }> {
  const bin = path.join(dir, 'bin');
  await mkdir(bin, { recursive: true });
  if (options.emulator) {
    // A foreign Node (an arm64 build on x64) runs through its emulator: `node` on the
    // consumer's PATH is a wrapper, so npm and every script it starts run emulated.
    await writeFile(path.join(bin, 'node'), `#!/bin/sh\nexec ${[...options.emulator, node].map((part) => `'${part}'`).join(' ')} "$@"\n`, { mode: 0o755 });
  } else {
    await symlink(node, path.join(bin, 'node'));
  }
  await symlink(await realpath(locateNpm(process.env.PATH)), path.join(bin, 'npm'));
  await mkdir(path.join(dir, 'app'), { recursive: true });
  await mkdir(path.join(dir, 'home'), { recursive: true });
  await writeFile(path.join(dir, 'app', 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
  await writeFile(path.join(dir, 'npmrc'), '');
  await writeFile(path.join(dir, 'global-npmrc'), '');
  const env: NodeJS.ProcessEnv = {
    PATH: bin,
    HOME: path.join(dir, 'home'),
    npm_config_userconfig: path.join(dir, 'npmrc'),
    npm_config_globalconfig: path.join(dir, 'global-npmrc'),
    npm_config_cache: path.join(dir, 'empty-cache'),
    npm_config_update_notifier: 'false',
  };
  const { stdout, stderr } = await execFileAsync(path.join(bin, 'node'), [path.join(bin, 'npm'), 'install', bundle, '--offline', '--no-audit', '--no-fund'], { cwd: path.join(dir, 'app'), env, timeout: 300_000 });
  return { stdout, stderr, env };
}

/** Runs a script with the consumer's node in its app dir. */
export async function runInConsumer(dir: string, script: string, env: NodeJS.ProcessEnv): Promise<string> {
  const { stdout } = await execFileAsync(path.join(dir, 'bin', 'node'), ['-e', script], { cwd: path.join(dir, 'app'), env });
  return stdout.trim();
}
