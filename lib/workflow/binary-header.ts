import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import type { TargetCpu } from '../target.js';

/**
 * What a binary's header says about where it runs. Only the bytes that answer these
 * questions are read (file header, program/section headers, the dynamic section and its
 * string table), never the whole file: addons and runtimes are tens of megabytes.
 *
 * @example
 * const header = await readBinaryHeader('node_modules/x/build/Release/x.node');
 * // { format: 'elf', cpu: 'x64', bits: 64, needed: ['libc.so.6', …] }
 */
export interface BinaryHeader {
  format: 'elf' | 'macho' | 'macho-fat' | 'pe' | 'unknown';
  /** Node's spelling of the machine; `other` for a machine Node has no name for. Absent for fat Mach-O (see `cpus`). */
  cpu?: TargetCpu | 'other';
  bits?: 32 | 64;
  /** ELF: byte order (EI_DATA). Every CPU Node runs on Linux is little-endian except s390x. */
  endian?: 'little' | 'big';
  /** ELF: the program interpreter (PT_INTERP), e.g. `/lib64/ld-linux-x86-64.so.2`. Absent for shared objects and static binaries. */
  interpreter?: string;
  /** ELF: DT_NEEDED entries of the dynamic section, e.g. `libc.so.6`. Empty for static binaries. */
  needed?: string[];
  /**
   * ELF: the OS ABI (EI_OSABI) when it names one: `freebsd`, `openbsd`, `netbsd`, `solaris`…;
   * absent for System V (0) and GNU/Linux (3), which is what Linux binaries carry.
   */
  osabi?: string;
  /** Fat Mach-O: every architecture it holds. */
  cpus?: Array<TargetCpu | 'other'>;
}

// Bounds on what a header may make us read: a corrupt or hostile file must not make the
// verifier allocate gigabytes.
const MAX_TABLE_BYTES = 1 << 20;
const MAX_STRING_BYTES = 4096;

const ELF_MACHINES: Record<number, TargetCpu> = {
  3: 'ia32', // EM_386
  62: 'x64', // EM_X86_64
  183: 'arm64', // EM_AARCH64
  40: 'arm', // EM_ARM
  21: 'ppc64', // EM_PPC64
  22: 's390x', // EM_S390
  243: 'riscv64', // EM_RISCV
  258: 'loong64', // EM_LOONGARCH
};

const MACHO_CPUS: Record<number, TargetCpu> = {
  0x01000007: 'x64', // CPU_TYPE_X86_64
  0x0100000c: 'arm64', // CPU_TYPE_ARM64
  7: 'ia32', // CPU_TYPE_X86
  12: 'arm', // CPU_TYPE_ARM
  0x01000012: 'ppc64', // CPU_TYPE_POWERPC64
};

const PE_MACHINES: Record<number, TargetCpu> = {
  0x8664: 'x64', // IMAGE_FILE_MACHINE_AMD64
  0x14c: 'ia32', // IMAGE_FILE_MACHINE_I386
  0xaa64: 'arm64', // IMAGE_FILE_MACHINE_ARM64
  0x1c4: 'arm', // IMAGE_FILE_MACHINE_ARMNT
};

/** Reads the header of the file at `path`; anything that is not ELF, Mach-O or PE is `unknown`. */
export async function readBinaryHeader(path: string): Promise<BinaryHeader> {
  const file = await open(path, 'r');
  try {
    const head = await readAt(file, 0, 64);
    if (head.length >= 16 && head.readUInt32BE(0) === 0x7f454c46) return await readElf(file, head);
    if (head.length >= 8) {
      const be = head.readUInt32BE(0);
      if (be === 0xcafebabe || be === 0xcafebabf) {
        const fat = await readFat(file, head, be === 0xcafebabf);
        if (fat) return fat;
      }
      const thin = readMachO(head);
      if (thin) return thin;
    }
    if (head.length >= 0x40 && head.toString('latin1', 0, 2) === 'MZ') return await readPe(file, head);
    return { format: 'unknown' };
  } finally {
    await file.close();
  }
}

async function readAt(file: FileHandle, position: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  const { bytesRead } = await file.read(buffer, 0, length, position);
  return buffer.subarray(0, bytesRead);
}

