import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, renderExampleConfig } from '../../lib/config/load.js';
import { CONFIG_KEYS } from '../../lib/config/schema.js';
import { repoRoot, tempDir } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-config-');
});
afterAll(async () => {
  await root.remove();
});

const base = () => ({ env: {}, homeDir: '/home/someone', tmpDir: '/tmp' });

describe('loadConfig', () => {
  it('applies defaults < .bundlerc (nearest up the tree) < env < flags, once', async () => {
    const project = path.join(root.dir, 'precedence');
    await mkdir(path.join(project, 'deep', 'er'), { recursive: true });
    await writeFile(path.join(project, '.bundlerc'), JSON.stringify({ registry: 'https://file.example/', keepWorkdir: true, hooks: ['./h.js'], limits: { maxEntries: 5 } }));
    const fromFile = await loadConfig({ ...base(), cwd: path.join(project, 'deep', 'er') });
    expect(fromFile.errors).toEqual([]);
    expect(fromFile.file).toBe(path.join(project, '.bundlerc'));
    expect(fromFile.config.registry).toBe('https://file.example/');
    expect(fromFile.config.keepWorkdir).toBe(true);
    expect(fromFile.config.hooks).toEqual([path.join(project, 'h.js')]);
    expect(fromFile.config.limits).toEqual({ maxBytes: 1024 ** 3, maxEntries: 5 });
    expect(fromFile.config.cacheDir).toBe('/home/someone/.cache/bundle-dispatch');

    const fromEnv = await loadConfig({ ...base(), cwd: project, env: { BUNDLE_DISPATCH_REGISTRY: 'https://env.example/', BUNDLE_DISPATCH_KEEP_WORKDIR: 'false' } });
    expect(fromEnv.config.registry).toBe('https://env.example/');
    expect(fromEnv.config.keepWorkdir).toBe(false);

    const fromFlags = await loadConfig({ ...base(), cwd: project, env: { BUNDLE_DISPATCH_REGISTRY: 'https://env.example/' }, flags: { registry: 'https://flag.example/' } });
    expect(fromFlags.config.registry).toBe('https://flag.example/');
  });

  it('returns every problem with its key path instead of throwing', async () => {
    const project = path.join(root.dir, 'bad');
    await mkdir(project, { recursive: true });
    await writeFile(path.join(project, '.bundlerc'), JSON.stringify({ registry: 'ftp://nope', colour: 'blue', limits: { maxBytes: -1 }, registryTokens: { 'https://x.example/': 'npm_abcdef token' } }));
    const result = await loadConfig({ ...base(), cwd: project, env: { BUNDLE_DISPATCH_KEEP_WORKDIR: 'sometimes' } });
    // Each names the key, the value as written (plain values only) and what is expected.
    expect(result.errors).toEqual(expect.arrayContaining([
      expect.stringContaining('registry: "ftp://nope" must be an http(s) URL'),
      expect.stringMatching(/unknown key "colour"$/),
      expect.stringContaining('limits.maxBytes: -1 must be a positive number'),
      expect.stringContaining('registryTokens: values must be names of environment variables'),
      expect.stringContaining('BUNDLE_DISPATCH_KEEP_WORKDIR: "sometimes" must be true or false'),
    ]));
    expect(result.errors).toHaveLength(5);
    // A token pasted into registryTokens is never echoed back.
    expect(result.errors.join('\n')).not.toContain('npm_abcdef');
  });

  it('says "did you mean" for a misspelt key', async () => {
    const project = path.join(root.dir, 'typo');
    await mkdir(project, { recursive: true });
    await writeFile(path.join(project, '.bundlerc'), JSON.stringify({ dispatch: { concurency: 4 }, cachedir: '/tmp/x', sandbx: 'auto' }));
    const result = await loadConfig({ ...base(), cwd: project, env: {} });
    expect(result.errors).toEqual(expect.arrayContaining([
      expect.stringContaining('unknown key "dispatch.concurency" (did you mean "dispatch.concurrency"?)'),
      expect.stringContaining('unknown key "cachedir" (did you mean "cacheDir"?)'),
      expect.stringContaining('unknown key "sandbx" (did you mean "sandbox"?)'),
    ]));
  });

  it('reports a .bundlerc that is not JSON', async () => {
    const project = path.join(root.dir, 'notjson');
    await mkdir(project, { recursive: true });
    await writeFile(path.join(project, '.bundlerc'), '{ registry: nope');
    const result = await loadConfig({ ...base(), cwd: project });
    expect(result.errors[0]).toContain('is not valid JSON');
  });

  it('the committed .bundlerc.example is what the schema renders, validates, and documents every key', async () => {
    const committed = await readFile(path.join(repoRoot, '.bundlerc.example'), 'utf8');
    expect(committed).toBe(renderExampleConfig());
    const result = await loadConfig({ ...base(), cwd: root.dir, configFile: path.join(repoRoot, '.bundlerc.example') });
    expect(result.errors).toEqual([]);
    const comments = (JSON.parse(committed) as { $comment: string[] }).$comment;
    for (const definition of CONFIG_KEYS) {
      expect(comments.some((line) => line.startsWith(`${definition.key}: `))).toBe(true);
    }
    const readme = await readFile(path.join(repoRoot, 'README.md'), 'utf8');
    for (const definition of CONFIG_KEYS) expect(readme).toContain(`\`${definition.key}\``);
  });
});
