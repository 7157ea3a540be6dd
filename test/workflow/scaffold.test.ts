import { chmod, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSandbox } from '../../lib/workflow/sandbox.js';
import { BundleError } from '../../lib/errors.js';
import type { BuildEvent, HookModule } from '../../lib/workflow/types.js';
import { packageTar, readTar, tempDir, testScaffold } from '../helpers/packages.js';
import { liveProcessesWith } from '../helpers/processes.js';


let root: { dir: string; remove: () => Promise<void> };
beforeAll(async () => {
  root = await tempDir('bd-scaffold-');
});
afterAll(async () => {
  await root.remove();
});

const workRoot = () => path.join(root.dir, 'work');

/** The workdirs of builds still on disk (every build must remove its own). */
async function leftoverWorkdirs(): Promise<string[]> {
  return (await readdir(workRoot()).catch(() => [])).filter((name) => name.startsWith('build-'));
}

describe('scaffold.build', () => {
  it('bundles production dependencies (scoped names whole), locks the platform and neutralizes install scripts', async () => {
    const scaffold = await testScaffold(workRoot());
    const events: BuildEvent[] = [];
    const result = await scaffold.run(
      packageTar(
        {
          name: '@acme/app',
          version: '1.2.3',
          engines: { node: '>=18' },
          scripts: { postinstall: 'node -e "require(\'fs\').writeFileSync(\'postinstall-ran\', \'yes\')"', test: 'echo test' },
          dependencies: { ms: '2.1.3', '@types/ms': '0.7.34' },
          devDependencies: { kleur: '4.1.5' },
        },
        { 'index.js': 'module.exports = require("ms")("2 days");\n' },
      ),
      {},
      { onEvent: (event) => events.push(event) },
    );
    const files = await readTar(result.output);
    await result.settled;
    const pkg = JSON.parse(files.get('package/package.json')!.content.toString()) as Record<string, unknown>;
    expect(pkg.bundleDependencies).toEqual(['@types/ms', 'ms']);
    expect(pkg.os).toEqual([process.platform]);
    expect(pkg.cpu).toEqual([process.arch]);
    expect(pkg.libc).toEqual(['glibc']);
    expect((pkg.engines as Record<string, string>).node).toBe(`${process.versions.node.split('.')[0]}.x`);
    expect(pkg.scripts).toEqual({ test: 'echo test' });
    // The root's own install script ran here, under the build; the consumer never runs it again.
    expect(files.get('package/postinstall-ran')?.content.toString()).toBe('yes');
    expect(files.has('package/node_modules/ms/package.json')).toBe(true);
    expect(files.has('package/node_modules/@types/ms/package.json')).toBe(true);
    expect(files.has('package/node_modules/kleur/package.json')).toBe(false);
    expect(files.has('package/package-lock.json')).toBe(false);
    expect(files.has('package/node_modules/.package-lock.json')).toBe(false);
    for (const [name, file] of files) {
      expect(name.startsWith('package/')).toBe(true);
      expect(file.mtime?.toISOString()).toBe('1985-10-26T08:15:00.000Z');
    }
    const names = [...files.keys()];
    expect(names).toEqual([...names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
    const steps = events.filter((event) => event.type === 'step' && event.state === 'finished').map((event) => (event as { step: string }).step);
    expect(steps).toEqual(expect.arrayContaining(['unpack', 'configure', 'runtime', 'install', 'bundle', 'verify', 'pack']));
    expect(events.every((event) => event.buildId === events[0]!.buildId)).toBe(true);
    expect(events.some((event) => event.type === 'log' && event.step === 'install')).toBe(true);
    expect(await leftoverWorkdirs()).toEqual([]);
  });

  it('fires every hook and event in order with the documented arguments, and each change reaches the result', async () => {
    const calls: string[] = [];
    let spawnedPid: number | undefined;
    let completeSummary: { bundledDependencies: string[]; buildId: string } | undefined;
    const hooks: HookModule = {
      'build.defaults': (scaffold, defaults, overrides, status) => {
        calls.push('build.defaults');
        expect(scaffold.defaults.registry).toBe(defaults.registry);
        expect(overrides).toEqual({ env: { FROM_OVERRIDES: '1' } });
        status.log('defaults seen');
        return { ...defaults, env: { ...defaults.env, FROM_DEFAULTS: 'd' } };
      },
      'build.configure': (_scaffold, config, spawn) => {
        calls.push('build.configure');
        expect(config.env).toEqual({ FROM_DEFAULTS: 'd', FROM_OVERRIDES: '1' });
        expect(spawn.runtime).toBeUndefined();
        expect(spawn.dirs.package).toContain(workRoot());
      },
      'npm.configure': (_scaffold, _config, spawn) => {
        calls.push('npm.configure');
        expect(spawn.runtime?.version).toBeTruthy();
        expect(spawn.env.npm_config_nodedir).toBe(spawn.runtime?.nodedir);
        expect(spawn.argv).toContain('install');
        spawn.env.HOOK_VAR = 'set-by-npm.configure';
      },
      'npm.spawned': (_scaffold, child) => {
        calls.push('npm.spawned');
        spawnedPid ??= child.pid;
      },
      'npm.package': (_scaffold, _config, packageJson) => {
        calls.push('npm.package');
        expect(packageJson.bundleDependencies).toEqual(['ms']);
        packageJson.addedByHook = true;
      },
      'build.complete': (_scaffold, _config, summary) => {
        calls.push('build.complete');
        completeSummary = summary;
      },
      'build.output': (_scaffold, _config, _spawn, output) => {
        calls.push('build.output');
        // The caller receives what the last hook returns: here a stream of our own.
        output.resume();
        return Readable.from([Buffer.from('replaced')]);
      },
    };
    const second: HookModule = {
      'build.output': [(_scaffold, _config, _spawn, output: Readable) => {
        calls.push('build.output#2');
        return output;
      }],
    };
    const scaffold = await testScaffold(workRoot(), {}, [hooks, second]);
    const events: BuildEvent[] = [];
    const result = await scaffold.run(
      packageTar({
        name: 'hooked',
        version: '1.0.0',
        scripts: { postinstall: 'node -e "require(\'fs\').writeFileSync(\'hook-var.txt\', String(process.env.HOOK_VAR))"' },
        dependencies: { ms: '2.1.3' },
      }),
      { env: { FROM_OVERRIDES: '1' } },
      { onEvent: (event) => events.push(event) },
    );
    const chunks: Buffer[] = [];
    for await (const chunk of result.output) chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('replaced');
    expect(calls).toEqual([
      'build.defaults', 'build.configure', 'npm.configure', 'npm.spawned', 'npm.spawned', 'npm.package', 'build.complete', 'build.output', 'build.output#2',
    ]);
    expect(spawnedPid).toBeGreaterThan(0);
    expect(completeSummary?.bundledDependencies).toEqual(['ms']);
    expect(completeSummary?.buildId).toBe(result.id);
    expect(events.some((event) => event.type === 'log' && event.step === 'hook' && event.message === 'defaults seen')).toBe(true);
  });

  it('an env var set in npm.configure reaches install scripts, and a field added in npm.package reaches the bundle', async () => {
    const scaffold = await testScaffold(workRoot(), {}, [{
      'npm.configure': (_s, _c, spawn) => {
        spawn.env.HOOK_VAR = 'from-hook';
      },
      'npm.package': (_s, _c, packageJson) => ({ ...packageJson, addedByHook: 'yes' }),
    }]);
    const files = await readTar(await scaffold.build(packageTar({
      name: 'hook-effects',
      version: '1.0.0',
      scripts: { install: 'node -e "require(\'fs\').writeFileSync(\'hook-var.txt\', String(process.env.HOOK_VAR))"' },
    })));
    expect(files.get('package/hook-var.txt')?.content.toString()).toBe('from-hook');
    const pkg = JSON.parse(files.get('package/package.json')!.content.toString()) as Record<string, unknown>;
    expect(pkg.addedByHook).toBe('yes');
    expect(pkg.bundleDependencies).toEqual([]);
  });

  it('a throwing hook fails the build with ERR_HOOK_FAILED and leaves no workdir; a throwing listener does not', async () => {
    const failing = await testScaffold(workRoot(), {}, [{
      'npm.package': function rejectLicense() {
        throw new Error('license not allowed');
      },
    }]);
    const error = await failing.build(packageTar({ name: 'x', version: '1.0.0' })).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(BundleError);
    expect((error as BundleError).code).toBe('ERR_HOOK_FAILED');
    expect((error as BundleError).message).toContain('npm.package');
    expect((error as BundleError).message).toContain('license not allowed');
    expect(await leftoverWorkdirs()).toEqual([]);

    const events: BuildEvent[] = [];
    const tolerant = await testScaffold(workRoot(), {}, [{
      'build.complete': () => {
        throw new Error('listener broke');
      },
    }]);
    const files = await readTar(await tolerant.build(packageTar({ name: 'y', version: '1.0.0' }), {}, { onEvent: (event) => events.push(event) }));
    expect(files.has('package/package.json')).toBe(true);
    expect(events.some((event) => event.type === 'log' && event.message.includes('listener broke'))).toBe(true);
  });

  it('unknown hook names are refused when registered', async () => {
    await expect(testScaffold(workRoot(), {}, [{ 'npm.install': () => undefined } as unknown as HookModule])).rejects.toMatchObject({ code: 'ERR_HOOK_UNKNOWN' });
  });

  it('keeps secrets of the caller away from npm and scripts, and redacts registry tokens from logs', async () => {
    const token = 'npm_SECRETTOKEN1234567890';
    const env = { ...process.env, AWS_SECRET_ACCESS_KEY: 'aws-secret-value-42', BUNDLE_DISPATCH_BUILDER_TOKENS: 'builder-token-99', GITHUB_TOKEN: 'ghp_abcdef' };
    const scaffold = await testScaffold(workRoot(), { auth: { 'https://registry.npmjs.org/': { token } } }, [], env);
    const events: BuildEvent[] = [];
    const files = await readTar(await scaffold.build(packageTar({
      name: 'nosy',
      version: '1.0.0',
      scripts: { postinstall: 'node -e "console.log(JSON.stringify(process.env)); console.log(require(\'fs\').readFileSync(process.env.npm_config_userconfig, \'utf8\'))"' },
      dependencies: { ms: '2.1.3' },
    }), {}, { onEvent: (event) => events.push(event) }));
    const log = events.filter((event) => event.type === 'log').map((event) => (event as { message: string }).message).join('\n');
    expect(log).toContain('"HOME"'); // the script did print its environment
    expect(log).toContain('_authToken=***');
    for (const secret of [token, 'aws-secret-value-42', 'builder-token-99', 'ghp_abcdef']) {
      expect(log).not.toContain(secret);
      for (const file of files.values()) expect(file.content.includes(secret)).toBe(false);
    }
  });

  it('a dependency that does not exist fails with npm\'s own summary', async () => {
    const scaffold = await testScaffold(workRoot());
    const error = await scaffold.build(packageTar({ name: 'broken', version: '1.0.0', dependencies: { 'bundle-dispatch-no-such-package-4242': '1.0.0' } }))
      .catch((caught: unknown) => caught as BundleError);
    expect(error).toBeInstanceOf(BundleError);
    expect((error as BundleError).code).toBe('ERR_NPM_PACKAGE_NOT_FOUND');
    expect((error as BundleError).message).toContain('bundle-dispatch-no-such-package-4242');
    expect(await leftoverWorkdirs()).toEqual([]);
  });

  it('a failing install script fails the build with ERR_NPM_FAILED carrying the script output', async () => {
    const scaffold = await testScaffold(workRoot());
    const error = await scaffold.build(packageTar({ name: 'fails', version: '1.0.0', scripts: { install: 'node -e "console.error(\'kaboom-from-script\'); process.exit(3)"' } }))
      .catch((caught: unknown) => caught as BundleError);
    expect((error as BundleError).code).toBe('ERR_NPM_FAILED');
    expect((error as BundleError).message).toContain('kaboom-from-script');
  });

  it('the abort signal cancels a build and kills npm\'s whole process group', async () => {
    const scaffold = await testScaffold(workRoot());
    const controller = new AbortController();
    // The script and its grandchild carry a marker in their command lines: inside the build's
    // sandbox they have pids of its own PID namespace, not the machine's.
    const marker = `hang-${Date.now()}`;
    const script = [
      'const { spawn } = require("child_process");',
      // A grandchild in the same group, and a long wait: both must be gone after the abort.
      `spawn(process.execPath, ["-e", "setTimeout(() => {}, 120000)", "${marker}-child"], { stdio: "ignore" });`,
      'console.log("STARTED");',
      'setTimeout(() => {}, 120000);',
    ].join('\n');
    let started = false;
    const build = scaffold.build(packageTar({ name: 'slow', version: '1.0.0', scripts: { install: `node hang.js ${marker}` } }, { 'hang.js': script }), {}, {
      signal: controller.signal,
      onEvent: (event) => { if (event.type === 'log' && event.message === 'STARTED') started = true; },
    });
    for (let tries = 0; tries < 600 && !started; tries += 1) await new Promise((resolve) => setTimeout(resolve, 100));
    const live = async () => liveProcessesWith(marker);
    // npm's `sh -c`, the script and its grandchild.
    const before = await live();
    expect(before.some((line) => line.includes(`hang.js ${marker}`))).toBe(true);
    expect(before.some((line) => line.includes(`${marker}-child`))).toBe(true);
    controller.abort();
    await expect(build).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    // The build rejects only once npm's whole group is gone (zombies awaiting their reaper excepted).
    expect(await live()).toEqual([]);
    expect(await leftoverWorkdirs()).toEqual([]);
  });

  it('bad input fails with a coded error before npm runs', async () => {
    const scaffold = await testScaffold(workRoot());
    const events: BuildEvent[] = [];
    await expect(scaffold.build(Readable.from([Buffer.from('this is not a tar archive at all, just text '.repeat(20))]), {}, { onEvent: (event) => events.push(event) }))
      .rejects.toMatchObject({ code: 'ERR_INPUT_NOT_TAR' });
    await expect(scaffold.build(packageTar({ name: 'no-version' }))).rejects.toMatchObject({ code: 'ERR_BAD_PACKAGE_JSON' });
    expect(events.some((event) => event.type === 'step' && event.step === 'install')).toBe(false);
    expect(await leftoverWorkdirs()).toEqual([]);
  });

  it('the same input gives byte-identical bundles from different workdirs', async () => {
    const input = () => packageTar({ name: 'stable', version: '1.0.0', dependencies: { ms: '2.1.3' } }, { 'index.js': 'module.exports = 1;\n', 'bin/cli.js': { content: '#!/usr/bin/env node\n', mode: 0o755 } });
    const a = await testScaffold(path.join(root.dir, 'work-a'));
    const b = await testScaffold(path.join(root.dir, 'work-b', 'deeper', 'path'));
    const collect = async (stream: Readable) => {
      const chunks: Buffer[] = [];
      for await (const chunk of stream) chunks.push(chunk as Buffer);
      return Buffer.concat(chunks);
    };
    const [first, second] = await Promise.all([collect(await a.build(input())), collect(await b.build(input()))]);
    expect(first.length).toBeGreaterThan(1024);
    expect(first.equals(second)).toBe(true);
    const files = await readTar(Readable.from([first]));
    expect(files.get('package/bin/cli.js')?.mode).toBe(0o755);
    expect(files.get('package/index.js')?.mode).toBe(0o644);
  });

  it('a running pack logs its progress as the pack step\'s status lines (every file here, with the interval at 0)', async () => {
    const scaffold = await testScaffold(path.join(root.dir, 'work-progress'), {}, [], process.env, { progressIntervalMs: 0 });
    const events: BuildEvent[] = [];
    const result = await scaffold.run(packageTar({ name: 'progress', version: '1.0.0' }, { 'index.js': 'module.exports = 1;\n', 'data.txt': 'x'.repeat(5000) }), {}, { onEvent: (event) => events.push(event) });
    const files = await readTar(result.output);
    await result.settled;
    const progress = events.flatMap((event) => (event.type === 'log' && event.step === 'pack' && event.data?.kind === 'pack-progress' ? [event] : []));
    expect(progress.length).toBe(files.size);
    expect(progress.at(-1)?.message).toBe(`packed ${files.size} of ${files.size} files (0 MB)`);
    expect(progress.at(-1)?.data).toMatchObject({ files: files.size, totalFiles: files.size, bytes: [...files.values()].reduce((sum, file) => sum + file.content.length, 0) });
    expect(progress.every((event) => event.stream === 'status')).toBe(true);
    // The lines come between the pack step's start and its end.
    const packEvents = events.filter((event) => event.type === 'step' && event.step === 'pack').map((event) => events.indexOf(event));
    expect(events.indexOf(progress[0]!)).toBeGreaterThan(packEvents[0]!);
    expect(events.indexOf(progress.at(-1)!)).toBeLessThan(packEvents[1]!);
  });

  it.runIf(process.getuid?.() === 0)('runAs: npm and install scripts run as the unprivileged user and cannot read root-only files', async () => {
    const secretDir = await tempDir('bd-secret-');
    const secretFile = path.join(secretDir.dir, 'token');
    await writeFile(secretFile, 'root-only-secret', { mode: 0o600 });
    // The build user must be able to reach its workdir (a builder's work root is 0711).
    await chmod(root.dir, 0o711);
    const scaffold = await testScaffold(path.join(root.dir, 'work-runas'));
    const script = [
      'const fs = require("fs");',
      'let read = "unreadable";',
      `try { read = fs.readFileSync(${JSON.stringify(secretFile)}, "utf8"); } catch (error) { read = error.code; }`,
      'fs.writeFileSync("who.json", JSON.stringify({ uid: process.getuid(), read }));',
    ].join('\n');
    const result = await scaffold.run(packageTar({ name: 'who', version: '1.0.0', scripts: { install: 'node who.js' }, dependencies: { ms: '2.1.3' } }, { 'who.js': script }), {}, { runAs: { uid: 65534, gid: 65534 } });
    const files = await readTar(result.output);
    await result.settled;
    // In its sandbox the file does not even exist; without one the build user could not read it.
    expect(JSON.parse(files.get('package/who.json')!.content.toString())).toEqual({ uid: 65534, read: 'ENOENT' });
    const unsandboxed = await testScaffold(path.join(root.dir, 'work-runas-off'), {}, [], process.env, { sandbox: createSandbox({ setting: 'off', envPath: process.env.PATH }) });
    const plain = await unsandboxed.run(packageTar({ name: 'who', version: '1.0.0', scripts: { install: 'node who.js' } }, { 'who.js': script }), {}, { runAs: { uid: 65534, gid: 65534 } });
    const plainFiles = await readTar(plain.output);
    await plain.settled;
    expect(plain.summary.isolation).toBe('build-user');
    expect(JSON.parse(plainFiles.get('package/who.json')!.content.toString())).toEqual({ uid: 65534, read: 'EACCES' });
    expect(files.has('package/node_modules/ms/index.js')).toBe(true);
    // A work dir the build user cannot reach is refused up front, naming the directory.
    const closed = await tempDir('bd-closed-');
    const unreachable = await testScaffold(path.join(closed.dir, 'work'));
    const refused = await unreachable.build(packageTar({ name: 'who', version: '1.0.0' }), {}, { runAs: { uid: 65534, gid: 65534 } }).catch((error: unknown) => error);
    expect(refused).toMatchObject({ code: 'ERR_CONFIG', message: expect.stringContaining(`cannot be reached by the build user (uid 65534): ${closed.dir} itself has mode 0700 (owner uid 0)`) });
    await closed.remove();
    await secretDir.remove();
  });

  it('one scaffold runs builds concurrently, each in its own workdir; keepWorkdir keeps one for debugging', async () => {
    const shared = path.join(root.dir, 'work-concurrent');
    const scaffold = await testScaffold(shared);
    const inputs = ['one', 'two', 'three'].map((name) => packageTar({ name, version: '1.0.0', dependencies: { ms: '2.1.3' } }, { 'id.txt': name }));
    const results = await Promise.all(inputs.map((input, index) => scaffold.run(input, index === 2 ? { keepWorkdir: true } : {})));
    expect(new Set(results.map((result) => result.id)).size).toBe(3);
    const contents = await Promise.all(results.map(async (result) => (await readTar(result.output)).get('package/id.txt')?.content.toString()));
    expect(contents).toEqual(['one', 'two', 'three']);
    await Promise.all(results.map((result) => result.settled));
    const left = (await readdir(shared)).filter((name) => name.startsWith('build-'));
    expect(left).toHaveLength(1);
    expect(JSON.parse(await readFile(path.join(shared, left[0]!, 'package', 'package.json'), 'utf8'))).toMatchObject({ name: 'three' });
  });
});
