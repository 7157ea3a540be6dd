/**
 * Inputs, the lockfile resolved once, keys, the plan and the lock — without builders.
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBuilderClient } from '../../lib/builder/client.js';
import { isBundleError } from '../../lib/errors.js';
import { isGitUrl, prepareInput, type ToolEnvironment } from '../../lib/dispatch/input.js';
import { buildKey, renderKey, sourceKey } from '../../lib/dispatch/keys.js';
import { acquireLock } from '../../lib/dispatch/lock.js';
import { ensureLockfile } from '../../lib/dispatch/lockfile.js';
import { parseTargets, planTargets, resolvePools } from '../../lib/dispatch/plan.js';
import { keyId } from '../../lib/provenance/keys.js';
import { parseTarget } from '../../lib/target.js';
import { locateNpm } from '../../lib/workflow/npm.js';
import { createSandbox } from '../../lib/workflow/sandbox.js';
import { openInput } from '../../lib/workflow/tar-input.js';
import { writeFixture } from '../helpers/dispatch.js';
import { readTar, repoRoot, tempDir, testCacheDir } from '../helpers/packages.js';

const exec = promisify(execFile);
let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-dispatch-input-');
});
afterAll(async () => {
  await root.remove();
});

function tools(): ToolEnvironment {
  return {
    node: process.execPath,
    npmCli: locateNpm(process.env.PATH),
    env: {
      PATH: process.env.PATH ?? '', HOME: root.dir, npm_config_cache: path.join(testCacheDir, 'npm'), npm_config_update_notifier: 'false',
      GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@example.test', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@example.test',
    },
    secrets: [],
  };
}

async function workDir(name: string): Promise<string> {
  const dir = path.join(root.dir, 'work', name);
  await mkdir(dir, { recursive: true });
  return dir;
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<void> {
  const error = await promise.then(() => undefined, (failure: unknown) => failure);
  expect(isBundleError(error) ? error.code : error).toBe(code);
}

describe('inputs', () => {
  it('a directory is packed with npm pack; the package is inspected', async () => {
    const dir = path.join(root.dir, 'dir-app');
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'dir-app', version: '2.0.0', files: ['index.js'] }));
    await writeFile(path.join(dir, 'index.js'), 'export {};\n');
    const input = await prepareInput(dir, { cwd: root.dir, workDir: await workDir('dir'), tools: tools() });
    expect(input.kind).toBe('directory');
    expect(input.packageJson).toMatchObject({ name: 'dir-app', version: '2.0.0' });
    expect(path.basename(input.tarball)).toBe('dir-app-2.0.0.tgz');
  });

  it('a git URL with #ref is cloned, the ref resolved to the full commit, packed', async () => {
    const repo = path.join(root.dir, 'repo');
    await mkdir(repo, { recursive: true });
    const git = (...args: string[]) => exec('git', args, { cwd: repo, env: { ...process.env, ...tools().env } });
    await git('init', '--quiet');
    await writeFile(path.join(repo, 'package.json'), JSON.stringify({ name: 'git-app', version: '0.1.0' }));
    await git('add', '.');
    await git('commit', '--quiet', '-m', 'one');
    await git('tag', 'v0.1.0');
    const commit = (await git('rev-parse', 'HEAD')).stdout.trim();
    await writeFile(path.join(repo, 'package.json'), JSON.stringify({ name: 'git-app', version: '0.2.0' }));
    await git('commit', '--quiet', '-am', 'two');
    const spec = `git+file://${repo}#v0.1.0`;
    expect(isGitUrl(spec)).toBe(true);
    const input = await prepareInput(spec, { cwd: root.dir, workDir: await workDir('git'), tools: tools() });
    expect(input).toMatchObject({ kind: 'git', commit, packageJson: { name: 'git-app', version: '0.1.0' } });
  });

  it('a git input\'s own prepare script runs in the sandbox: it sees neither this process nor files outside the clone', async () => {
    const repo = path.join(root.dir, 'git-hostile');
    await mkdir(repo, { recursive: true });
    const secretFile = path.join(root.dir, 'git-secret.txt');
    await writeFile(secretFile, 'not for prepare scripts');
    const git = (...args: string[]) => exec('git', args, { cwd: repo, env: { ...process.env, ...tools().env } });
    const prepare = [
      'const fs = require("fs");',
      'const pids = fs.readdirSync("/proc").filter((name) => /^\\d+$/.test(name));',
      `let read; try { read = fs.readFileSync(${JSON.stringify(secretFile)}, "utf8"); } catch (error) { read = error.code; }`,
      'fs.writeFileSync("report.json", JSON.stringify({ pids: pids.length, read }));',
    ].join('\n');
    await writeFile(path.join(repo, 'prepare.js'), prepare);
    await writeFile(path.join(repo, 'package.json'), JSON.stringify({ name: 'git-prepare', version: '1.0.0', scripts: { prepare: 'node prepare.js' } }));
    await git('init', '--quiet');
    await git('add', '.');
    await git('commit', '--quiet', '-m', 'one');
    const input = await prepareInput(`git+file://${repo}`, { cwd: root.dir, workDir: await workDir('git-hostile'), tools: { ...tools(), sandbox: createSandbox({ setting: 'required', envPath: process.env.PATH }) } });
    const report = JSON.parse(await readFile(path.join(input.dir, 'report.json'), 'utf8')) as { pids: number; read: string };
    expect(report.read).toBe('ENOENT');
    expect(report.pids).toBeLessThan(8);
  });

  it('a registry spec is packed with npm pack <spec>', async () => {
    const input = await prepareInput('ms@2.1.3', { cwd: root.dir, workDir: await workDir('registry'), tools: tools() });
    expect(input).toMatchObject({ kind: 'registry', packageJson: { name: 'ms', version: '2.1.3' } });
  });

  it('a registry spec that does not exist says npm\'s cause (E404 and its line), not the tail of its log', async () => {
    const failure = await prepareInput('ms@999.0.0-no-such-version', { cwd: root.dir, workDir: await workDir('registry-404'), tools: tools() }).then(() => undefined, (error: unknown) => error);
    expect(failure).toMatchObject({ code: 'ERR_INPUT_UNREADABLE', details: { npmCode: 'ETARGET' } });
    const message = (failure as Error).message;
    expect(message).toMatch(/^npm pack ms@999\.0\.0-no-such-version failed \(exit 1, ETARGET\):\n {2}(notarget )?No matching version found for ms@999\.0\.0-no-such-version/);
    expect(message).not.toMatch(/complete log of this run/);
  });

  it('bad inputs fail before anything else happens', async () => {
    await expectCode(prepareInput('./missing-1.0.0.tgz', { cwd: root.dir, workDir: await workDir('missing'), tools: tools() }), 'ERR_INPUT_NOT_FOUND');
    const notTar = path.join(root.dir, 'not-a-tar.tgz');
    await writeFile(notTar, 'hello, this is not a tarball at all, not even close to one'.repeat(20));
    await expectCode(prepareInput(notTar, { cwd: root.dir, workDir: await workDir('nottar'), tools: tools() }), 'ERR_INPUT_NOT_TAR');
    const noVersion = await writeFixture(path.join(root.dir, 'noversion.tgz'), { name: 'no-version' });
    await expectCode(prepareInput(noVersion, { cwd: root.dir, workDir: await workDir('noversion'), tools: tools() }), 'ERR_BAD_PACKAGE_JSON');
  });

  it('a name that is not an npm name or a version that is not semver is ERR_PACKAGE_INVALID while inspecting, not ERR_CONFIG from the key template later (issue 15.4)', async () => {
    for (const [file, manifest] of [['escape.tgz', { name: '../../x', version: '1.0.0' }], ['scoped-escape.tgz', { name: '@acme/../../x', version: '1.0.0' }], ['version.tgz', { name: 'fine', version: 'not-semver' }]] as const) {
      const tarball = await writeFixture(path.join(root.dir, file), manifest);
      await expectCode(prepareInput(tarball, { cwd: root.dir, workDir: await workDir(file), tools: tools() }), 'ERR_PACKAGE_INVALID');
    }
    // A valid scoped name still renders the default key.
    const scoped = await prepareInput(await writeFixture(path.join(root.dir, 'scoped.tgz'), { name: '@acme/app', version: '1.0.0-rc.1' }), { cwd: root.dir, workDir: await workDir('scoped'), tools: tools() });
    expect(renderKey('{name}/{version}/{pkgfile}.tgz', { name: scoped.packageJson.name, version: scoped.packageJson.version, sourceSha: scoped.sha256 })).toBe('@acme/app/1.0.0-rc.1/acme-app.tgz');
  });
});

describe('the lockfile, resolved once', () => {
  it('adds npm-shrinkwrap.json resolved by npm and repacks deterministically', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'deps-1.0.0.tgz'), { name: 'deps-fixture', version: '1.0.0', dependencies: { ms: '2.1.3' } });
    const one = await prepareInput(fixture, { cwd: root.dir, workDir: await workDir('lock-1'), tools: tools() });
    const first = await ensureLockfile(one, { tools: tools(), workDir: path.dirname(one.dir) });
    expect(first.lockfile).toMatchObject({ name: 'npm-shrinkwrap.json', added: true });
    const files = await readTar(openInput(first.file));
    const shrinkwrap = JSON.parse(files.get('package/npm-shrinkwrap.json')?.content.toString() ?? '{}') as { packages: Record<string, { version?: string }> };
    expect(shrinkwrap.packages['node_modules/ms']?.version).toBe('2.1.3');
    // Same input, another work dir: byte-identical source, so the build keys match.
    const two = await prepareInput(fixture, { cwd: root.dir, workDir: await workDir('lock-2'), tools: tools() });
    const second = await ensureLockfile(two, { tools: tools(), workDir: path.dirname(two.dir) });
    expect(second.sha256).toBe(first.sha256);
  });

  it('keeps the input as it is when it carries a lockfile', async () => {
    const fixture = await writeFixture(path.join(root.dir, 'locked-1.0.0.tgz'), { name: 'locked-fixture', version: '1.0.0' }, { 'npm-shrinkwrap.json': '{"lockfileVersion":3,"packages":{}}' });
    const input = await prepareInput(fixture, { cwd: root.dir, workDir: await workDir('locked'), tools: tools() });
    const source = await ensureLockfile(input, { tools: tools(), workDir: path.dirname(input.dir) });
    expect(source).toMatchObject({ file: fixture, sha256: input.sha256, lockfile: { added: false, name: 'npm-shrinkwrap.json' } });
  });

  it('the sample app resolves with its dependencies', async () => {
    const input = await prepareInput(path.join(repoRoot, 'examples', 'hello-app-1.0.0.tgz'), { cwd: root.dir, workDir: await workDir('hello'), tools: tools() });
    const source = await ensureLockfile(input, { tools: tools(), workDir: path.dirname(input.dir) });
    const lock = JSON.parse(await readFile(path.join(input.dir, 'npm-shrinkwrap.json'), 'utf8')) as { packages: Record<string, unknown> };
    expect(Object.keys(lock.packages)).toEqual(expect.arrayContaining(['node_modules/ms', 'node_modules/kleur']));
    expect(source.lockfile.added).toBe(true);
  });
});

describe('keys and plan', () => {
  it('the build key covers source, target with its node range, overrides and format version', () => {
    const base = { sourceSha256: 'a'.repeat(64), target: parseTarget('linux-x64@22') };
    const key = buildKey(base);
    expect(key).toMatch(/^[0-9a-f]{64}$/);
    expect(buildKey({ ...base, target: parseTarget('linux-x64-glibc@22') })).toBe(key);
    expect(buildKey({ ...base, target: parseTarget('linux-x64@20') })).not.toBe(key);
    expect(buildKey({ ...base, sourceSha256: 'b'.repeat(64) })).not.toBe(key);
    expect(buildKey({ ...base, overrides: { sourceDateEpoch: 1 } })).not.toBe(key);
    expect(buildKey({ ...base, formatVersion: 2 })).not.toBe(key);
    expect(sourceKey('ab'.repeat(32))).toBe(`sources/ab/${'ab'.repeat(32)}.tgz`);
  });

  it('renders key templates; a missing {commit} is a config error', () => {
    const vars = { name: '@acme/app', version: '1.2.3', file: 'acme-app-1.2.3-linux-x64-glibc-node22.tgz', target: parseTarget('linux-x64'), node: '22.1.0', sourceSha: 'c'.repeat(64) };
    expect(renderKey('{name}/{version}/{file}', vars)).toBe('@acme/app/1.2.3/acme-app-1.2.3-linux-x64-glibc-node22.tgz');
    expect(renderKey('{pkgfile}/{os}-{cpu}-{libc}/node{node}/{sourceSha}.tgz', vars)).toBe(`acme-app/linux-x64-glibc/node22/${'c'.repeat(64)}.tgz`);
    expect(() => renderKey('{name}/{commit}/{file}', vars)).toThrow(/\{commit\} has no value/);
    expect(() => renderKey('{name}/../{file}', vars)).toThrow(/invalid key/);
  });

  it('a target without a pool is refused, listing the configured targets', async () => {
    const client = createBuilderClient({ url: 'http://127.0.0.1:9' });
    const publicKey = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }) as string;
    const pools = await resolvePools({ 'linux-x64': [{ url: 'http://127.0.0.1:9', tokenEnv: 'T', publicKey }] }, { T: 'token' }, () => client);
    expect(pools[0]?.builders[0]?.keys[0]?.keyid).toMatch(/^[0-9a-f]{64}$/);
    expect(planTargets(parseTargets(['linux-x64@22']), pools)[0]?.label).toBe('linux-x64@22');
    expect(() => planTargets(parseTargets(['linux-x64,darwin-arm64']), pools)).toThrow(/No builder for darwin-arm64\. Configured targets: linux-x64/);
    await expect(resolvePools({ 'linux-x64': [{ url: 'http://x', tokenEnv: 'UNSET_TOKEN_VAR', publicKey }] }, {}, () => client)).rejects.toThrow(/UNSET_TOKEN_VAR/);
    await expect(resolvePools({ 'linux-x64': [{ url: 'http://x', publicKey: path.join(root.dir, 'no-such.pub.pem') }] }, {}, () => client)).rejects.toThrow(/publicKey of http:\/\/x/);
  });

  it('a publicKey file with two keys (a signing-key rotation) trusts both; a private key or no PEM in it is refused, naming the file', async () => {
    const client = createBuilderClient({ url: 'http://127.0.0.1:9' });
    const [oldKey, newKey] = [generateKeyPairSync('ed25519'), generateKeyPairSync('ed25519')];
    const file = path.join(root.dir, 'rotating.pub.pem');
    await writeFile(file, `# old key, until the rollout ends\n${oldKey.publicKey.export({ type: 'spki', format: 'pem' }) as string}${newKey.publicKey.export({ type: 'spki', format: 'pem' }) as string}`);
    const pools = await resolvePools({ 'linux-x64': [{ url: 'http://127.0.0.1:9', publicKey: file }] }, {}, () => client);
    expect(pools[0]?.builders[0]?.keys.map((key) => key.keyid)).toEqual([keyId(oldKey.publicKey), keyId(newKey.publicKey)]);
    await writeFile(file, newKey.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
    await expect(resolvePools({ 'linux-x64': [{ url: 'http://x', publicKey: file }] }, {}, () => client)).rejects.toThrow(`${file} is a private key; give the public key.`);
    await writeFile(file, 'not a key\n');
    await expect(resolvePools({ 'linux-x64': [{ url: 'http://x', publicKey: file }] }, {}, () => client)).rejects.toThrow(`${file} is not a PEM public key.`);
  });
});

describe('the lock', () => {
  it('a second run fails with ERR_LOCKED, or waits; a dead owner\'s lock is taken over', async () => {
    const file = path.join(root.dir, 'locks', 'x.lock');
    const held = await acquireLock(file, { runId: 'one', waitMs: 0 });
    await expectCode(acquireLock(file, { runId: 'two', waitMs: 0 }), 'ERR_LOCKED');
    setTimeout(() => void held.release(), 300);
    const waited = await acquireLock(file, { runId: 'three', waitMs: 5000 });
    await waited.release();
    await writeFile(file, JSON.stringify({ pid: 2 ** 22 + 12345, host: (await import('node:os')).hostname(), runId: 'dead', since: '' }));
    const taken = await acquireLock(file, { runId: 'four', waitMs: 0 });
    await taken.release();
  });
});
