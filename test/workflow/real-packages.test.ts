// Slow: real packages from the registry, compiled by node-gyp and node-pre-gyp's fallback (~1.5 min on 2 cores).
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BuildEvent } from '../../lib/workflow/types.js';
import { installOffline, runInConsumer } from '../helpers/consumer.js';
import { buildLeftovers, buildSaved, hashingTar, packageTar, saveTgz, tempDir, testScaffold } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-real-');
});
afterAll(async () => {
  await root.remove();
});

describe('real packages', () => {
  it('express (≥ 20 transitive deps) bundles and runs after an offline install without a compiler', async () => {
    const scaffold = await testScaffold(path.join(root.dir, 'work-express'));
    const result = await scaffold.run(packageTar({ name: 'web', version: '1.0.0', main: 'index.js', dependencies: { express: '5.3.0' } }, {
      'index.js': 'const express = require("express"); module.exports = () => typeof express().listen;\n',
    }));
    const bundle = path.join(root.dir, 'web.tgz');
    await saveTgz(result.output, bundle);
    await result.settled;
    expect(result.summary.bundledDependencies.length).toBeGreaterThanOrEqual(20);
    expect(result.summary.bundledDependencies).toContain('express');
    const consumer = path.join(root.dir, 'consumer-express');
    const installed = await installOffline(bundle, consumer);
    expect(await runInConsumer(consumer, 'console.log(require("web")())', installed.env)).toBe('function');
  });

  it('better-sqlite3 compiles with node-gyp, answers a query after an offline install without a compiler, and two workdirs give the same tar', async () => {
    const input = () => packageTar({ name: 'db-app', version: '1.0.0', main: 'index.js', dependencies: { 'better-sqlite3': '12.9.0' } }, {
      'index.js': 'const Database = require("better-sqlite3"); module.exports = () => new Database(":memory:").prepare("select 40 + 2 as answer").get().answer;\n',
    });
    const build = async (workRoot: string) => {
      const scaffold = await testScaffold(workRoot);
      const events: BuildEvent[] = [];
      const result = await scaffold.run(input(), {}, { onEvent: (event) => events.push(event) });
      const hashed = hashingTar(result.output);
      const bundle = path.join(workRoot, '..', `${path.basename(workRoot)}.tgz`);
      const files = await saveTgz(hashed.stream, bundle);
      await result.settled;
      const log = events.filter((event) => event.type === 'log').map((event) => (event as { message: string }).message).join('\n');
      return { result, bundle, files, tarSha256: hashed.digest(), log };
    };
    // Two builds at once, from workdirs at different paths and depths.
    const [first, second] = await Promise.all([build(path.join(root.dir, 'a')), build(path.join(root.dir, 'b', 'nested', 'deeper'))]);
    expect(first.log).toContain('gyp info ok');
    expect(first.result.summary.nativeFiles).toContain('node_modules/better-sqlite3/build/Release/better_sqlite3.node');
    expect(first.tarSha256).toBe(second.tarSha256);
    // prebuild-install's fallback is node-gyp: sqlite3.a (2.5 MB) and build/deps/*.mk go too.
    expect(buildLeftovers(first.files, [path.join(root.dir, 'a')])).toEqual([]);

    const consumer = path.join(root.dir, 'consumer-db');
    const installed = await installOffline(first.bundle, consumer);
    expect(installed.stderr).not.toMatch(/gyp|prebuild-install/);
    expect(await runInConsumer(consumer, 'console.log(require("db-app")())', installed.env)).toBe('42');
  }, 600_000);

  it('bcrypt (node-pre-gyp, compile fallback): build-tmp-napi-v3/ is dropped, lib/binding/napi-v3 kept, and two workdirs give the same tar', async () => {
    const input = () => packageTar({ name: 'pw-app', version: '1.0.0', main: 'index.js', dependencies: { bcrypt: '5.1.1' } }, {
      'index.js': 'const bcrypt = require("bcrypt"); module.exports = () => bcrypt.compareSync("pw", bcrypt.hashSync("pw", 4));\n',
    });
    const [first, second] = await Promise.all([buildSaved(path.join(root.dir, 'bcrypt-a'), input), buildSaved(path.join(root.dir, 'bcrypt-b', 'nested', 'deeper'), input)]);
    expect(first.log).toContain('falling back to source compile with node-gyp');
    expect(first.summary.nativeFiles).toEqual(['node_modules/bcrypt/lib/binding/napi-v3/bcrypt_lib.node']);
    expect(buildLeftovers(first.files, [path.join(root.dir, 'bcrypt-a')])).toEqual([]);
    expect(first.tarSha256).toBe(second.tarSha256);
    const consumer = path.join(root.dir, 'consumer-bcrypt');
    const installed = await installOffline(first.bundle, consumer);
    expect(installed.stderr).not.toMatch(/gyp/);
    expect(await runInConsumer(consumer, 'console.log(require("pw-app")())', installed.env)).toBe('true');
  }, 600_000);
});
