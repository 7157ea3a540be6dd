/**
 * Hostile install scripts against the sandbox (bubblewrap): one reads the environment and
 * command line of every process it can see through /proc, one reads credential files by
 * absolute path, one writes outside its workdir, one leaves a daemon behind. Each runs through
 * `bundle` as root and as an ordinary user, and through the embedded default (dispatch); the
 * standalone builder's case is in test/builder/hostile.test.ts. Nothing here is faked: real
 * bwrap, real npm, real scripts.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, readFile, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findBlockingAncestor } from '../../lib/workflow/run-as.js';
import { spawnNpm } from '../../lib/workflow/npm.js';
import { createSandbox, unreadableEntries } from '../../lib/workflow/sandbox.js';
import { createBuilderClient } from '../../lib/builder/client.js';
import { isRoot, spawnBuilder, startSourceServer } from '../helpers/builder.js';
import { repoRoot, tempDir, testCacheDir } from '../helpers/packages.js';
import { liveProcessesWith } from '../helpers/processes.js';
import { makeTgz, packageEntries } from '../helpers/tar.js';

const execFileAsync = promisify(execFile);
const NOBODY = 65534;

let root: { dir: string; remove: () => Promise<void> };
/** Values a hostile script must never get hold of. */
const secret = {
  aws: `aws-secret-${randomBytes(12).toString('hex')}`,
  token: `builder-token-${randomBytes(12).toString('hex')}`,
  npm: `npm_${randomBytes(18).toString('hex')}`,
  key: `-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI${randomBytes(16).toString('hex')}\n-----END PRIVATE KEY-----\n`,
};
const marker = `bd-daemon-${randomBytes(6).toString('hex')}`;
/** Where an ordinary user's CLI runs from: the repo, or a hard-linked copy when the repo's path is closed to others. */
let cliRoot = repoRoot;
let home: string;
let outside: string;
let credentialFiles: string[];
/** This machine's /etc/shadow exists and only root may read it (as on any Linux). */
let shadowIsPrivate = false;

beforeAll(async () => {
  root = await tempDir('bd-sandbox-');
  // Passable by the ordinary user of the second case (mkdtemp makes it 0700).
  await chmod(root.dir, 0o755);
  home = path.join(root.dir, 'home');
  outside = path.join(root.dir, 'outside');
  await mkdir(path.join(home, '.aws'), { recursive: true });
  await mkdir(path.join(home, '.ssh'), { recursive: true });
  await mkdir(path.join(home, '.cache', 'bundle-dispatch', 'keys'), { recursive: true });
  await mkdir(outside, { recursive: true });
  await chmod(outside, 0o777);
  const shadow = await stat('/etc/shadow').catch(() => undefined);
  shadowIsPrivate = shadow !== undefined && shadow.size > 0 && (shadow.mode & 0o004) === 0;
  credentialFiles = [
    path.join(home, '.aws', 'credentials'),
    path.join(home, '.npmrc'),
    path.join(home, '.ssh', 'id_ed25519'),
    path.join(home, '.cache', 'bundle-dispatch', 'keys', 'embedded-builder.pem'),
  ];
  await writeFile(credentialFiles[0] as string, `[default]\naws_secret_access_key = ${secret.aws}\n`);
  await writeFile(credentialFiles[1] as string, `//registry.npmjs.org/:_authToken=${secret.npm}\n`);
  await writeFile(credentialFiles[2] as string, secret.key);
  await writeFile(credentialFiles[3] as string, secret.key);
  // A clone in a 0700 directory (mktemp's) cannot be reached by nobody: give it a copy of what
  // the CLI loads, hard-linked (a fraction of a second), in a directory it can pass through.
  if (isRoot && (await findBlockingAncestor(repoRoot))) {
    cliRoot = path.join(root.dir, 'cli');
    await mkdir(cliRoot);
    const parts = ['bin', 'build', 'lib', 'package.json', 'node_modules'].map((name) => path.join(repoRoot, name));
    await execFileAsync('cp', ['-al', ...parts, cliRoot]).catch(() => execFileAsync('cp', ['-a', ...parts, cliRoot]));
  }
});
afterAll(async () => {
  await root?.remove();
  // The unsandboxed cases' scripts write here for real.
  await rm(`/tmp/${marker}`, { force: true });
});

