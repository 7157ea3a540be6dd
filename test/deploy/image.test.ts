/**
 * deploy/Containerfile and deploy/systemd, without an image builder or a registry (none is
 * reachable here): the image's entrypoint run the way the image runs it (the package's bin, as
 * root, the image's ENV, only a token), its HEALTHCHECK command and the Kubernetes preStop
 * command against that builder; the systemd unit through `systemd-analyze verify`.
 * What differs from the image, and why: the port is 0 (7420 may be taken on a test machine), and
 * the work dir, store and build uids are this file's own (the machine's /var/tmp and
 * /var/lib defaults are test/builder/cli.test.ts's, which may run at the same time).
 */
import { execFile, spawn } from 'node:child_process';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_UID_RANGES, childEnv, isRoot, killChildBuilders, newToken, spawnBuilder, type ChildBuilder } from '../helpers/builder.js';
import { repoRoot, tempDir } from '../helpers/packages.js';
import { loadConfig } from '../../lib/config/load.js';

const execFileAsync = promisify(execFile);
const DEPLOY = path.join(repoRoot, 'deploy');

/** The instructions of a Containerfile, continuation lines joined. */
function instructions(text: string): Array<{ op: string; args: string }> {
  return text.replace(/\\\n/g, ' ').split('\n').map((line) => line.trim()).filter((line) => line && !line.startsWith('#'))
    .map((line) => {
      const [op = '', ...rest] = line.split(/\s+/);
      return { op: op.toUpperCase(), args: rest.join(' ') };
    });
}

