import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { locateNpm, readNpmVersion } from '../../lib/workflow/npm.js';
import { tempDir } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-npm-version-');
});
afterAll(async () => {
  await root.remove();
});

async function fakeNpm(name: string, manifest: Record<string, unknown>, script: string): Promise<string> {
  const dir = path.join(root.dir, name);
  await mkdir(path.join(dir, 'bin'), { recursive: true });
  await writeFile(path.join(dir, 'package.json'), JSON.stringify(manifest));
  await writeFile(path.join(dir, 'bin', 'npm-cli.js'), script);
  return path.join(dir, 'bin', 'npm-cli.js');
}

describe('readNpmVersion', () => {
  it('reads npm\'s own package.json: no npm start-up', async () => {
    const cli = await fakeNpm('npm-a', { name: 'npm', version: '10.9.3' }, 'process.exit(1)');
    // A node that does not exist: asking npm would fail.
    expect(await readNpmVersion(path.join(root.dir, 'no-such-node'), cli, {})).toBe('10.9.3');
  });

  it('asks npm when the package.json beside its cli is not npm\'s', async () => {
    const cli = await fakeNpm('npm-b', { name: 'something-else', version: '0.0.1' }, 'console.log("9.1.2")');
    expect(await readNpmVersion(process.execPath, cli, {})).toBe('9.1.2');
  });

  it('says what `npm --version` says for the npm on PATH', async () => {
    const cli = locateNpm(process.env.PATH);
    const { execFileSync } = await import('node:child_process');
    expect(await readNpmVersion(process.execPath, cli, {})).toBe(execFileSync(process.execPath, [cli, '--version'], { encoding: 'utf8' }).trim());
  });
});