/** The four hostile classes in one install script, each reporting what it got on stdout. */
function hostileScript(): string {
  return [
    'const fs = require("fs");',
    'const { spawn } = require("child_process");',
    'const say = (line) => console.log(line);',
    'for (const [name, value] of Object.entries(process.env)) say(`ENV ${name}=${value}`);',
    'const pids = fs.readdirSync("/proc").filter((name) => /^\\d+$/.test(name));',
    'say(`PIDS ${pids.length}`);',
    'for (const pid of pids) for (const what of ["environ", "cmdline"]) {',
    '  try { say(`PROC ${pid} ${what}: ${fs.readFileSync(`/proc/${pid}/${what}`, "latin1").replace(/\\0/g, " ")}`); } catch (error) { say(`PROC ${pid} ${what}: ${error.code}`); }',
    '}',
    `for (const file of ${JSON.stringify(credentialFiles)}) {`,
    '  try { say(`READ ${file}: ${fs.readFileSync(file, "latin1")}`); } catch (error) { say(`DENIED ${file}: ${error.code}`); }',
    '}',
    // A root-owned secret of the system, readable by root only: the sandbox shows it empty.
    'try { say(`SHADOW ${fs.readFileSync("/etc/shadow").length} bytes`); } catch (error) { say(`SHADOW ${error.code}`); }',
    `for (const file of [${JSON.stringify(path.join(outside, 'pwned'))}, "/tmp/${marker}", process.env.HOME + "/../../../pwned-${marker}"]) {`,
    '  try { fs.writeFileSync(file, "pwned"); say(`WROTE ${file}`); } catch (error) { say(`WRITE DENIED ${file}: ${error.code}`); }',
    '}',
    `const daemon = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)", "${marker}"], { detached: true, stdio: "ignore" });`,
    'daemon.unref();',
    'say(`DAEMON ${daemon.pid}`);',
    'say(`UID ${process.getuid()}`);',
  ].join('\n');
}

async function hostileTgz(dir: string): Promise<string> {
  const file = path.join(dir, 'hostile-6.6.6.tgz');
  await writeFile(file, await makeTgz(packageEntries([{ name: 'package/hostile.js', content: hostileScript() }], { name: 'hostile', version: '6.6.6', scripts: { install: 'node hostile.js' } })));
  await chmod(file, 0o644);
  return file;
}

/** What every case must show: nothing of the machine reached the script, nothing escaped it. */
async function expectContained(output: string, searched: string[]): Promise<void> {
  expect(output).toContain('ENV PATH=');
  expect(output).toMatch(/install scripts run in a bubblewrap sandbox/);
  // Its own PID namespace: bwrap's init, npm, sh, node — and nothing of ours.
  const pids = Number(/PIDS (\d+)/.exec(output)?.[1]);
  expect(pids).toBeGreaterThan(0);
  expect(pids).toBeLessThan(12);
  expect(output).not.toMatch(/PROC \d+ cmdline: .*(bundle-dispatch\.js|vitest)/);
  for (const file of credentialFiles) expect(output).toContain(`DENIED ${file}: ENOENT`);
  // Under /etc, what others may not read is masked (bound to /dev/null, which a mount made in
  // a user namespace cannot open: EACCES): root in the sandbox still owns root's files, and
  // would read them otherwise.
  if (shadowIsPrivate) {
    expect(output).toMatch(/SHADOW (0 bytes|EACCES)/);
    expect(output).not.toMatch(/SHADOW [1-9]\d* bytes/);
  }
  expect(output).toContain(`WRITE DENIED ${path.join(outside, 'pwned')}`);
  expect(await stat(path.join(outside, 'pwned')).catch(() => undefined)).toBeUndefined();
  // /tmp inside is the sandbox's own: the write "works" there and is gone with it.
  expect(await stat(`/tmp/${marker}`).catch(() => undefined)).toBeUndefined();
  // The daemon died with the sandbox.
  const { stdout: processes } = await execFileAsync('ps', ['-eo', 'args']);
  expect(processes).not.toContain(marker);
  for (const text of searched) {
    for (const value of Object.values(secret)) expect(text).not.toContain(value.includes('PRIVATE KEY') ? value.split('\n')[1] : value);
  }
}