/** A little reader over one buffer that knows the file's endianness and word size. */
function fields(buffer: Buffer, littleEndian: boolean, is64: boolean) {
  const u16 = (at: number) => (littleEndian ? buffer.readUInt16LE(at) : buffer.readUInt16BE(at));
  const u32 = (at: number) => (littleEndian ? buffer.readUInt32LE(at) : buffer.readUInt32BE(at));
  const u64 = (at: number) => Number(littleEndian ? buffer.readBigUInt64LE(at) : buffer.readBigUInt64BE(at));
  const word = (at: number) => (is64 ? u64(at) : u32(at));
  return { u16, u32, u64, word };
}

interface Segment {
  type: number;
  offset: number;
  vaddr: number;
  filesz: number;
}

/** EI_OSABI values other than System V (0) and GNU/Linux (3): binaries of another OS. */
const ELF_OS_ABIS: Record<number, string> = { 1: 'hpux', 2: 'netbsd', 6: 'solaris', 7: 'aix', 8: 'irix', 9: 'freebsd', 10: 'tru64', 12: 'openbsd' };

async function readElf(file: FileHandle, head: Buffer): Promise<BinaryHeader> {
  const is64 = head[4] === 2;
  const littleEndian = head[5] !== 2;
  const endian = littleEndian ? 'little' : 'big';
  if (head.length < (is64 ? 64 : 52)) return { format: 'elf', bits: is64 ? 64 : 32, endian };
  const f = fields(head, littleEndian, is64);
  const machine = f.u16(0x12);
  const result: BinaryHeader = { format: 'elf', cpu: ELF_MACHINES[machine] ?? 'other', bits: is64 ? 64 : 32, endian };
  const osabi = ELF_OS_ABIS[head[7] ?? 0];
  if (osabi) result.osabi = osabi;

  const phoff = f.word(is64 ? 0x20 : 0x1c);
  const phentsize = f.u16(is64 ? 0x36 : 0x2a);
  const phnum = f.u16(is64 ? 0x38 : 0x2c);
  const segments: Segment[] = [];
  if (phoff > 0 && phnum > 0 && phentsize * phnum <= MAX_TABLE_BYTES) {
    const table = await readAt(file, phoff, phentsize * phnum);
    const t = fields(table, littleEndian, is64);
    for (let i = 0; i < phnum && (i + 1) * phentsize <= table.length; i++) {
      const at = i * phentsize;
      segments.push(
        is64
          ? { type: t.u32(at), offset: t.u64(at + 8), vaddr: t.u64(at + 16), filesz: t.u64(at + 32) }
          : { type: t.u32(at), offset: t.u32(at + 4), vaddr: t.u32(at + 8), filesz: t.u32(at + 16) },
      );
    }
  }

  const interp = segments.find((s) => s.type === 3); // PT_INTERP
  if (interp) result.interpreter = cString(await readAt(file, interp.offset, Math.min(interp.filesz, MAX_STRING_BYTES)));

  const dynamic = segments.find((s) => s.type === 2); // PT_DYNAMIC
  if (dynamic) {
    result.needed = await readNeeded(file, dynamic.offset, dynamic.filesz, littleEndian, is64, (strtab) => {
      // DT_STRTAB holds a virtual address: map it to a file offset through the PT_LOAD segment that holds it.
      const load = segments.find((s) => s.type === 1 && strtab >= s.vaddr && strtab < s.vaddr + s.filesz);
      return load ? strtab - load.vaddr + load.offset : undefined;
    });
  }
  if (!dynamic || result.needed === undefined) {
    const fromSections = await readNeededFromSections(file, head, littleEndian, is64);
    if (fromSections) result.needed = fromSections;
  }
  result.needed ??= [];
  return result;
}

/** Reads DT_NEEDED names from a dynamic section; undefined when its string table cannot be located. */
async function readNeeded(
  file: FileHandle,
  offset: number,
  size: number,
  littleEndian: boolean,
  is64: boolean,
  strtabOffset: (address: number) => number | undefined,
  strtabFileOffset?: number,
): Promise<string[] | undefined> {
  const entry = is64 ? 16 : 8;
  const table = await readAt(file, offset, Math.min(size, MAX_TABLE_BYTES));
  const t = fields(table, littleEndian, is64);
  const needed: number[] = [];
  let strtab: number | undefined;
  let strsz = MAX_TABLE_BYTES;
  for (let at = 0; at + entry <= table.length; at += entry) {
    const tag = t.word(at);
    const value = t.word(at + entry / 2);
    if (tag === 0) break; // DT_NULL
    if (tag === 1) needed.push(value); // DT_NEEDED
    else if (tag === 5) strtab = value; // DT_STRTAB
    else if (tag === 10) strsz = value; // DT_STRSZ
  }
  if (needed.length === 0) return [];
  const base = strtabFileOffset ?? (strtab === undefined ? undefined : strtabOffset(strtab));
  if (base === undefined) return undefined;
  const strings = await readAt(file, base, Math.min(strsz, MAX_TABLE_BYTES));
  return needed.filter((n) => n < strings.length).map((n) => cString(strings.subarray(n, n + MAX_STRING_BYTES)));
}

