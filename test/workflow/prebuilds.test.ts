/**
 * Prebuilds for other operating systems: argon2 (a popular hashing package) ships
 * `prebuilds/<platform>-<arch>/` for linux, darwin, freebsd and win32, glibc and musl. A bundle
 * keeps only the target's, and verify never loads another OS's binary (a FreeBSD ELF has the
 * same cpu as linux-x64 and failed the build with "ELF file OS ABI invalid"). Real registry,
 * real npm, real node-gyp-build.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostTarget, parseTarget } from '../../lib/target.js';
import { readBinaryHeader } from '../../lib/workflow/binary-header.js';
import { dropForeignPrebuilds, isNodeGypBuildInstall, parsePrebuildFolder, pickPrebuild, prebuildServes, prebuiltNeeds } from '../../lib/workflow/steps/prebuilds.js';
import { checkHeader, verifyNative } from '../../lib/workflow/steps/verify.js';
import { resolveToolchains, toolchainFor } from '../../lib/workflow/toolchains.js';
import { findWine } from '../../lib/workflow/wine.js';
import { installOffline, runInConsumer } from '../helpers/consumer.js';
import { packageTar, tempDir, testScaffold, saveTgz } from '../helpers/packages.js';

const host = hostTarget();
const linuxX64 = parseTarget('linux-x64');
const arm64 = parseTarget('linux-arm64@22');
const toolchain = host.cpu === 'x64' ? toolchainFor(arm64, resolveToolchains({ host, env: process.env })) : undefined;
const required = process.env.BUNDLE_DISPATCH_REQUIRE_CROSS === '1';
const wine = findWine(process.env.PATH);
if (!wine && !required) console.warn('win32 prebuilds are checked by header only here: no wine on this machine (apt-get install wine wine64)');
let root: { dir: string; remove: () => Promise<void> };

beforeAll(async () => {
  root = await tempDir('bd-prebuilds-');
});
afterAll(async () => {
  await root?.remove();
});

const app = () => packageTar({ name: 'hash-app', version: '1.0.0', main: 'index.js', dependencies: { argon2: '0.45.1' } }, {
  'index.js': 'const argon2 = require("argon2"); module.exports = (text) => argon2.hash(text).then((hash) => argon2.verify(hash, text));',
});

describe('prebuilds for other platforms', () => {
  it('reads prebuildify folder names and libc tags as node-gyp-build does', () => {
    expect(parsePrebuildFolder('linux-x64')).toEqual({ platform: 'linux', archs: ['x64'] });
    expect(parsePrebuildFolder('darwin-x64+arm64')).toEqual({ platform: 'darwin', archs: ['x64', 'arm64'] });
    expect(parsePrebuildFolder('build')).toBeUndefined();
    expect(parsePrebuildFolder('linux-sparc')).toBeUndefined();
    const glibc = parseTarget('linux-x64-glibc');
    expect(prebuildServes('node_modules/argon2/prebuilds/freebsd-x64/argon2.glibc.node', glibc)).toBe(false);
    expect(prebuildServes('node_modules/argon2/prebuilds/linux-x64/argon2.musl.node', glibc)).toBe(false);
    expect(prebuildServes('node_modules/argon2/prebuilds/linux-x64/argon2.glibc.node', glibc)).toBe(true);
    expect(prebuildServes('node_modules/argon2/prebuilds/linux-x64/argon2.musl.node', parseTarget('linux-x64-musl'))).toBe(true);
    expect(prebuildServes('node_modules/argon2/prebuilds/darwin-x64+arm64/argon2.glibc.node', parseTarget('darwin-arm64'))).toBe(true);
    expect(prebuildServes('node_modules/x/build/Release/x.node', glibc)).toBeUndefined();
  });

  it('drops other platforms\' folders and other-libc files, in the root package and in node_modules, and nothing else', async () => {
    const dir = path.join(root.dir, 'tree');
    const files = [
      'prebuilds/linux-x64/own.node', 'prebuilds/win32-x64/own.node',
      'node_modules/a/prebuilds/linux-x64/a.glibc.node', 'node_modules/a/prebuilds/linux-x64/a.musl.node', 'node_modules/a/prebuilds/freebsd-x64/a.glibc.node',
      'node_modules/@s/b/prebuilds/darwin-x64+arm64/b.node', 'node_modules/@s/b/prebuilds/linux-arm64/b.node', 'node_modules/@s/b/prebuilds/notes/readme.txt',
      'node_modules/c/build/Release/c.node',
      'node_modules/d/prebuilds/linux-x64/d.node', 'node_modules/d/build/Release/d.node',
    ];
    for (const file of files) {
      await mkdir(path.dirname(path.join(dir, file)), { recursive: true });
      await writeFile(path.join(dir, file), 'x');
    }
    // d loads through node-gyp-build and compiled its own build/Release: its prebuilds are unreachable.
    await writeFile(path.join(dir, 'node_modules/d/package.json'), JSON.stringify({ name: 'd', version: '1.0.0', dependencies: { 'node-gyp-build': '^4.8.0' } }));
    const dropped = await dropForeignPrebuilds(dir, parseTarget('linux-x64-glibc'));
    expect(dropped).toEqual([
      { path: 'node_modules/@s/b/prebuilds/darwin-x64+arm64/', reason: 'platform' }, { path: 'node_modules/@s/b/prebuilds/linux-arm64/', reason: 'platform' },
      { path: 'node_modules/a/prebuilds/freebsd-x64/', reason: 'platform' }, { path: 'node_modules/a/prebuilds/linux-x64/a.musl.node', reason: 'libc' },
      { path: 'node_modules/d/prebuilds/linux-x64/', reason: 'superseded' }, { path: 'prebuilds/win32-x64/', reason: 'platform' },
    ]);
  });

  it('linux-x64: argon2 bundles with one argon2 binary for linux-x64 glibc (its prebuild, or its own build when node-gyp-build compiled one), loaded; nothing for another OS; the app hashes after an offline install', async () => {
    const workRoot = path.join(root.dir, 'x64');
    const scaffold = await testScaffold(workRoot, { target: { ...linuxX64, libc: 'glibc', node: process.versions.node } });
    const lines: string[] = [];
    const result = await scaffold.run(app(), {}, { onEvent: (event) => { if (event.type === 'log') lines.push(event.message); } });
    const files = await saveTgz(result.output, `${workRoot}.tgz`);
    await result.settled;
    const binaries = [...files.keys()].filter((name) => name.endsWith('.node')).sort();
    // Where argon2's linux-x64 prebuild loads, node-gyp-build keeps it; where it does not (it
    // crashes Node 20 on some machines), it compiles build/Release, which it then loads first.
    const compiled = binaries.includes('package/node_modules/argon2/build/Release/argon2.node');
    expect(binaries).toEqual([compiled ? 'package/node_modules/argon2/build/Release/argon2.node' : 'package/node_modules/argon2/prebuilds/linux-x64/argon2.glibc.node']);
    expect(result.summary.nativeFiles).toEqual([binaries[0]?.replace(/^package\//, '')]);
    expect(result.summary.verification).toBe('loaded');
    expect(result.summary.droppedPrebuilds).toEqual(expect.arrayContaining(['node_modules/argon2/prebuilds/freebsd-x64/', 'node_modules/argon2/prebuilds/win32-x64/', 'node_modules/argon2/prebuilds/darwin-arm64/']));
    expect(lines.join('\n')).toMatch(/prebuilds for other platforms dropped: .*freebsd-x64/);
    if (compiled) expect(lines.join('\n')).toMatch(/prebuilds superseded by the package's own build .*: node_modules\/argon2\/prebuilds\/linux-x64\//);
    const consumer = path.join(root.dir, 'x64-consumer');
    const installed = await installOffline(`${workRoot}.tgz`, consumer);
    expect(await runInConsumer(consumer, 'require("hash-app")("secret").then((ok) => console.log(ok ? "verified" : "mismatch"))', installed.env)).toContain('verified');
  }, 240_000);

  it('a FreeBSD ELF of the target\'s cpu fails the header check for linux (its OS ABI), wherever it sits', async () => {
    const { execFileSync } = await import('node:child_process');
    const dir = path.join(root.dir, 'argon2');
    await mkdir(dir, { recursive: true });
    execFileSync('npm', ['pack', 'argon2@0.45.1', '--pack-destination', dir], { cwd: dir, stdio: 'ignore' });
    execFileSync('tar', ['xzf', 'argon2-0.45.1.tgz'], { cwd: dir });
    const freebsd = await readBinaryHeader(path.join(dir, 'package/prebuilds/freebsd-x64/argon2.glibc.node'));
    expect(freebsd).toMatchObject({ format: 'elf', cpu: 'x64', osabi: 'freebsd' });
    expect(checkHeader(freebsd, parseTarget('linux-x64'))).toMatch(/built for FreeBSD/);
    const linux = await readBinaryHeader(path.join(dir, 'package/prebuilds/linux-x64/argon2.glibc.node'));
    expect(checkHeader(linux, parseTarget('linux-x64-glibc'))).toBeUndefined();
    // Left in place, verify takes only the target's prebuild for a binary of the target.
    const report = await verifyNative({ dir: path.join(dir, 'package'), target: parseTarget('linux-x64-glibc'), runtime: { version: process.versions.node, abi: process.versions.modules, nodePath: process.execPath, binDir: path.dirname(process.execPath), nodedir: '', source: 'host', runnable: true }, canExecute: false });
    expect(report.nativeFiles).toEqual(['prebuilds/linux-x64/argon2.glibc.node']);
    expect(report.foreign).toEqual(expect.arrayContaining(['prebuilds/freebsd-x64/argon2.glibc.node', 'prebuilds/freebsd-arm64/argon2.armv8.glibc.node', 'prebuilds/linux-x64/argon2.musl.node']));
  }, 60_000);

  it.skipIf(!toolchain && !required)('linux-arm64 (cross-compiled): argon2 ships an arm64 prebuild, so nothing is compiled; it alone is bundled and loads under the emulator', async () => {
    expect(toolchain, 'no linux-arm64 toolchain').toBeDefined();
    const workRoot = path.join(root.dir, 'arm64');
    const scaffold = await testScaffold(workRoot, { target: arm64 });
    const result = await scaffold.run(app());
    const files = await saveTgz(result.output, `${workRoot}.tgz`);
    await result.settled;
    const binaries = [...files.keys()].filter((name) => name.endsWith('.node')).sort();
    expect(binaries).toEqual(['package/node_modules/argon2/prebuilds/linux-arm64/argon2.armv8.glibc.node']);
    expect(result.summary.prebuilt).toEqual([{ name: 'argon2', path: 'node_modules/argon2', file: 'prebuilds/linux-arm64/argon2.armv8.glibc.node' }]);
    expect(result.summary.droppedPrebuilds).toEqual(expect.arrayContaining(['node_modules/argon2/prebuilds/linux-x64/', 'node_modules/argon2/prebuilds/freebsd-arm64/', 'node_modules/argon2/prebuilds/linux-arm64/argon2.armv8.musl.node']));
    expect(result.summary.verification).toBe('emulated');
  }, 300_000);

  for (const [label, spec, format, cpu] of [['win32-x64', 'win32-x64@22', 'pe', 'x64'], ['darwin-arm64', 'darwin-arm64', 'macho', 'arm64']] as const) {
    it(`${label} from this linux machine: argon2's own ${label} prebuild is used (nothing compiled), proven as far as this machine can (win32: loaded by Windows Node 22 under Wine; darwin: verified by structure), and alone bundled`, async () => {
      const workRoot = path.join(root.dir, label);
      const scaffold = await testScaffold(workRoot, { target: parseTarget(spec) });
      const result = await scaffold.run(app());
      const files = await saveTgz(result.output, `${workRoot}.tgz`);
      await result.settled;
      const binaries = [...files.keys()].filter((name) => name.endsWith('.node'));
      const file = label === 'win32-x64' ? 'prebuilds/win32-x64/argon2.glibc.node' : 'prebuilds/darwin-arm64/argon2.armv8.glibc.node';
      expect(binaries).toEqual([`package/node_modules/argon2/${file}`]);
      // win32-x64 is loaded by the registry's Windows Node under Wine where Wine is installed (CI installs it).
      // darwin: nothing here runs it; it is verified by structure (lib/workflow/macho.ts) against the target Node's exports.
      const verification = label === 'win32-x64' ? (wine || required ? 'wine' : 'headers') : 'structure';
      // With MinGW (win32) or zig (darwin) here the build could compile (cross-compiled); argon2's own prebuild spared it that.
      const method = toolchainFor(parseTarget(spec), resolveToolchains({ host, env: process.env })) ? 'cross-compiled' : 'cross';
      expect(result.summary).toMatchObject({ method, verification, prebuilt: [{ name: 'argon2', path: 'node_modules/argon2', file }], nativeFiles: [`node_modules/argon2/${file}`] });
      const binary = path.join(root.dir, `${label}.node`);
      await writeFile(binary, files.get(`package/node_modules/argon2/${file}`)?.content ?? '');
      expect(await readBinaryHeader(binary)).toMatchObject({ format, cpu });
      const manifest = JSON.parse(files.get('package/package.json')?.content.toString() ?? '{}') as { os?: string[]; cpu?: string[]; bundleDependencies?: string[] };
      expect(manifest).toMatchObject({ os: [label.split('-')[0]], cpu: [cpu] });
      expect(manifest.bundleDependencies).toContain('argon2');
    }, 120_000);
  }

  it.skipIf(!wine && !required)('win32-x64 for Node 26, whose node.exe Wine 8 cannot start: argon2 takes only Node-API from node.exe, so it is loaded under Windows Node 22 instead (wine-node-api), and the log says why', async () => {
    const scaffold = await testScaffold(path.join(root.dir, 'win26'), { target: parseTarget('win32-x64@26') });
    const lines: string[] = [];
    const result = await scaffold.run(app(), {}, { onEvent: (event) => { if (event.type === 'log') lines.push(event.message); } });
    await saveTgz(result.output, path.join(root.dir, 'win26.tgz'));
    await result.settled;
    expect(result.summary.verification).toBe('wine-node-api');
    expect(lines.join('\n')).toMatch(/Windows Node 26\.\S+ does not start under this Wine: Node-API addons are loaded under Windows Node 22\.\S+ instead \(Node-API is ABI-stable\), their imports checked against node\.exe 26\./);
    expect(lines.join('\n')).toMatch(/1 native addon\(s\) load under Node 22\./);
  }, 180_000);

  it.skipIf(!wine && !required)('win32-x64 under Wine: a damaged win32 addon (its code cut off) fails the build with ERR_NATIVE_VERIFY naming it; nothing is bundled', async () => {
    expect(wine, 'no wine on this machine (apt-get install wine wine64)').toBeDefined();
    const { execFileSync } = await import('node:child_process');
    const dir = path.join(root.dir, 'argon2');
    if (!(await readFile(path.join(dir, 'argon2-0.45.1.tgz')).then(() => true, () => false))) {
      await mkdir(dir, { recursive: true });
      execFileSync('npm', ['pack', 'argon2@0.45.1', '--pack-destination', dir], { cwd: dir, stdio: 'ignore' });
    }
    execFileSync('tar', ['xzf', 'argon2-0.45.1.tgz'], { cwd: dir });
    const good = await readFile(path.join(dir, 'package/prebuilds/win32-x64/argon2.glibc.node'));
    // The headers stay whole (the PE header check passes); the sections after them are zeroed.
    const damaged = Buffer.concat([good.subarray(0, 4096), Buffer.alloc(good.length - 4096)]);
    const broken = packageTar({ name: 'broken-win', version: '1.0.0', main: 'index.js', dependencies: { 'node-gyp-build': '4.8.4' }, scripts: { install: 'node-gyp-build' } }, {
      'index.js': 'module.exports = require("node-gyp-build")(__dirname);\n',
      'binding.gyp': '{ "targets": [] }\n',
      'prebuilds/win32-x64/broken.napi.node': { content: damaged, mode: 0o644 },
    });
    const scaffold = await testScaffold(path.join(root.dir, 'win-broken'), { target: parseTarget('win32-x64@22') });
    const failure = await scaffold.build(broken).then(() => undefined, (error: unknown) => error);
    expect(failure).toMatchObject({ code: 'ERR_NATIVE_VERIFY', message: expect.stringContaining('prebuilds/win32-x64/broken.napi.node') });
    expect((failure as Error).message).toMatch(/does not load under Node 22|crashed Node 22/);
  }, 120_000);

  it('uses a prebuild only where node-gyp-build would load it and the install script does nothing else', async () => {
    const pkg = path.join(root.dir, 'pick');
    const write = async (relative: string) => {
      await mkdir(path.dirname(path.join(pkg, relative)), { recursive: true });
      await writeFile(path.join(pkg, relative), 'x');
    };
    for (const file of ['prebuilds/linux-x64/node.abi115.node', 'prebuilds/linux-x64/node.napi.glibc.node', 'prebuilds/linux-x64/node.napi.musl.node', 'prebuilds/linux-x64/electron.napi.node',
      'prebuilds/darwin-x64+arm64/node.napi.node', 'prebuilds/darwin-arm64/node.napi.node', 'prebuilds/linux-arm/node.napi.armv6.node', 'prebuilds/linux-arm/node.napi.armv7.node']) await write(file);
    expect(await pickPrebuild(pkg, parseTarget('linux-x64-glibc'), '115')).toBe('prebuilds/linux-x64/node.abi115.node');
    expect(await pickPrebuild(pkg, parseTarget('linux-x64-glibc'), '127')).toBe('prebuilds/linux-x64/node.napi.glibc.node');
    expect(await pickPrebuild(pkg, parseTarget('linux-x64-musl'), '127')).toBe('prebuilds/linux-x64/node.napi.musl.node');
    expect(await pickPrebuild(pkg, parseTarget('darwin-arm64'), '127')).toBe('prebuilds/darwin-arm64/node.napi.node');
    expect(await pickPrebuild(pkg, parseTarget('darwin-x64'), '127')).toBe('prebuilds/darwin-x64+arm64/node.napi.node');
    expect(await pickPrebuild(pkg, parseTarget('linux-arm'), '127')).toBe('prebuilds/linux-arm/node.napi.armv7.node');
    expect(await pickPrebuild(pkg, parseTarget('win32-x64'), '127')).toBeUndefined();
    expect(isNodeGypBuildInstall('node-gyp-build')).toBe(true);
    expect(isNodeGypBuildInstall('cross-env ZERO_AR_DATE=1 node-gyp-build')).toBe(true);
    expect(isNodeGypBuildInstall('node-gyp-build-optional-packages')).toBe(true);
    expect(isNodeGypBuildInstall('node-gyp-build && node download.js')).toBe(false);
    expect(isNodeGypBuildInstall('node-gyp rebuild')).toBe(false);
    expect(isNodeGypBuildInstall('prebuild-install || node-gyp rebuild')).toBe(false);
    const split = await prebuiltNeeds([
      { name: 'ok', path: 'pick', reasons: ['binding.gyp', 'install: node-gyp-build'] },
      { name: 'gyp-only', path: 'pick', reasons: ['binding.gyp'] },
      { name: 'more-work', path: 'pick', reasons: ['binding.gyp', 'install: node-gyp-build', 'postinstall: node fetch.js'] },
      { name: 'no-fit', path: 'pick', reasons: ['install: node-gyp-build'] },
    ].map((need) => (need.name === 'no-fit' ? { ...need, path: 'nowhere' } : need)), root.dir, parseTarget('darwin-arm64'), '127');
    expect(split.prebuilt.map((use) => use.name)).toEqual(['ok']);
    expect(split.remaining.map((need) => need.name)).toEqual(['gyp-only', 'more-work', 'no-fit']);
  });
});
