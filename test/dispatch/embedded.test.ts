import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { servedTargets } from '../../lib/builder/targets.js';
import { createEmbeddedBuilder, type EmbeddedBuilderOptions } from '../../lib/dispatch/embedded.js';
import { loadOrCreateSigningKey } from '../../lib/provenance/keys.js';
import { DirStore } from '../../lib/storage/dir-store.js';
import { formatTarget, hostTarget, parseTarget } from '../../lib/target.js';
import { resolveToolchains } from '../../lib/workflow/toolchains.js';
import { tempDir } from '../helpers/packages.js';

describe('the embedded default\'s pools', () => {
  let root: { dir: string; remove: () => Promise<void> };
  let options: EmbeddedBuilderOptions;
  beforeAll(async () => {
    root = await tempDir();
    options = {
      signingKey: await loadOrCreateSigningKey(path.join(root.dir, 'key.pem')),
      store: new DirStore({ root: path.join(root.dir, 'store') }),
      workDir: path.join(root.dir, 'work'),
      cacheDir: path.join(root.dir, 'cache'),
      env: process.env,
      defaults: {},
      hooks: [],
      slots: 1,
      runtimes: [],
      version: '0.0.0',
      builderId: 'embedded-test',
    };
  });
  afterAll(() => root.remove());

  const platforms = (builder: ReturnType<typeof createEmbeddedBuilder>) => builder.pools.map((pool) => formatTarget(pool.platform)).sort();
  const host = hostTarget();
  const everything = servedTargets([], host, resolveToolchains({ host, env: process.env })).map((target) => formatTarget(target)).sort();

  it('asked for this machine or a cross target: this machine and the cross targets, no toolchain looked for; the builder not started', () => {
    const builder = createEmbeddedBuilder({ ...options, requested: [host, parseTarget('darwin-arm64')] });
    expect(platforms(builder)).toEqual(servedTargets([], host).map((target) => formatTarget(target)).sort());
    expect(platforms(builder)).toContain(formatTarget(host));
    expect(builder.started).toBe(false);
  });

  it('asked for a target only a toolchain adds, or nothing said: every target this machine serves, toolchains included', () => {
    expect(platforms(createEmbeddedBuilder({ ...options, requested: [parseTarget('linux-arm')] }))).toEqual(everything);
    expect(platforms(createEmbeddedBuilder(options))).toEqual(everything);
  });
});