/** The CLI as a given user (an ordinary one when `uid` is set), with the secrets in its env. */
function runAs(args: string[], options: { cwd: string; uid?: number; env: NodeJS.ProcessEnv }): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(options.uid !== undefined ? cliRoot : repoRoot, 'bin', 'bundle-dispatch.js'), ...args], {
      cwd: options.cwd,
      env: options.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(options.uid !== undefined ? { uid: options.uid, gid: options.uid } : {}),
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function hostileEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: home,
    CI: 'true',
    AWS_ACCESS_KEY_ID: 'AKIAHOSTILETEST',
    AWS_SECRET_ACCESS_KEY: secret.aws,
    BUNDLE_DISPATCH_BUILDER_TOKENS: secret.token,
    NPM_TOKEN: secret.npm,
    ...extra,
  };
}

async function readAll(dir: string): Promise<string> {
  let text = '';
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true }).catch(() => [])) {
    if (entry.isFile()) text += (await readFile(path.join(entry.parentPath, entry.name))).toString('latin1');
  }
  return text;
}

/** The main command on the embedded default, --verbose, with the secrets in its env; it must deliver. */
async function dispatchHostile(name: string, sandbox: 'required' | 'off', uid?: number): Promise<{ dir: string; cache: string; output: string }> {
  const dir = path.join(root.dir, name);
  const cache = path.join(dir, 'cache');
  await mkdir(cache, { recursive: true });
  const input = await hostileTgz(dir);
  if (uid !== undefined) await execFileAsync('chown', ['-R', `${uid}:${uid}`, dir]);
  const run = await runAs([input, '--verbose', '--sandbox', sandbox, '-t', `linux-${process.arch}@${process.versions.node}`, '--cache-dir', cache, '-d', path.join(dir, 'dist')], {
    cwd: dir, env: hostileEnv({ BUNDLE_DISPATCH_WORK_DIR: path.join(dir, 'work') }), ...(uid !== undefined ? { uid } : {}),
  });
  expect(run.code, run.stderr).toBe(0);
  return { dir, cache, output: `${run.stdout}\n${run.stderr}` };
}

describe('what the sandbox masks under /etc', () => {
  it('lists what others may not read — files without o+r, directories without o+rx (not entered) — depth first, skipping symlinks', async () => {
    const etc = path.join(root.dir, 'etc-like');
    const made = async (file: string, mode: number, content?: string) => {
      const full = path.join(etc, file);
      if (content === undefined) await mkdir(full, { recursive: true });
      else await writeFile(full, content);
      await chmod(full, mode);
    };
    await made('.', 0o755);
    await made('a', 0o755);
    await made('a/public.conf', 0o644, 'x');
    await made('a/secret.key', 0o640, 'x');
    await made('a/b', 0o755);
    await made('a/b/c', 0o711); // others may pass but not list: masked whole
    await made('a/b/open', 0o755);
    await made('a/b/open/token', 0o600, 'x');
    await made('private', 0o750);
    await made('shadow', 0o640, 'x');
    await made('z.conf', 0o444, 'x');
    await symlink(path.join(etc, 'shadow'), path.join(etc, 'a', 'link-to-shadow'));
    const found = await unreadableEntries(etc);
    expect(found.map((file) => path.relative(etc, file)).sort()).toEqual(['a/b/c', 'a/b/open/token', 'a/secret.key', 'private', 'shadow']);
  });
});

