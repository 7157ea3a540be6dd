import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { repoRoot, tempDir } from '../helpers/packages.js';

// What a command loads is its start-up time: --version and --help must not pay for the
// builder's server (fastify), the AWS SDK, got, listr2, semver or the workflow.
const HEAVY = ['@aws-sdk', 'fastify', 'got', 'listr2', 'semver', 'tar-stream'];
const recorder = pathToFileURL(path.join(repoRoot, 'test', 'helpers', 'record-imports.mjs')).href;

let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-startup-');
});
afterAll(async () => {
  await root.remove();
});

async function loaded(args: string[], name: string): Promise<{ code: number | null; stdout: string; modules: string[] }> {
  const file = path.join(root.dir, `${name}.txt`);
  const run = await runCli(args, { cwd: root.dir, env: { NODE_OPTIONS: `--import ${recorder}`, RECORD_IMPORTS: file } });
  const modules = (await readFile(file, 'utf8').catch(() => '')).split('\n').filter(Boolean);
  return { code: run.code, stdout: run.stdout, modules };
}

const packagesOf = (modules: string[]) => new Set(modules.flatMap((url) => {
  const match = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  return match?.[1] ? [match[1]] : [];
}));
const heavyIn = (modules: string[]) => [...packagesOf(modules)].filter((name) => HEAVY.some((heavy) => name === heavy || name.startsWith(`${heavy}/`)));
const ownModules = (modules: string[]) => modules.filter((url) => url.includes('/build/lib/')).map((url) => url.replace(/.*\/build\/lib\//, ''));

describe('start-up: what each command loads', () => {
  it('--version loads neither yargs nor any command, and prints the package version', async () => {
    const run = await loaded(['--version'], 'version');
    expect(run.code).toBe(0);
    const { version } = JSON.parse(await readFile(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
    expect(run.stdout).toBe(`${version}\n`);
    expect(run.modules.length).toBeGreaterThan(0);
    expect([...packagesOf(run.modules)]).toEqual([]);
    expect(ownModules(run.modules).filter((file) => /^(workflow|builder|dispatch|storage|provenance)\//.test(file))).toEqual([]);
  });

  it.each([[['--help']], [['bundle', '--help']], [['builder', '--help']], [['verify', '--help']], [['status', '--help']], [['runs', '--help']], [['logs', '--help']], [['cancel', '--help']], [['prune', '--help']]])('%j loads yargs and the command table only, and lists the command\'s flags', async (args) => {
    const run = await loaded(args, args.join('-'));
    expect(run.code).toBe(0);
    expect(packagesOf(run.modules).has('yargs')).toBe(true);
    expect(heavyIn(run.modules)).toEqual([]);
    expect(ownModules(run.modules).filter((file) => /^(workflow|builder|dispatch|storage|provenance)\//.test(file))).toEqual([]);
    expect(run.stdout).toContain('Show help');
  });

  it('top-level --help still lists every command and the default command\'s flags', async () => {
    const run = await loaded(['--help'], 'help-full');
    for (const command of ['bundle <input>', 'builder', 'dispatch <input>', 'status [run]', 'runs', 'logs <run>', 'cancel <run>', 'prune', 'verify <bundle>']) expect(run.stdout).toContain(`bundle-dispatch ${command}`);
    for (const flag of ['--targets', '--destination', '--wait-lock', '--notify', '--cache-dir']) expect(run.stdout).toContain(flag);
  });

  it('bundle on a bad input loads the workflow but not the builder\'s server, the AWS SDK, got or listr2', async () => {
    const run = await loaded(['bundle', path.join(root.dir, 'missing.tgz'), '--json'], 'bundle-missing');
    expect(run.code).toBe(2);
    expect(JSON.parse(run.stdout)).toMatchObject({ error: { code: 'ERR_INPUT_NOT_FOUND' } });
    expect(heavyIn(run.modules).filter((name) => name !== 'semver' && name !== 'tar-stream')).toEqual([]);
  });
});

describe('the CLI\'s modules', () => {
  it('have no import circle through main.ts: no module imports it (the bin does), commands take CliContext from context.ts', async () => {
    const { readdir } = await import('node:fs/promises');
    const files = (await readdir(path.join(repoRoot, 'lib'), { recursive: true })).filter((file) => file.endsWith('.ts'));
    const importers: string[] = [];
    for (const file of files) {
      const text = await readFile(path.join(repoRoot, 'lib', file), 'utf8');
      if (/from '\.\/main\.js'|from '\.\.\/cli\/main\.js'|import\('\.\/main\.js'\)/.test(text)) importers.push(file);
    }
    expect(importers).toEqual([]);
  });
});
