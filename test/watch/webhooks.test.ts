/**
 * `bundle-dispatch watch --listen` end to end: the real bin, a real git server on loopback
 * (Debian's `git daemon` serving a bare repository that real git pushes tags to), webhooks
 * signed exactly as GitHub signs them (@octokit/webhooks-methods' sign). A webhook only makes
 * the watcher look: it re-reads the refs from the git server itself. Forged, replayed, oversized
 * and foreign deliveries are refused and start nothing.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { sign } from '@octokit/webhooks-methods';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, waitFor } from '../helpers/builder.js';
import { repoRoot, tempDir } from '../helpers/packages.js';

const execFileAsync = promisify(execFile);
const SECRET = 'webhook-secret-for-tests-0123456789';
const STATUS_TOKEN = 'status-token-for-tests-0123456789';
const host = `linux-${process.arch}@${process.versions.node}`;

let root: { dir: string; remove: () => Promise<void> };
let daemon: ChildProcess | undefined;
let watcher: ChildProcess | undefined;
let repoUrl: string;
let work: string;
let stdout = '';
let stderr = '';

const git = (args: string[], cwd: string) => execFileAsync('git', ['-c', 'user.name=Release Bot', '-c', 'user.email=bot@example.test', ...args], { cwd });

/** Commits version `version` of the package and pushes it with the tag v<version>. */
async function release(version: string): Promise<string> {
  await writeFile(path.join(work, 'package.json'), JSON.stringify({ name: 'git-app', version }));
  await writeFile(path.join(work, 'index.js'), `module.exports = '${version}';\n`);
  await git(['add', '-A'], work);
  await git(['commit', '--quiet', '-m', `release ${version}`], work);
  await git(['tag', `v${version}`], work);
  await git(['push', '--quiet', 'origin', 'HEAD:refs/heads/main', `v${version}`], work);
  return (await git(['rev-parse', 'HEAD'], work)).stdout.trim();
}

/** The JSON lines the watcher printed (one per check). */
const checks = () => stdout.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as { entries: Array<{ dispatched: Array<{ version: string }> }> });
const dispatched = () => checks().flatMap((check) => check.entries.flatMap((entry) => entry.dispatched.map((item) => item.version)));

beforeAll(async () => {
  root = await tempDir('bd-webhooks-');
  const repos = path.join(root.dir, 'repos');
  await mkdir(repos, { recursive: true });
  await execFileAsync('git', ['init', '--quiet', '--bare', path.join(repos, 'app.git')]);
  const port = await freePort();
  daemon = spawn('git', ['daemon', '--reuseaddr', `--base-path=${repos}`, '--export-all', '--enable=receive-pack', '--listen=127.0.0.1', `--port=${port}`, repos], { stdio: 'ignore' });
  repoUrl = `git://127.0.0.1:${port}/app.git`;
  work = path.join(root.dir, 'work');
  await mkdir(work);
  await git(['init', '--quiet', '-b', 'main'], work);
  await git(['remote', 'add', 'origin', repoUrl], work);
  await waitFor(async () => (await execFileAsync('git', ['ls-remote', repoUrl]).then(() => true, () => undefined)), 10_000, 100);
}, 60_000);

afterAll(async () => {
  watcher?.kill('SIGKILL');
  daemon?.kill('SIGTERM');
  await root?.remove();
});

