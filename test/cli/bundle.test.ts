import { createHash } from 'node:crypto';
import { gunzipSync } from 'node:zlib';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { installOffline, runInConsumer } from '../helpers/consumer.js';
import { repoRoot, tempDir, testCacheDir } from '../helpers/packages.js';
import { makeTgz, packageEntries } from '../helpers/tar.js';

const sample = path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz');
// The host's own Node: the runtime rule has tests of its own; these test the command.
const hostNode = ['--node', process.versions.node, '--cache-dir', testCacheDir];
let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-cli-');
});
afterAll(async () => {
  await root.remove();
});

describe('bundle-dispatch bundle', () => {
  it('bundles the sample package; --json is one parseable document whose hashes match the file; it installs offline', async () => {
    const out = path.join(root.dir, 'out');
    const run = await runCli(['bundle', sample, '-o', `${out}/`, '--json', ...hostNode], { cwd: root.dir });
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout) as { file: string; sha256: string; tarSha256: string; size: number; node: string; target: { os: string; cpu: string; libc?: string }; bundledDependencies: string[] };
    expect(path.basename(result.file)).toBe(`hello-app-1.0.0-linux-${process.arch}-glibc-node${process.versions.node.split('.')[0]}.tgz`);
    const bytes = await readFile(result.file);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(result.sha256);
    expect(result.size).toBe(bytes.length);
    expect(result.tarSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(result.node).toBe(process.versions.node);
    expect(result.target).toEqual({ os: 'linux', cpu: process.arch, libc: 'glibc', node: process.versions.node });
    expect(result.bundledDependencies).toEqual(['kleur', 'ms']);
    expect(await readdir(out)).toEqual([path.basename(result.file)]);

    const consumer = path.join(root.dir, 'consumer');
    const installed = await installOffline(result.file, consumer);
    const said = await runInConsumer(consumer, 'import("hello-app").then((app) => console.log(app.ago(120000)))', installed.env);
    expect(said).toContain('2 minutes');
  });

  it('prints the summary for people, and progress lines on stderr without a TTY', async () => {
    const run = await runCli(['bundle', sample, '-o', path.join(root.dir, 'human.tgz'), ...hostNode], { cwd: root.dir });
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('✔ human.tgz');
    expect(run.stdout).toContain('bundled  2 packages');
    expect(run.stderr).toContain('✔ Install production dependencies');
  });

  it('--gzip-level and BUNDLE_DISPATCH_GZIP_LEVEL set the gzip level: other .tgz bytes, the same tar inside; a level out of 1–9 is a config error that writes nothing', async () => {
    type Outcome = { file: string; sha256: string; tarSha256: string; size: number };
    const bundleAt = async (name: string, flags: string[], env: Record<string, string> = {}) => {
      const run = await runCli(['bundle', sample, '-o', path.join(root.dir, 'levels', `${name}.tgz`), '--json', ...hostNode, ...flags], { cwd: root.dir, env });
      expect(run.code, run.stderr).toBe(0);
      const outcome = JSON.parse(run.stdout) as Outcome;
      return { ...outcome, bytes: await readFile(outcome.file) };
    };
    const fastest = await bundleAt('fastest', ['--gzip-level', '1']);
    const smallest = await bundleAt('smallest', [], { BUNDLE_DISPATCH_GZIP_LEVEL: '9' });
    const standard = await bundleAt('standard', []);
    // The gzip header's XFL byte says which level wrote it (RFC 1952: 4 fastest, 2 maximum, 0 otherwise).
    expect([fastest.bytes[8], standard.bytes[8], smallest.bytes[8]]).toEqual([4, 0, 2]);
    expect(new Set([fastest.sha256, standard.sha256, smallest.sha256]).size).toBe(3);
    expect(fastest.size).toBeGreaterThan(smallest.size);
    expect(fastest.tarSha256).toBe(standard.tarSha256);
    expect(smallest.tarSha256).toBe(standard.tarSha256);
    expect(createHash('sha256').update(gunzipSync(fastest.bytes)).digest('hex')).toBe(standard.tarSha256);

    for (const [flags, env, source] of [[['--gzip-level', '0'], {}, '--gzip-level: 0'], [[], { BUNDLE_DISPATCH_GZIP_LEVEL: '10' }, 'BUNDLE_DISPATCH_GZIP_LEVEL'], [['--gzip-level', '2.5'], {}, '--gzip-level: 2.5']] as const) {
      const out = path.join(root.dir, 'bad-level');
      const run = await runCli(['bundle', sample, '-o', `${out}/`, '--json', ...hostNode, ...flags], { cwd: root.dir, env: { ...env } });
      expect(run.code).toBe(2);
      const { error } = JSON.parse(run.stdout) as { error: { code: string; message: string } };
      expect(error.code).toBe('ERR_CONFIG');
      expect(error.message).toContain(source);
      expect(error.message).toContain('must be a whole number from 1 (fastest) to 9 (smallest)');
      expect(await readdir(out).catch(() => [])).toEqual([]);
    }
  });

  it('bad input: exit 2 (like a usage error: the same input fails again), a coded JSON error, no file written', async () => {
    const bad = path.join(root.dir, 'bad.tgz');
    await writeFile(bad, 'definitely not a tarball\n'.repeat(50));
    const out = path.join(root.dir, 'bad-out');
    const run = await runCli(['bundle', bad, '-o', `${out}/`, '--json', ...hostNode], { cwd: root.dir });
    expect(run.code).toBe(2);
    const result = JSON.parse(run.stdout) as { error: { code: string; message: string } };
    expect(result.error.code).toBe('ERR_INPUT_NOT_TAR');
    expect(await readdir(out).catch(() => [])).toEqual([]);
    expect(run.stderr).not.toMatch(/at .*\.js:\d+/); // no stack without --verbose
  });

  it('a package name that is not an npm name, or a version that is not semver: exit 2, ERR_PACKAGE_INVALID, nothing written anywhere (issue 15.4)', async () => {
    const base = path.join(root.dir, 'names', 'a', 'b');
    await mkdir(base, { recursive: true });
    for (const [manifest, field] of [[{ name: '../../x', version: '1.0.0' }, 'name'], [{ name: 'ok-name', version: 'not-semver' }, 'version']] as const) {
      const input = path.join(base, `${field}.tgz`);
      await writeFile(input, await makeTgz(packageEntries([{ name: 'package/index.js', content: '' }], manifest)));
      const run = await runCli(['bundle', input, '-o', 'out/', '--json', ...hostNode], { cwd: base });
      expect(run.code, run.stderr).toBe(2);
      const result = JSON.parse(run.stdout) as { error: { code: string; message: string } };
      expect(result.error.code).toBe('ERR_PACKAGE_INVALID');
      expect(result.error.message).toContain(`"${field}"`);
      expect(run.stderr).not.toContain('Install production dependencies');
    }
    expect(await readdir(path.join(base, 'out')).catch(() => [])).toEqual([]);
    expect((await readdir(path.join(root.dir, 'names', 'a'))).sort()).toEqual(['b']);
  });

  it('a tarball with two package/package.json entries is refused before the second one\'s install script can run (issue 15.5)', async () => {
    const dir = path.join(root.dir, 'dupes');
    await mkdir(dir, { recursive: true });
    const marker = path.join(dir, 'install-script-ran');
    const input = path.join(dir, 'dupe-1.0.0.tgz');
    await writeFile(input, await makeTgz([
      { name: 'package/package.json', content: JSON.stringify({ name: 'dupe', version: '1.0.0' }) },
      { name: 'package/package.json', content: JSON.stringify({ name: 'dupe', version: '1.0.0', scripts: { install: `node -e "require('fs').writeFileSync(${JSON.stringify(marker)}, '')"` } }) },
    ]));
    const run = await runCli(['bundle', input, '-o', `${dir}/out/`, '--json', ...hostNode], { cwd: dir });
    expect(run.code).not.toBe(0);
    const result = JSON.parse(run.stdout) as { error: { code: string; message: string } };
    expect(result.error.code).toBe('ERR_UNSAFE_ENTRY');
    expect(result.error.message).toContain('second entry for the path "package.json"');
    expect((await readdir(dir)).sort()).toEqual(['dupe-1.0.0.tgz', 'out']);
    expect(await readdir(path.join(dir, 'out'))).toEqual([]);
  });

  it('a cross target without a registry runtime (aix-ppc64): exit 2, ERR_RUNTIME_UNAVAILABLE naming the pair and what exists (issue 15.6)', async () => {
    const run = await runCli(['bundle', sample, '--os', 'aix', '--cpu', 'ppc64', '-o', `${root.dir}/aix/`, '--json', '--cache-dir', testCacheDir], { cwd: root.dir });
    expect(run.code, run.stderr).toBe(2);
    const result = JSON.parse(run.stdout) as { error: { code: string; message: string } };
    expect(result.error.code).toBe('ERR_RUNTIME_UNAVAILABLE');
    expect(result.error.message).toContain('aix-ppc64');
    expect(result.error.message).toContain('linux-x64, linux-arm64');
    expect(await readdir(path.join(root.dir, 'aix')).catch(() => [])).toEqual([]);
  });

  it('usage errors exit 2 with a message that says what to do', async () => {
    const missing = await runCli(['bundle', path.join(root.dir, 'nope.tgz')], { cwd: root.dir });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('ERR_INPUT_NOT_FOUND');
    const unknownFlag = await runCli(['bundle', sample, '--colour'], { cwd: root.dir });
    expect(unknownFlag.code).toBe(2);
    expect(unknownFlag.stderr).toMatch(/Unknown argument/i);
    const badTarget = await runCli(['bundle', sample, '--cpu', 'z80'], { cwd: root.dir });
    expect(badTarget.code).toBe(2);
    expect(badTarget.stderr).toContain('Unknown cpu "z80"');
    const configDir = path.join(root.dir, 'with-config');
    await mkdir(configDir, { recursive: true });
    await writeFile(path.join(configDir, '.bundlerc'), JSON.stringify({ registry: 42 }));
    const badConfig = await runCli(['bundle', sample], { cwd: configDir });
    expect(badConfig.code).toBe(2);
    expect(badConfig.stderr).toContain('registry: 42 must be a non-empty string');
  });

  it('--help teaches the command', async () => {
    const help = await runCli(['bundle', '--help'], { cwd: root.dir });
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('--node');
    expect(help.stdout).toContain('Examples:');
  });

  it('SIGINT cancels the build: exit 130 and no partial file', async () => {
    const slowDir = path.join(root.dir, 'slow');
    await mkdir(slowDir, { recursive: true });
    const { pack } = await import('../../lib/workflow/steps/pack.js');
    const source = path.join(slowDir, 'src');
    await mkdir(source, { recursive: true });
    await writeFile(path.join(source, 'package.json'), JSON.stringify({ name: 'slow', version: '1.0.0', scripts: { install: 'node -e "console.log(\'install-started\'); setTimeout(() => {}, 60000)"' } }));
    const { createWriteStream } = await import('node:fs');
    const { pipeline } = await import('node:stream/promises');
    await pipeline(pack(source), createWriteStream(path.join(slowDir, 'slow.tar')));
    const out = path.join(slowDir, 'out');
    let signalled = false;
    const run = await runCli(['bundle', path.join(slowDir, 'slow.tar'), '-o', `${out}/`, '--verbose', ...hostNode], {
      cwd: slowDir,
      onStderr: (text, child) => {
        if (!signalled && text.includes('install-started')) {
          signalled = true;
          child.kill('SIGINT');
        }
      },
    });
    expect(signalled).toBe(true);
    expect(run.code).toBe(130);
    expect(run.stderr).toContain('ERR_ABORTED');
    expect(await readdir(out)).toEqual([]);
  });

  it('loads hook modules from --hooks and from .bundlerc, and their changes reach the bundle', async () => {
    const dir = path.join(root.dir, 'hooks');
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'stamp.mjs'), 'export default { "npm.package": (scaffold, config, pkg, status) => { pkg.stampedBy = "flag"; status.log("stamped"); } };\n');
    await writeFile(path.join(dir, 'rc-hooks.mjs'), 'export default { "npm.package": [(s, c, pkg) => ({ ...pkg, fromRc: true })] };\n');
    await writeFile(path.join(dir, '.bundlerc'), JSON.stringify({ hooks: ['./rc-hooks.mjs'] }));
    const viaFlag = await runCli(['bundle', sample, '-o', `${path.join(dir, 'a')}/`, '--hooks', './stamp.mjs', '--json', ...hostNode], { cwd: dir });
    expect(viaFlag.code).toBe(0);
    const viaRc = await runCli(['bundle', sample, '-o', `${path.join(dir, 'b')}/`, '--json', ...hostNode], { cwd: dir });
    expect(viaRc.code).toBe(0);
    const read = async (file: string) => {
      const { execFile } = await import('node:child_process');
      const { promisify } = await import('node:util');
      const { stdout } = await promisify(execFile)('tar', ['xzf', file, '-O', 'package/package.json']);
      return JSON.parse(stdout) as Record<string, unknown>;
    };
    const flagged = await read((JSON.parse(viaFlag.stdout) as { file: string }).file);
    expect(flagged.stampedBy).toBe('flag');
    expect(flagged.fromRc).toBeUndefined(); // --hooks replaces the .bundlerc list
    const fromRc = await read((JSON.parse(viaRc.stdout) as { file: string }).file);
    expect(fromRc.fromRc).toBe(true);
    const unknown = await runCli(['bundle', sample, '--hooks', './nope.mjs'], { cwd: dir });
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('ERR_HOOK_MODULE');
  });
});