/** Fallback through the section headers: SHT_DYNAMIC and the string table its sh_link names. */
async function readNeededFromSections(file: FileHandle, head: Buffer, littleEndian: boolean, is64: boolean): Promise<string[] | undefined> {
  const f = fields(head, littleEndian, is64);
  const shoff = f.word(is64 ? 0x28 : 0x20);
  const shentsize = f.u16(is64 ? 0x3a : 0x2e);
  const shnum = f.u16(is64 ? 0x3c : 0x30);
  if (shoff === 0 || shnum === 0 || shentsize * shnum > MAX_TABLE_BYTES) return undefined;
  const table = await readAt(file, shoff, shentsize * shnum);
  const t = fields(table, littleEndian, is64);
  const section = (i: number) => {
    const at = i * shentsize;
    if (at + shentsize > table.length) return undefined;
    return is64
      ? { type: t.u32(at + 4), offset: t.u64(at + 24), size: t.u64(at + 32), link: t.u32(at + 40) }
      : { type: t.u32(at + 4), offset: t.u32(at + 16), size: t.u32(at + 20), link: t.u32(at + 24) };
  };
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    if (s?.type !== 6) continue; // SHT_DYNAMIC
    const strings = section(s.link);
    if (!strings) return undefined;
    return readNeeded(file, s.offset, s.size, littleEndian, is64, () => undefined, strings.offset);
  }
  return undefined;
}

function readMachO(head: Buffer): BinaryHeader | undefined {
  const le = head.readUInt32LE(0);
  const be = head.readUInt32BE(0);
  let littleEndian: boolean;
  let bits: 32 | 64;
  if (le === 0xfeedface || le === 0xfeedfacf) {
    littleEndian = true;
    bits = le === 0xfeedfacf ? 64 : 32;
  } else if (be === 0xfeedface || be === 0xfeedfacf) {
    littleEndian = false;
    bits = be === 0xfeedfacf ? 64 : 32;
  } else {
    return undefined;
  }
  const cputype = littleEndian ? head.readUInt32LE(4) : head.readUInt32BE(4);
  return { format: 'macho', cpu: MACHO_CPUS[cputype] ?? 'other', bits };
}

async function readFat(file: FileHandle, head: Buffer, is64: boolean): Promise<BinaryHeader | undefined> {
  const count = head.readUInt32BE(4);
  // 0xcafebabe is also a Java class file's magic; there the next word is a class version
  // (≥ 45), while a universal binary holds a handful of architectures.
  if (count === 0 || count > 20) return undefined;
  const size = is64 ? 32 : 20;
  const table = await readAt(file, 8, count * size);
  const cpus: Array<TargetCpu | 'other'> = [];
  for (let i = 0; i < count && (i + 1) * size <= table.length; i++) {
    cpus.push(MACHO_CPUS[table.readUInt32BE(i * size)] ?? 'other');
  }
  return { format: 'macho-fat', cpus };
}

async function readPe(file: FileHandle, head: Buffer): Promise<BinaryHeader> {
  const peOffset = head.readUInt32LE(0x3c);
  const pe = await readAt(file, peOffset, 26);
  if (pe.length < 26 || pe.readUInt32BE(0) !== 0x50450000) return { format: 'unknown' };
  const machine = pe.readUInt16LE(4);
  const magic = pe.readUInt16LE(24); // optional header: 0x10b PE32, 0x20b PE32+
  return { format: 'pe', cpu: PE_MACHINES[machine] ?? 'other', ...(magic === 0x20b ? { bits: 64 as const } : magic === 0x10b ? { bits: 32 as const } : {}) };
}

function cString(buffer: Buffer): string {
  const end = buffer.indexOf(0);
  return buffer.toString('latin1', 0, end === -1 ? buffer.length : end);
}
