import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BundleError, abortError, toBundleError } from '../lib/errors.js';
import { redact } from '../lib/redact.js';
import { repoRoot } from './helpers/packages.js';

describe('errors', () => {
  it('every error code is documented in docs/errors.md', async () => {
    const source = await readFile(path.join(repoRoot, 'lib', 'errors.ts'), 'utf8');
    const codes = [...new Set(source.match(/'ERR_[A-Z_]+'/g)?.map((code) => code.slice(1, -1)))];
    expect(codes.length).toBeGreaterThan(20);
    const docs = await readFile(path.join(repoRoot, 'docs', 'errors.md'), 'utf8');
    for (const code of codes) expect(docs).toContain(`| \`${code}\` |`);
  });

  it('tells a timeout from a cancel by the abort reason', () => {
    expect(abortError(AbortSignal.abort()).code).toBe('ERR_ABORTED');
    const timedOut = new AbortController();
    timedOut.abort(new DOMException('time', 'TimeoutError'));
    expect(abortError(timedOut.signal).code).toBe('ERR_BUILD_TIMEOUT');
    expect(toBundleError(new Error('boom')).code).toBe('ERR_INTERNAL');
    const coded = new BundleError('ERR_NPM_FAILED', 'x');
    expect(toBundleError(coded)).toBe(coded);
  });

  it('redacts tokens, URL credentials, presigned signatures and auth lines', () => {
    const text = [
      'token npm_abcdefgh123 in a line',
      'https://user:hunter2@registry.example/',
      'https://b.s3.example/k?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA%2Fx&x=1',
      '//registry.npmjs.org/:_authToken=npm_zzz',
      'Authorization: Bearer abc.def',
    ].join('\n');
    const out = redact(text, ['npm_abcdefgh123']);
    for (const secret of ['npm_abcdefgh123', 'hunter2', 'deadbeef', 'AKIA', 'npm_zzz', 'abc.def']) expect(out).not.toContain(secret);
    expect(out).toContain('x=1');
  });
});
