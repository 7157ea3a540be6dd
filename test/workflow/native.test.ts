import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pack } from '../../lib/workflow/steps/pack.js';
import type { BuildEvent } from '../../lib/workflow/types.js';
import { installOffline, runInConsumer } from '../helpers/consumer.js';
import { readTar, repoRoot, tempDir, testScaffold } from '../helpers/packages.js';

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
    const hash = createHash('sha256');
    const files = await readTar(result.output.on('data', (chunk: Buffer) => hash.update(chunk)));
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

    // Write it as a .tgz and install it as a consumer would: offline, empty cache, no compiler.
    const { Readable } = await import('node:stream');
    const { pack: tarPack } = await import('tar-stream');
    const tar = tarPack();
    for (const [name, file] of files) tar.entry({ name, mode: file.mode, mtime: file.mtime }, file.content);
    tar.finalize();
    await pipeline(tar as unknown as InstanceType<typeof Readable>, createGzip(), createWriteStream(bundle));
    const consumer = path.join(root.dir, 'consumer');
    const installed = await installOffline(bundle, consumer);
    expect(installed.stderr).not.toMatch(/gyp|ERR/);
    const answer = await runInConsumer(consumer, 'console.log(require("native-fixture").add(2, 3))', installed.env);
    expect(answer).toBe('5');
  });
});
