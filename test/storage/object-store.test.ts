import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { isBundleError } from '../../lib/errors.js';
import { DirStore, openStore, parseLocation, validateKey } from '../../lib/storage/index.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    return isBundleError(error) ? error.code : String(error);
  }
  return undefined;
}

describe('validateKey', () => {
  it('accepts relative slash-separated keys', () => {
    for (const key of ['a', 'pkg/1.0.0/pkg-1.0.0-linux-x64-node22.tgz', '@scope/name/x', 'a.b/c..d/..e', 'dots.../x']) {
      expect(validateKey(key)).toBe(key);
    }
  });

  it('refuses keys that could escape or are ambiguous', () => {
    for (const key of ['', '..', '../a', 'a/..', 'a/../b', '.', './a', '/a', 'a//b', 'a/', 'a\\b', '..\\a', 'C:/x', 'a\u0000b', 'a\nb', '.bundle-dispatch/x', 'a/.bundle-dispatch/b', 'x'.repeat(1025)]) {
      expect(codeOf(() => validateKey(key)), key).toBe('ERR_STORE_KEY');
    }
  });
});

describe('parseLocation / openStore', () => {
  it('parses s3 URLs, file URLs and paths', () => {
    expect(parseLocation('s3://my-bucket')).toEqual({ kind: 's3', bucket: 'my-bucket', prefix: '' });
    expect(parseLocation('s3://my-bucket/releases/bundles/')).toEqual({ kind: 's3', bucket: 'my-bucket', prefix: 'releases/bundles' });
    expect(parseLocation('file:///tmp/dist')).toEqual({ kind: 'dir', path: '/tmp/dist' });
    expect(parseLocation('/tmp/dist/')).toEqual({ kind: 'dir', path: '/tmp/dist/' });
    expect(parseLocation('dist', '/work/app')).toEqual({ kind: 'dir', path: '/work/app/dist' });
  });

  it('refuses what it cannot open with ERR_STORE_URL', () => {
    for (const location of ['', 's3://', 's3://UPPER/x', 's3://a/x', 'gs://bucket/x', 'https://example.com/x']) {
      expect(codeOf(() => parseLocation(location, '/cwd')), location).toBe('ERR_STORE_URL');
    }
    expect(codeOf(() => parseLocation('relative/dir'))).toBe('ERR_STORE_URL');
  });

  it('opens directory locations as a DirStore', async () => {
    const store = await openStore('dist', { cwd: '/tmp/bd-open-store', immutable: true });
    expect(store).toBeInstanceOf(DirStore);
    expect(store.location).toBe('file:///tmp/bd-open-store/dist/');
    expect((store as DirStore).immutable).toBe(true);
  });

  it('only the S3 store (lib/storage/s3-store.ts and its signed reads) imports @aws-sdk or aws4, and index.ts loads it lazily', async () => {
    const root = path.resolve(import.meta.dirname, '../../lib');
    const files = (await readdir(root, { recursive: true })).filter((file) => file.endsWith('.ts'));
    for (const file of files) {
      const source = await readFile(path.join(root, file), 'utf8');
      if (!/^storage\/s3[^/]*\.ts$/.test(file)) expect(source, file).not.toMatch(/from ['"](@aws-sdk\/|aws4['"])/);
      if (file.startsWith('storage/') && !file.startsWith('storage/s3')) {
        expect(source, file).not.toMatch(/^import (?!type)[^;]*from '\.\/s3-store\.js'/m);
      }
    }
  });
});