/** `ENV A=1 B=2` → { A: '1', B: '2' }. */
function envOf(args: string): Record<string, string> {
  return Object.fromEntries([...args.matchAll(/(\w+)=("[^"]*"|\S+)/g)].map((match) => [match[1] as string, (match[2] as string).replace(/^"|"$/g, '')]));
}

let root: { dir: string; remove: () => Promise<void> };
let containerfile: Array<{ op: string; args: string }>;
const children: ChildBuilder[] = [];
beforeAll(async () => {
  root = await tempDir('bd-image-');
  await chmod(root.dir, 0o711);
  containerfile = instructions(await readFile(path.join(DEPLOY, 'Containerfile'), 'utf8'));
});
afterAll(async () => {
  await killChildBuilders(children);
  await root?.remove();
});

describe('deploy/Containerfile', () => {
  it('installs the project from its packed tarball and runs the package\'s own bin as `builder`, as root', async () => {
    const entrypoint = JSON.parse(containerfile.find((line) => line.op === 'ENTRYPOINT')?.args ?? '[]') as string[];
    const packageJson = JSON.parse(await readFile(path.join(repoRoot, 'package.json'), 'utf8')) as { name: string; bin: Record<string, string> };
    expect(entrypoint).toEqual(['bundle-dispatch', 'builder']);
    expect(Object.keys(packageJson.bin)).toContain(entrypoint[0]);
    expect(containerfile.filter((line) => line.op === 'USER').at(-1)?.args).toBe('root');
    expect(containerfile.find((line) => line.op === 'COPY')?.args).toMatch(new RegExp(`^${packageJson.name}-\\*\\.tgz `));
    expect(containerfile.find((line) => line.op === 'RUN' && line.args.includes('npm install --global'))?.args).toContain(`/tmp/${packageJson.name}-*.tgz`);
    const env = Object.assign({}, ...containerfile.filter((line) => line.op === 'ENV').map((line) => envOf(line.args))) as Record<string, string>;
    expect(containerfile.find((line) => line.op === 'EXPOSE')?.args).toBe(env.BUNDLE_DISPATCH_BUILDER_PORT);
    expect(containerfile.find((line) => line.op === 'VOLUME')?.args).toContain('/var/cache/bundle-dispatch');
  });

  it.runIf(isRoot)('started as the image starts it (root, its ENV, only a token): serves, its HEALTHCHECK passes, the preStop command drains it, SIGTERM exits 0', async () => {
    const env = Object.assign({}, ...containerfile.filter((line) => line.op === 'ENV').map((line) => envOf(line.args))) as Record<string, string>;
    expect(env.BUNDLE_DISPATCH_BUILDER_HOST).toBe('0.0.0.0');
    const token = newToken();
    const tokenFile = path.join(root.dir, 'tokens');
    await writeFile(tokenFile, `# the fleet's tokens\n${token}\n`, { mode: 0o600 });
    await mkdir(path.join(root.dir, 'work'), { recursive: true });
    const base = childEnv({});
    for (const name of Object.keys(base)) if (/^(XDG_|BUNDLE_DISPATCH_)/.test(name)) delete base[name];
    const builder = await spawnBuilder([], {
      ...base, ...env, HOME: '/root',
      BUNDLE_DISPATCH_BUILDER_TOKEN_FILE: tokenFile,
      // The differences from the image (see the top of this file).
      BUNDLE_DISPATCH_BUILDER_PORT: '0',
      BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work'),
      BUNDLE_DISPATCH_BUILDER_STORE: path.join(root.dir, 'store'),
      BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: `${TEST_UID_RANGES.image.first}-${TEST_UID_RANGES.image.last}`,
    });
    children.push(builder);
    const port = new URL(builder.url).port;
    const run = (argv: string[]) => execFileAsync(argv[0] as string, argv.slice(1)).then(() => 0, (error: { code?: number }) => error.code ?? 1);

    const healthcheck = JSON.parse(containerfile.find((line) => line.op === 'HEALTHCHECK')?.args.replace(/^.*?CMD\s+/, '') ?? '[]') as string[];
    expect(healthcheck.join(' ')).toContain('http://127.0.0.1:7420/v1/health/live');
    expect(await run(healthcheck.map((arg) => arg.replace(':7420/', `:${port}/`)))).toBe(0);

    // The Deployment's preStop command, pointed at this builder and its token file.
    const [deployment] = parseAllDocuments(await readFile(path.join(DEPLOY, 'kubernetes', 'builder-linux-x64.yaml'), 'utf8')).map((doc) => doc.toJS() as Record<string, any>).filter((doc) => doc.kind === 'Deployment'); // eslint-disable-line @typescript-eslint/no-explicit-any
    const preStop = (deployment?.spec.template.spec.containers[0].lifecycle.preStop.exec.command as string[])
      .map((arg) => arg.replace('/etc/bundle-dispatch/tokens/tokens', tokenFile).replace(':7420/', `:${port}/`));
    expect(preStop[0]).toBe('node');
    expect((await fetch(`${builder.url}/v1/health/ready`)).status).toBe(200);
    expect(await run([process.execPath, ...preStop.slice(1)])).toBe(0);
    expect((await fetch(`${builder.url}/v1/health/ready`)).status).toBe(503);
    // The HEALTHCHECK is liveness: a draining builder stays healthy.
    expect(await run(healthcheck.map((arg) => arg.replace(':7420/', `:${port}/`)))).toBe(0);

    builder.child.kill('SIGTERM');
    expect((await builder.exited).code).toBe(0);
  }, 60_000);
});

describe('deploy/systemd', () => {
  it('the unit passes systemd-analyze verify (a misspelled directive does not), drains with KillMode=mixed, and waits longer than the drain', async () => {
    const unit = await readFile(path.join(DEPLOY, 'systemd', 'bundle-dispatch-builder.service'), 'utf8');
    const settings = JSON.parse(await readFile(path.join(DEPLOY, 'systemd', 'builder.bundlerc'), 'utf8')) as { builder: { shutdownGrace: number } };
    expect(unit).toMatch(/^ExecStart=\/usr\/local\/bin\/bundle-dispatch builder --config \/etc\/bundle-dispatch\/builder\.bundlerc$/m);
    expect(unit).toMatch(/^KillMode=mixed$/m);
    expect(unit).toMatch(/^KillSignal=SIGTERM$/m);
    expect(unit).toMatch(/^Restart=on-failure$/m);
    expect(unit).toMatch(/^LoadCredential=tokens:/m);
    expect(Number(/^TimeoutStopSec=(\d+)$/m.exec(unit)?.[1])).toBeGreaterThanOrEqual(settings.builder.shutdownGrace + 30);
    // The configuration it names is a valid builder configuration.
    const loaded = await loadConfig({ cwd: root.dir, env: {}, homeDir: root.dir, tmpDir: root.dir, configFile: path.join(DEPLOY, 'systemd', 'builder.bundlerc') });
    expect(loaded.errors).toEqual([]);

    // systemd checks that ExecStart exists: point it at this checkout's bin.
    const verify = async (text: string) => {
      const file = path.join(root.dir, 'bundle-dispatch-builder.service');
      await writeFile(file, text.replaceAll('/usr/local/bin/bundle-dispatch', path.join(repoRoot, 'bin', 'bundle-dispatch.js')));
      const child = spawn('systemd-analyze', ['verify', file], { stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
      child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
      const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
      return { code, output };
    };
    expect(await verify(unit)).toEqual({ code: 0, output: '' });
    const broken = await verify(unit.replace('KillSignal=SIGTERM', 'KillSignal=SIGTREM'));
    expect(broken.output).toContain('SIGTREM');
  });
});
