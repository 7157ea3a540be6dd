import { createWriteStream } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pack } from '../../lib/workflow/steps/pack.js';
import type { BuildEvent } from '../../lib/workflow/types.js';
import { installOffline, runInConsumer } from '../helpers/consumer.js';
import { buildLeftovers, buildSaved, packageTar, repoRoot, saveTgz, tempDir, testScaffold } from '../helpers/packages.js';

const fixture = path.join(repoRoot, 'test', 'fixtures', 'native-addon');
let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-native-');
});
afterAll(async () => {
  await root.remove();
});

describe('native addons', () => {
  it('compiles the root package\'s binding.gyp with node-gyp, ships only what loads, and installs offline without a compiler', async () => {
    const scaffold = await testScaffold(path.join(root.dir, 'work'));
    const events: BuildEvent[] = [];
    const result = await scaffold.run(pack(fixture), {}, { onEvent: (event) => events.push(event) });
    const bundle = path.join(root.dir, 'native-fixture.tgz');
    const files = await saveTgz(result.output, bundle);
    await result.settled;
    const log = events.filter((event) => event.type === 'log').map((event) => (event as { message: string }).message).join('\n');
    expect(log).toContain('gyp info ok');
    expect(result.summary.nativeFiles).toEqual(['build/Release/adder.node']);
    expect(files.has('package/build/Release/adder.node')).toBe(true);
    for (const name of files.keys()) {
      expect(name).not.toMatch(/obj\.target|\/Makefile$|config\.gypi$|\.mk$|node_gyp_bins|\.deps\//);
    }
    const pkg = JSON.parse(files.get('package/package.json')!.content.toString()) as Record<string, unknown>;
    expect(pkg.gypfile).toBe(false);
    // No absolute path of the build machine is left in what ships.
    for (const [name, file] of files) {
      if (!name.endsWith('.node')) expect(file.content.toString('latin1')).not.toContain(root.dir);
    }

    // Install it as a consumer would: offline, empty cache, no compiler on PATH.
    const consumer = path.join(root.dir, 'consumer');
    const installed = await installOffline(bundle, consumer);
    expect(installed.stderr).not.toMatch(/gyp|ERR/);
    const answer = await runInConsumer(consumer, 'console.log(require("native-fixture").add(2, 3))', installed.env);
    expect(answer).toBe('5');
  });

  it('compiles a native dependency, bundles it with its install neutralized, and the consumer loads it without a compiler', async () => {
    // The fixture as a dependency, from a local tarball (the registry path is the same code).
    const addonTgz = path.join(root.dir, 'native-fixture-1.0.0.tgz');
    await pipeline(pack(fixture), createGzip(), createWriteStream(addonTgz));
    // The `file:` dependency's tarball lives in root.dir: the sandbox shows it read-only.
    const scaffold = await testScaffold(path.join(root.dir, 'work-dep'), {}, [], process.env, { readable: [root.dir] });
    const result = await scaffold.run(packageTar({ name: 'uses-native', version: '1.0.0', main: 'index.js', dependencies: { 'native-fixture': `file:${addonTgz}` } }, {
      'index.js': 'module.exports = (a, b) => require("native-fixture").add(a, b);\n',
    }));
    const bundle = path.join(root.dir, 'uses-native.tgz');
    const files = await saveTgz(result.output, bundle);
    await result.settled;
    expect(result.summary.bundledDependencies).toEqual(['native-fixture']);
    expect(result.summary.nativeFiles).toEqual(['node_modules/native-fixture/build/Release/adder.node']);
    const dep = JSON.parse(files.get('package/node_modules/native-fixture/package.json')!.content.toString()) as Record<string, unknown>;
    expect(dep.gypfile).toBe(false);
    expect(files.has('package/node_modules/native-fixture/build/Release/adder.node')).toBe(true);
    const consumer = path.join(root.dir, 'consumer-dep');
    const installed = await installOffline(bundle, consumer);
    expect(await runInConsumer(consumer, 'console.log(require("uses-native")(40, 2))', installed.env)).toBe('42');
  });
});

// Slow-ish: cmake-js and node-addon-api come from the registry; four compiles (~20 s on 2 cores).
describe('build intermediates, per route: two workdirs give the same tar', () => {
  const twice = async (name: string, input: () => Readable) => {
    const [first, second] = await Promise.all([buildSaved(path.join(root.dir, `${name}-a`), input, { readable: [root.dir] }), buildSaved(path.join(root.dir, `${name}-b`, 'nested', 'deeper'), input, { readable: [root.dir] })]);
    expect(buildLeftovers(first.files, [path.join(root.dir, `${name}-a`)])).toEqual([]);
    expect(first.tarSha256).toBe(second.tarSha256);
    return first;
  };

  it('cmake-js: the CMake build tree is dropped, build/Release/*.node kept and loaded', async () => {
    const built = await twice('cmake', () => pack(path.join(repoRoot, 'test', 'fixtures', 'cmake-addon')));
    expect(built.log).toContain('cmake-js');
    expect(built.summary.nativeFiles).toEqual(['build/Release/cmadder.node']);
    const consumer = path.join(root.dir, 'consumer-cmake');
    const installed = await installOffline(built.bundle, consumer);
    expect(await runInConsumer(consumer, 'console.log(require("cmake-fixture").answer)', installed.env)).toBe('42');
  });

  it('node-gyp with node-addon-api in a scoped dependency: Makefiles gyp writes outside build/ are dropped and bundle no phantom package', async () => {
    const addonTgz = path.join(root.dir, 'fx-naa-adder-1.0.0.tgz');
    await pipeline(pack(path.join(repoRoot, 'test', 'fixtures', 'scoped-naa-addon')), createGzip(), createWriteStream(addonTgz));
    const built = await twice('naa', () => packageTar({ name: 'uses-naa', version: '1.0.0', main: 'index.js', dependencies: { '@fx/naa-adder': `file:${addonTgz}` } }, {
      'index.js': 'module.exports = (a, b) => require("@fx/naa-adder").add(a, b);\n',
    }));
    expect(built.summary.bundledDependencies).toEqual(['@fx/naa-adder', 'node-addon-api']);
    expect(built.summary.nativeFiles).toEqual(['node_modules/@fx/naa-adder/build/Release/naa.node']);
    const consumer = path.join(root.dir, 'consumer-naa');
    const installed = await installOffline(built.bundle, consumer);
    expect(await runInConsumer(consumer, 'console.log(require("uses-naa")(40, 2))', installed.env)).toBe('42');
  });
});
