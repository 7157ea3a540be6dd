import { chmod, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBuilderClient } from '../../lib/builder/client.js';
import { TEST_UID_RANGES, childEnv, hostTargetSpec, isRoot, newToken, spawnBuilder, startSourceServer, tgz, type ChildBuilder, type SourceServer } from '../helpers/builder.js';
import { packageTar, readTar, tempDir, testCacheDir } from '../helpers/packages.js';

let root: { dir: string; remove: () => Promise<void> };
let secrets: { dir: string; remove: () => Promise<void> };
let sources: SourceServer;
let builder: ChildBuilder | undefined;
const envToken = newToken();
const fileToken = newToken();

beforeAll(async () => {
  root = await tempDir('bd-hostile-');
  secrets = await tempDir('bd-hostile-secret-');
  await chmod(root.dir, 0o711);
  await mkdir(path.join(root.dir, 'work'), { recursive: true });
  sources = await startSourceServer();
});
afterAll(async () => {
  if (builder && builder.child.exitCode === null && builder.child.signalCode === null) {
    builder.child.kill('SIGTERM');
    await builder.exited;
  }
  await sources?.stop();
  await root?.remove();
  await secrets?.remove();
});

async function readAll(dir: string): Promise<string> {
  let text = '';
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) text += (await readFile(path.join(entry.parentPath, entry.name))).toString('latin1');
  }
  return text;
}

describe('a hostile package', () => {
  it('cannot see the builder\'s tokens: not in its env, not from the token file or /proc; nowhere in logs, records or output', async () => {
    const tokenFile = path.join(secrets.dir, 'tokens');
    await writeFile(tokenFile, `# builder tokens\n${fileToken}\n`, { mode: 0o600 });
    builder = await spawnBuilder(['--store', path.join(root.dir, 'store'), '--cache-dir', testCacheDir, '--slots', '1', '--token-file', tokenFile], childEnv({
      BUNDLE_DISPATCH_BUILDER_TOKENS: envToken,
      BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work'),
      BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: `${TEST_UID_RANGES.hostile.first}-${TEST_UID_RANGES.hostile.last}`,
      AWS_SECRET_ACCESS_KEY: 'hostile-test-aws-secret-value',
    }));
    const client = createBuilderClient({ url: builder.url, token: fileToken });
    const steal = [
      'const fs = require("fs");',
      'const loot = [];',
      'for (const [name, value] of Object.entries(process.env)) loot.push(`ENV ${name}=${value}`);',
      `for (const file of [${JSON.stringify(tokenFile)}, "/proc/" + process.ppid + "/environ"]) {`,
      '  try { loot.push(`READ ${file}: ${fs.readFileSync(file, "latin1")}`); } catch (error) { loot.push(`DENIED ${file}: ${error.code}`); }',
      '}',
      'for (const pid of fs.readdirSync("/proc").filter((name) => /^\\d+$/.test(name))) {',
      '  for (const what of ["environ", "cmdline"]) {',
      '    try { const text = fs.readFileSync(`/proc/${pid}/${what}`, "latin1"); if (text) loot.push(`PROC ${pid} ${what}: ${text}`); } catch {}',
      '  }',
      '}',
      'fs.writeFileSync("loot.txt", loot.join("\\n"));',
      'for (const line of loot) console.log(line);',
      'console.log(`UID ${process.getuid()}`);',
    ].join('\n');
    const source = await tgz(packageTar({ name: 'hostile', version: '6.6.6', scripts: { install: 'node steal.js' } }, { 'steal.js': steal }));
    const { id } = await client.createBuild({ source: { url: sources.add('hostile.tgz', source.body), sha256: source.sha256 }, target: hostTargetSpec() }, { idempotencyKey: 'hostile' });
    const record = await client.followBuild(id);
    expect(record.error).toBeUndefined();
    expect(record.state).toBe('succeeded');

    const log = (await client.getLog(id)).map((line) => line.message).join('\n');
    expect(log).toContain('ENV PATH=');
    if (isRoot) {
      expect(log).toMatch(new RegExp(`UID ${TEST_UID_RANGES.hostile.first}`));
      expect(log).toContain(`DENIED ${tokenFile}: EACCES`);
    }
    expect(log).not.toContain('BUNDLE_DISPATCH_BUILDER_TOKENS');
    expect(log).not.toContain('hostile-test-aws-secret-value');

    const artifact = path.join(root.dir, 'artifact.tgz');
    await client.downloadArtifact(id, artifact);
    const files = await readTar(Readable.from([gunzipSync(await readFile(artifact))]));
    expect(files.get('package/loot.txt')?.content.toString()).toContain('ENV PATH=');

    // Stop the builder so its last writes are on disk, then search everything it produced.
    builder.child.kill('SIGTERM');
    expect((await builder.exited).code).toBe(0);
    const everything = [
      log,
      JSON.stringify(record),
      await readAll(path.join(root.dir, 'store')),
      gunzipSync(await readFile(artifact)).toString('latin1'),
      builder.stdout(),
      builder.stderr(),
    ].join('\n');
    for (const token of [envToken, fileToken]) expect(everything).not.toContain(token);
    expect(everything).not.toContain('hostile-test-aws-secret-value');
  }, 120_000);
});