describe('the sandbox', () => {
  it('bundle (as this user): the script sees only its own processes, none of the credentials, cannot write outside, leaves no daemon; its secrets reach no output', async () => {
    const dir = path.join(root.dir, 'bundle-self');
    await mkdir(dir, { recursive: true });
    const input = await hostileTgz(dir);
    const run = await runAs(['bundle', input, '--verbose', '--sandbox', 'required', '--node', process.versions.node, '--cache-dir', testCacheDir, '-o', `${dir}/out/`, '--json'], { cwd: dir, env: hostileEnv() });
    expect(run.stderr).toContain('UID ');
    expect(run.code).toBe(0);
    const outcome = JSON.parse(run.stdout) as { file: string; isolation: string; peakMemory: number };
    expect(outcome.isolation).toBe('bubblewrap');
    // npm in the sandbox is counted (its processes are in a session of their own): not bwrap's ~2 MB.
    expect(outcome.peakMemory).toBeGreaterThan(30 * 1024 * 1024);
    await expectContained(run.stderr, [run.stdout, run.stderr, (await readFile(outcome.file)).toString('latin1')]);
  }, 120_000);

  it.runIf(isRoot)('bundle as an ordinary user (nobody): the same containment through user namespaces', async () => {
    const dir = path.join(root.dir, 'bundle-nobody');
    const cache = path.join(dir, 'cache');
    await mkdir(cache, { recursive: true });
    const input = await hostileTgz(dir);
    await chown(dir, NOBODY, NOBODY);
    await chown(cache, NOBODY, NOBODY);
    const run = await runAs(['bundle', input, '--verbose', '--sandbox', 'required', '--node', process.versions.node, '--cache-dir', cache, '-o', `${dir}/out/`, '--json'], {
      cwd: dir, uid: NOBODY, env: hostileEnv({ BUNDLE_DISPATCH_WORK_DIR: path.join(dir, 'work') }),
    });
    expect(run.stderr).toContain(`UID ${NOBODY}`);
    expect(run.code).toBe(0);
    expect((JSON.parse(run.stdout) as { isolation: string }).isolation).toBe('bubblewrap');
    await expectContained(run.stderr, [run.stdout, run.stderr, await readAll(path.join(dir, 'out'))]);
  }, 120_000);

  it('the embedded default (dispatch --verbose): nothing of the dispatching process in the output, the run\'s log copy, the builder store or the bundle', async () => {
    const { dir, cache, output } = await dispatchHostile('dispatch', 'required');
    expect(output).toContain('isolation bubblewrap');
    await expectContained(output, [output, await readAll(cache), await readAll(path.join(dir, 'dist'))]);
  }, 180_000);

  it.runIf(isRoot)('the embedded default run by an ordinary user (nobody): the same containment through user namespaces', async () => {
    const { dir, cache, output } = await dispatchHostile('dispatch-nobody', 'required', NOBODY);
    expect(output).toContain('isolation bubblewrap');
    expect(output).toContain(`UID ${NOBODY}`);
    await expectContained(output, [output, await readAll(cache), await readAll(path.join(dir, 'dist'))]);
  }, 180_000);

  it.runIf(isRoot)('a standalone builder run by an ordinary user (nobody): the same containment; its tokens reach no log, record or store', async () => {
    const dir = path.join(root.dir, 'builder-nobody');
    for (const sub of ['store', 'cache', 'work', 'keys']) await mkdir(path.join(dir, sub), { recursive: true });
    const tokenFile = path.join(dir, 'keys', 'tokens');
    await writeFile(tokenFile, `${secret.token}\n`, { mode: 0o600 });
    await execFileAsync('chown', ['-R', `${NOBODY}:${NOBODY}`, dir]);
    const sources = await startSourceServer();
    const builder = await spawnBuilder(['--store', path.join(dir, 'store'), '--cache-dir', path.join(dir, 'cache'), '--slots', '1', '--token-file', tokenFile, '--sandbox', 'required'], {
      ...hostileEnv({ BUNDLE_DISPATCH_WORK_DIR: path.join(dir, 'work'), BUNDLE_DISPATCH_BUILDER_SIGNING_KEY: path.join(dir, 'keys', 'signing-key.pem') }),
      BUNDLE_DISPATCH_BUILDER_TOKENS: '',
    }, { uid: NOBODY, repo: cliRoot });
    try {
      const client = createBuilderClient({ url: builder.url, token: secret.token });
      expect((await client.health()).isolation).toBe('bubblewrap');
      const source = await readFile(await hostileTgz(dir));
      const { createHash } = await import('node:crypto');
      const sha256 = createHash('sha256').update(source).digest('hex');
      const { id } = await client.createBuild({ source: { url: sources.add('hostile.tgz', source), sha256 }, target: { os: 'linux', cpu: process.arch as 'x64', libc: 'glibc', node: process.versions.node } }, { idempotencyKey: 'hostile-nobody' });
      const record = await client.followBuild(id);
      expect(record.state, JSON.stringify(record.error)).toBe('succeeded');
      expect(record.resolved?.isolation).toBe('bubblewrap');
      const log = (await client.getLog(id)).map((line) => line.message).join('\n');
      expect(log).toContain(`UID ${NOBODY}`);
      await expectContained(log, [log, JSON.stringify(record), await readAll(path.join(dir, 'store'))]);
    } finally {
      builder.child.kill('SIGTERM');
      await builder.exited;
      await sources.stop();
    }
  }, 120_000);

  it('redaction, the second line: with the sandbox off, a script that reads the dispatching process through /proc prints its secrets, and no output, log copy or store keeps them', async () => {
    const { dir, cache, output } = await dispatchHostile('unsandboxed', 'off');
    // Unsandboxed, and said so: the script did see the machine's processes and their environments.
    expect(output).toContain('isolation none');
    expect(output).toMatch(/install scripts ran without a sandbox/);
    expect(output).toMatch(/PROC \d+ environ: .*AWS_SECRET_ACCESS_KEY=\*\*\*/);
    const kept = [output, await readAll(cache), await readAll(path.join(dir, 'dist'))].join('\n');
    for (const value of [secret.aws, secret.token, secret.npm]) expect(kept).not.toContain(value);
    // Unsandboxed, a daemon that left npm's process group outlives the build (docs/sandbox.md): ours goes here.
    await execFileAsync('pkill', ['-f', marker]).catch(() => undefined);
  }, 180_000);

  it('sandbox "required" without bubblewrap fails the build before any script runs, with ERR_SANDBOX_UNAVAILABLE (exit 2) naming what to install', async () => {
    const dir = path.join(root.dir, 'required');
    await mkdir(dir, { recursive: true });
    const input = await hostileTgz(dir);
    // A PATH without bwrap (node and npm stay reachable through their own directory).
    const bin = path.join(dir, 'bin');
    await mkdir(bin);
    await symlink(process.execPath, path.join(bin, 'node'));
    const npmCli = (await execFileAsync('sh', ['-c', 'command -v npm'])).stdout.trim();
    await symlink(npmCli, path.join(bin, 'npm'));
    const run = await runAs(['bundle', input, '--sandbox', 'required', '--node', process.versions.node, '--cache-dir', testCacheDir, '-o', `${dir}/out/`], { cwd: dir, env: hostileEnv({ PATH: bin }) });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('ERR_SANDBOX_UNAVAILABLE');
    expect(run.stderr).toContain('apt-get install bubblewrap');
    expect(run.stderr).not.toContain('UID ');
    expect(await readdir(path.join(dir, 'out')).catch(() => [])).toEqual([]);
  }, 60_000);

  it('a build cancelled while bwrap is still setting its sandbox up leaves no process behind, and stops at once (20 tries at random moments)', async () => {
    const sandbox = createSandbox({ setting: 'required', envPath: process.env.PATH });
    const view = { cwd: root.dir, writable: [root.dir], readable: [] };
    for (let attempt = 0; attempt < 20; attempt += 1) {
      const mark = `${marker}-race-${attempt}`;
      const wrapped = await sandbox.wrap(process.execPath, ['-e', 'setTimeout(() => {}, 60000)', mark], view, undefined, { infoFd: 3 });
      const controller = new AbortController();
      const started = Date.now();
      const running = spawnNpm({ command: wrapped.command, argv: wrapped.args, sandboxInfoFd: 3, cwd: root.dir, env: { PATH: process.env.PATH ?? '' }, signal: controller.signal, secrets: [], onLine: () => undefined,
        onSpawn: () => setTimeout(() => controller.abort(), attempt % 7) });
      await expect(running).rejects.toMatchObject({ code: 'ERR_ABORTED' });
      expect(Date.now() - started).toBeLessThan(4000);
      expect(liveProcessesWith(mark)).toEqual([]);
    }
  }, 120_000);

  it('sandbox "auto" without bubblewrap runs unsandboxed and says so in the outcome', async () => {
    const sandbox = createSandbox({ setting: 'auto', envPath: '/nonexistent' });
    expect(await sandbox.isolation()).toBe('none');
    expect(await sandbox.unavailableReason()).toMatch(/not installed/);
    expect(await sandbox.isolation({ uid: 61000, gid: 61000 })).toBe('build-user');
    expect(await sandbox.wrap('node', ['-e', '1'], { cwd: '/', writable: [], readable: [] })).toEqual({ command: 'node', args: ['-e', '1'] });
    const off = createSandbox({ setting: 'off', envPath: process.env.PATH });
    expect(await off.isolation()).toBe('none');
    expect(await off.unavailableReason()).toBe('sandbox is off');
  });
});
