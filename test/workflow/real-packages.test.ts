// Slow: real packages from the registry, one of them compiled by node-gyp (~1 min on 2 cores).
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BuildEvent } from '../../lib/workflow/types.js';
import { installOffline, runInConsumer } from '../helpers/consumer.js';
import { packageTar, saveTgz, tempDir, testScaffold } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-real-');
});
afterAll(async () => {
  await root.remove();
});

/** Hashes the uncompressed tar as it streams past. */
function hashing(stream: Readable): { stream: Readable; digest: () => string } {
  const hash = createHash('sha256');
  stream.on('data', (chunk: Buffer) => hash.update(chunk));
  return { stream, digest: () => hash.digest('hex') };
}

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
      const hashed = hashing(result.output);
      const bundle = path.join(workRoot, '..', `${path.basename(workRoot)}.tgz`);
      await saveTgz(hashed.stream, bundle);
      await result.settled;
      const log = events.filter((event) => event.type === 'log').map((event) => (event as { message: string }).message).join('\n');
      return { result, bundle, tarSha256: hashed.digest(), log };
    };
    // Two builds at once, from workdirs at different paths and depths.
    const [first, second] = await Promise.all([build(path.join(root.dir, 'a')), build(path.join(root.dir, 'b', 'nested', 'deeper'))]);
    expect(first.log).toContain('gyp info ok');
    expect(first.result.summary.nativeFiles).toContain('node_modules/better-sqlite3/build/Release/better_sqlite3.node');
    expect(first.tarSha256).toBe(second.tarSha256);

    const consumer = path.join(root.dir, 'consumer-db');
    const installed = await installOffline(first.bundle, consumer);
    expect(installed.stderr).not.toMatch(/gyp|prebuild-install/);
    expect(await runInConsumer(consumer, 'console.log(require("db-app")())', installed.env)).toBe('42');
  }, 600_000);
});
