import { describe, expect, it } from 'vitest';
import { hostTarget } from '../lib/target.js';

describe('hostTarget', () => {
  it.runIf(process.platform === 'linux')('names the C library Node\'s own report names (read from ldd, without making the report)', () => {
    const report = process.report.getReport() as { header?: { glibcVersionRuntime?: string } };
    expect(hostTarget()).toEqual({ os: 'linux', cpu: process.arch, libc: report.header?.glibcVersionRuntime ? 'glibc' : 'musl' });
  });

  it('is asked once, and a caller changing its copy changes no other', () => {
    const first = hostTarget();
    first.cpu = 's390x';
    expect(hostTarget().cpu).toBe(process.arch);
  });
});
