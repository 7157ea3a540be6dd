/**
 * A real npm registry on loopback: Verdaccio 6 (the last line that runs on Node 20), no uplink,
 * storage in a temp dir, one user whose token publishes. Packages are published with real npm.
 */
import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { locateNpm } from '../../lib/workflow/npm.js';
import { tempDir } from './packages.js';

const execFileAsync = promisify(execFile);

export interface TestRegistry {
  /** `http://127.0.0.1:<port>/` */
  url: string;
  /** Publishes a package made of `packageJson` and `files` with real npm. */
  publish(packageJson: Record<string, unknown>, files?: Record<string, string>): Promise<void>;
  stop(): Promise<void>;
}

export async function startRegistry(): Promise<TestRegistry> {
  const root = await tempDir('bd-registry-');
  // Verdaccio's build is CommonJS; its types are not needed here.
  const { runServer } = (await import('verdaccio')) as unknown as { runServer: (config: object) => Promise<{ listen: (port: number, host: string, done: () => void) => Server }> };
  const app = await runServer({
    self_path: root.dir,
    storage: path.join(root.dir, 'storage'),
    uplinks: {},
    packages: { '**': { access: '$all', publish: '$authenticated', unpublish: '$authenticated' } },
    auth: { htpasswd: { file: path.join(root.dir, 'htpasswd'), max_users: 10 } },
    log: { type: 'stdout', format: 'json', level: 'fatal' },
  });
  const server = await new Promise<Server>((resolve) => {
    const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  const created = await fetch(`${url}-/user/org.couchdb.user:publisher`, {
    method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'publisher', password: 'publisher-password-1' }),
  });
  const { token } = (await created.json()) as { token: string };
  const npmrc = path.join(root.dir, 'npmrc');
  await writeFile(npmrc, `registry=${url}\n//${new URL(url).host}/:_authToken=${token}\n`);
  let count = 0;
  return {
    url,
    async publish(packageJson, files = {}) {
      const dir = path.join(root.dir, 'packages', String((count += 1)));
      await mkdir(dir, { recursive: true });
      await writeFile(path.join(dir, 'package.json'), JSON.stringify(packageJson));
      for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text);
      await execFileAsync(process.execPath, [locateNpm(process.env.PATH), 'publish', '--registry', url, '--userconfig', npmrc, '--ignore-scripts', '--loglevel=error'], {
        cwd: dir, env: { PATH: process.env.PATH ?? '', HOME: root.dir, npm_config_cache: path.join(root.dir, 'npm-cache'), npm_config_update_notifier: 'false' },
      });
    },
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await root.remove();
    },
  };
}