describe('bundle-dispatch watch --listen (git daemon, GitHub-signed webhooks)', () => {
  let listenUrl: string;
  const deliver = async (body: string, headers: Record<string, string>) => fetch(`${listenUrl}/hooks/github`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-github-event': 'push', ...headers }, body });
  const payload = (tag: string, url = repoUrl) => JSON.stringify({ ref: `refs/tags/${tag}`, repository: { clone_url: url, html_url: url.replace('git://', 'http://') } });

  it('builds the newest tag at start, then each pushed tag when a signed webhook names the repository', async () => {
    const first = await release('1.0.0');
    watcher = spawn(process.execPath, [path.join(repoRoot, 'bin', 'bundle-dispatch.js'), 'watch', `${repoUrl}#v*`, '--targets', host, '-d', path.join(root.dir, 'dist'), '--cache-dir', path.join(root.dir, 'cache'), '--listen', '127.0.0.1:0', '--interval', '3600', '--json'], {
      cwd: root.dir,
      env: { ...process.env, CI: 'true', BUNDLE_DISPATCH_WEBHOOK_GITHUB_SECRET: SECRET, BUNDLE_DISPATCH_WEBHOOK_GITEA_SECRET: `gitea-${SECRET}`, BUNDLE_DISPATCH_WEBHOOK_GITLAB_SECRET: `gitlab-${SECRET}`, BUNDLE_DISPATCH_WATCH_TOKEN: STATUS_TOKEN },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    watcher.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    watcher.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    listenUrl = await waitFor(() => /listening for webhooks on (http:\/\/\S+)/.exec(stderr)?.[1], 30_000, 50);
    await waitFor(() => (dispatched().length > 0 ? true : undefined), 120_000, 200);
    expect(dispatched()).toEqual([`v1.0.0@${first}`]);

    const second = await release('1.1.0');
    const body = payload('v1.1.0');
    const asked = Date.now();
    const accepted = await deliver(body, { 'x-hub-signature-256': await sign(SECRET, body), 'x-github-delivery': randomUUID() });
    expect(accepted.status).toBe(202);
    expect(Date.now() - asked).toBeLessThan(5000);
    expect(await accepted.json()).toMatchObject({ accepted: true, repository: '127.0.0.1/app' });
    await waitFor(() => (dispatched().length > 1 ? true : undefined), 120_000, 200);
    expect(dispatched()).toEqual([`v1.0.0@${first}`, `v1.1.0@${second}`]);
  }, 240_000);

  it('a forged, an oversized and a foreign delivery are refused (401, 413, 404) and start nothing; a replayed one is a duplicate; health and status answer', async () => {
    const third = await release('1.2.0');
    const checksBefore = checks().length;
    const body = payload('v1.2.0');
    const forged = await deliver(body, { 'x-hub-signature-256': await sign('not-the-secret', body), 'x-github-delivery': randomUUID() });
    expect(forged.status).toBe(401);
    expect(await forged.text()).not.toMatch(/\n\s+at /);
    expect((await deliver(body, { 'x-github-delivery': randomUUID() })).status).toBe(401);
    const huge = JSON.stringify({ ref: 'refs/tags/v1.2.0', repository: { clone_url: repoUrl }, padding: 'x'.repeat(1024 * 1024) });
    expect((await deliver(huge, { 'x-hub-signature-256': await sign(SECRET, huge), 'x-github-delivery': randomUUID() })).status).toBe(413);
    const foreign = payload('v1.2.0', 'git://127.0.0.1:1/other.git');
    expect((await deliver(foreign, { 'x-hub-signature-256': await sign(SECRET, foreign), 'x-github-delivery': randomUUID() })).status).toBe(404);
    // Nothing of that made the watcher look.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(checks().length).toBe(checksBefore);

    const delivery = randomUUID();
    const signed = { 'x-hub-signature-256': await sign(SECRET, body), 'x-github-delivery': delivery };
    expect((await deliver(body, signed)).status).toBe(202);
    const replay = await deliver(body, signed);
    expect(replay.status).toBe(202);
    expect(await replay.json()).toMatchObject({ accepted: false, duplicate: true });
    await waitFor(() => (dispatched().length > 2 ? true : undefined), 120_000, 200);
    expect(dispatched().at(-1)).toBe(`v1.2.0@${third}`);
    expect(dispatched()).toHaveLength(3);

    expect((await fetch(`${listenUrl}/healthz`)).status).toBe(200);
    expect((await fetch(`${listenUrl}/status`)).status).toBe(401);
    const status = await fetch(`${listenUrl}/status`, { headers: { authorization: `Bearer ${STATUS_TOKEN}` } });
    expect(await status.json()).toMatchObject({ entries: [{ input: `${repoUrl}#v*`, newest: `v1.2.0@${third}` }] });

    // A moved tag: v1.2.0 now points at another commit with the same package version. It is a new
    // candidate, built under its commit, and the immutable destination refuses to replace 1.2.0.
    await writeFile(path.join(work, 'index.js'), "module.exports = 'moved';\n");
    await git(['commit', '--quiet', '-am', 'moved'], work);
    await git(['tag', '-f', 'v1.2.0'], work);
    await git(['push', '--quiet', '--force', 'origin', 'v1.2.0'], work);
    const moved = (await git(['rev-parse', 'HEAD'], work)).stdout.trim();
    const movedBody = payload('v1.2.0');
    expect((await deliver(movedBody, { 'x-hub-signature-256': await sign(SECRET, movedBody), 'x-github-delivery': randomUUID() })).status).toBe(202);
    const failedCheck = await waitFor(() => checks().flatMap((check) => check.entries.flatMap((entry) => (entry as { failed?: Array<{ version: string; error: string }> }).failed ?? [])).find((failure) => failure.version === `v1.2.0@${moved}`), 120_000, 200);
    expect(failedCheck.error).toContain('ERR_STORE_EXISTS');
    expect(dispatched()).toHaveLength(3);

    // Gitea/Forgejo (the HMAC in hex, no prefix) and GitLab (the secret token itself).
    const hook = (name: string, headers: Record<string, string>, text = body) => fetch(`${listenUrl}/hooks/${name}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: text });
    const giteaSignature = (await sign(`gitea-${SECRET}`, body)).replace(/^sha256=/, '');
    expect((await hook('gitea', { 'x-gitea-signature': giteaSignature, 'x-gitea-delivery': randomUUID() })).status).toBe(202);
    expect((await hook('gitea', { 'x-gitea-signature': giteaSignature.replace(/^./, (c) => (c === '0' ? '1' : '0')), 'x-gitea-delivery': randomUUID() })).status).toBe(401);
    const gitlabBody = JSON.stringify({ ref: 'refs/tags/v1.2.0', project: { git_http_url: repoUrl } });
    expect((await hook('gitlab', { 'x-gitlab-token': `gitlab-${SECRET}`, 'x-gitlab-event-uuid': randomUUID() }, gitlabBody)).status).toBe(202);
    expect((await hook('gitlab', { 'x-gitlab-token': SECRET, 'x-gitlab-event-uuid': randomUUID() }, gitlabBody)).status).toBe(401);

    watcher?.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => watcher?.on('exit', resolve));
    expect(code).toBe(0);
    expect(stderr).not.toContain(SECRET);
  }, 240_000);
});
