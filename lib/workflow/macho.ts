/**
 * macOS binaries (Mach-O) verified by their structure, since nothing on Linux can run them:
 * for the target's cpu slice (a universal binary's too), the file type, the minimum macOS it
 * asks for, the libraries it loads, its code signature (every page hash recomputed; arm64 macOS
 * refuses unsigned code) and every symbol it leaves to Node (each must be one the target Node
 * exports). What this proves and what it cannot: docs/runtimes.md, "verified by structure".
 */
import { createHash } from 'node:crypto';
import { access, open, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { TargetCpu } from '../target.js';

const MH_MAGIC_64 = 0xfeedfacf;
const FAT_MAGIC = 0xcafebabe;
const FAT_MAGIC_64 = 0xcafebabf;
const CPU_TYPES: Record<number, TargetCpu> = { 0x01000007: 'x64', 0x0100000c: 'arm64' };
const FILE_TYPES: Record<number, string> = { 1: 'object', 2: 'executable', 6: 'dylib', 8: 'bundle' };

const LC_SYMTAB = 0x2;
const LC_LOAD_DYLIB = 0xc;
const LC_CODE_SIGNATURE = 0x1d;
const LC_LAZY_LOAD_DYLIB = 0x20;
const LC_VERSION_MIN_MACOSX = 0x24;
const LC_BUILD_VERSION = 0x32;
const LC_RPATH = 0x8000001c;
const LC_DYLD_CHAINED_FIXUPS = 0x80000034;
const LC_DYLD_INFO = 0x22;
const LC_DYLD_INFO_ONLY = 0x80000022;
const DYLIB_COMMANDS = new Set([LC_LOAD_DYLIB, 0x80000018 /* weak */, 0x8000001f /* reexport */, LC_LAZY_LOAD_DYLIB, 0x80000023 /* upward */]);
/** MH_TWOLEVEL: each undefined symbol names the library (ordinal) it comes from. */
const MH_TWOLEVEL = 0x80;
/** Library ordinal of a symbol looked up at run time in whatever loaded the bundle: Node. */
const DYNAMIC_LOOKUP_ORDINAL = 0xfe;
const EXECUTABLE_ORDINAL = 0xff;

const CSMAGIC_EMBEDDED_SIGNATURE = 0xfade0cc0;
const CSMAGIC_CODEDIRECTORY = 0xfade0c02;
const HASHES: Record<number, { algorithm: string; size: number }> = { 1: { algorithm: 'sha1', size: 20 }, 2: { algorithm: 'sha256', size: 32 }, 3: { algorithm: 'sha256', size: 20 }, 4: { algorithm: 'sha384', size: 48 } };

/** One architecture of a Mach-O file, as its load commands describe it. */
export interface MachOSlice {
  cpu: TargetCpu | 'other';
  /** `bundle` (what an addon is), `dylib`, `executable`, … */
  fileType: string;
  /** LC_BUILD_VERSION's or LC_VERSION_MIN_MACOSX's minimum macOS, `11.0`. */
  minOs?: string;
  /** Libraries it loads, in load order (a symbol's ordinal counts from 1 in this list). */
  dylibs: string[];
  rpaths: string[];
  /** Undefined external symbols and where they are looked up: a library, or `dynamic` (whatever loaded it: Node). */
  imports: Array<{ name: string; from: string }>;
  /** Absent when unsigned; `problem` when the signature does not match the file. */
  signature?: { hashType: string; pages: number; problem?: string };
}

/** The slices of a Mach-O file (one, or each of a universal binary); undefined when it is not Mach-O. */
export async function readMachO(file: string): Promise<MachOSlice[] | undefined> {
  const bytes = await readFile(file);
  if (bytes.length < 32) return undefined;
  const magic = bytes.readUInt32BE(0);
  if (magic === FAT_MAGIC || magic === FAT_MAGIC_64) {
    const count = bytes.readUInt32BE(4);
    if (count === 0 || count > 20) return undefined; // a Java class file shares the magic
    const slices: MachOSlice[] = [];
    const width = magic === FAT_MAGIC_64 ? 32 : 20;
    for (let index = 0; index < count; index += 1) {
      const at = 8 + index * width;
      const offset = magic === FAT_MAGIC_64 ? Number(bytes.readBigUInt64BE(at + 8)) : bytes.readUInt32BE(at + 8);
      const size = magic === FAT_MAGIC_64 ? Number(bytes.readBigUInt64BE(at + 16)) : bytes.readUInt32BE(at + 12);
      const slice = readSlice(bytes.subarray(offset, offset + size));
      if (slice) slices.push(slice);
    }
    return slices;
  }
  const slice = readSlice(bytes);
  return slice ? [slice] : undefined;
}

/** One thin 64-bit little-endian Mach-O (arm64 and x86_64 both are). */
function readSlice(bytes: Buffer): MachOSlice | undefined {
  if (bytes.length < 32 || bytes.readUInt32LE(0) !== MH_MAGIC_64) return undefined;
  const cpu = CPU_TYPES[bytes.readUInt32LE(4)] ?? 'other';
  const fileType = FILE_TYPES[bytes.readUInt32LE(12)] ?? `type ${bytes.readUInt32LE(12)}`;
  const commands = bytes.readUInt32LE(16);
  const flags = bytes.readUInt32LE(24);
  const slice: MachOSlice = { cpu, fileType, dylibs: [], rpaths: [], imports: [] };
  let symtab: { symoff: number; nsyms: number; stroff: number; strsize: number } | undefined;
  let signature: { offset: number; size: number } | undefined;
  let fixups: { offset: number; size: number } | undefined;
  let bindStreams: Array<{ offset: number; size: number }> | undefined;
  let at = 32;
  for (let index = 0; index < commands && at + 8 <= bytes.length; index += 1) {
    const cmd = bytes.readUInt32LE(at);
    const size = bytes.readUInt32LE(at + 4);
    if (size < 8 || at + size > bytes.length) break;
    if (DYLIB_COMMANDS.has(cmd)) slice.dylibs.push(cString(bytes, at + bytes.readUInt32LE(at + 8), at + size));
    else if (cmd === LC_RPATH) slice.rpaths.push(cString(bytes, at + bytes.readUInt32LE(at + 8), at + size));
    else if (cmd === LC_BUILD_VERSION) slice.minOs = version(bytes.readUInt32LE(at + 12));
    else if (cmd === LC_VERSION_MIN_MACOSX) slice.minOs ??= version(bytes.readUInt32LE(at + 8));
    else if (cmd === LC_SYMTAB) symtab = { symoff: bytes.readUInt32LE(at + 8), nsyms: bytes.readUInt32LE(at + 12), stroff: bytes.readUInt32LE(at + 16), strsize: bytes.readUInt32LE(at + 20) };
    else if (cmd === LC_CODE_SIGNATURE) signature = { offset: bytes.readUInt32LE(at + 8), size: bytes.readUInt32LE(at + 12) };
    else if (cmd === LC_DYLD_CHAINED_FIXUPS) fixups = { offset: bytes.readUInt32LE(at + 8), size: bytes.readUInt32LE(at + 12) };
    // dyld_info_command: the bind and lazy-bind opcode streams (weak binds name no library).
    else if (cmd === LC_DYLD_INFO || cmd === LC_DYLD_INFO_ONLY) bindStreams = [16, 32].map((field) => ({ offset: bytes.readUInt32LE(at + field), size: bytes.readUInt32LE(at + field + 4) }));
    at += size;
  }
  // What dyld binds, by the names dyld reads: the chained fixups' imports (macOS 12+ linkers)
  // or the bind opcodes (older ones); the symbol table's undefined symbols only without either.
  if (fixups) slice.imports = chainedImports(bytes, fixups.offset, slice.dylibs);
  else if (bindStreams) slice.imports = bindImports(bytes, bindStreams, slice.dylibs);
  else if (symtab) {
    const twoLevel = (flags & MH_TWOLEVEL) !== 0;
    for (let index = 0; index < symtab.nsyms; index += 1) {
      const entry = symtab.symoff + index * 16;
      if (entry + 16 > bytes.length) break;
      const type = bytes.readUInt8(entry + 4);
      // N_EXT and N_UNDF (type bits 0): an undefined external symbol.
      if ((type & 0x01) === 0 || (type & 0x0e) !== 0 || (type & 0xe0) !== 0) continue;
      const name = cString(bytes, symtab.stroff + bytes.readUInt32LE(entry), symtab.stroff + symtab.strsize);
      const ordinal = (bytes.readUInt16LE(entry + 6) >> 8) & 0xff;
      const from = !twoLevel || ordinal === DYNAMIC_LOOKUP_ORDINAL || ordinal === EXECUTABLE_ORDINAL ? 'dynamic' : slice.dylibs[ordinal - 1] ?? `ordinal ${ordinal}`;
      slice.imports.push({ name, from });
    }
  }
  if (signature) slice.signature = checkSignature(bytes, signature.offset, signature.size);
  return slice;
}

/** Where a library ordinal points: Node (flat lookup, the main executable), the file itself, or a library. */
function ordinalSource(ordinal: number, dylibs: readonly string[]): string {
  return ordinal === -2 || ordinal === -1 ? 'dynamic' : ordinal === 0 ? 'self' : dylibs[ordinal - 1] ?? `ordinal ${ordinal}`;
}

/** The symbols bound by dyld_info's bind opcode streams, each with the library ordinal in force. */
function bindImports(bytes: Buffer, streams: ReadonlyArray<{ offset: number; size: number }>, dylibs: readonly string[]): MachOSlice['imports'] {
  const found = new Map<string, string>();
  for (const stream of streams) {
    let at = stream.offset;
    const end = Math.min(stream.offset + stream.size, bytes.length);
    let ordinal = 0;
    let symbol: string | undefined;
    const uleb = () => {
      let value = 0;
      let shift = 0;
      for (;;) {
        const byte = bytes[at++] ?? 0;
        value += (byte & 0x7f) * 2 ** shift;
        shift += 7;
        if ((byte & 0x80) === 0 || at >= end) return value;
      }
    };
    while (at < end) {
      const byte = bytes[at++] ?? 0;
      const opcode = byte & 0xf0;
      const immediate = byte & 0x0f;
      if (opcode === 0x10) ordinal = immediate;
      else if (opcode === 0x20) ordinal = uleb();
      else if (opcode === 0x30) ordinal = immediate === 0 ? 0 : (immediate | 0xf0) - 0x100;
      else if (opcode === 0x40) {
        symbol = cString(bytes, at, end);
        at += Buffer.byteLength(symbol) + 1;
      } else if (opcode === 0x60 || opcode === 0x70 || opcode === 0x80) uleb(); // SLEB/ULEB operands: skipped the same way
      else if (opcode >= 0x90 && opcode <= 0xc0) {
        // A bind: the symbol with the library ordinal in force now. Linkers order the symbol and
        // ordinal opcodes differently (ld64 sets the ordinal first, zig's linker the symbol).
        if (opcode === 0xa0) uleb();
        if (opcode === 0xc0) {
          uleb();
          uleb();
        }
        if (symbol !== undefined && !found.has(symbol)) found.set(symbol, ordinalSource(ordinal, dylibs));
      } else if (opcode === 0xd0 && immediate === 0) uleb();
    }
  }
  return [...found].map(([name, from]) => ({ name, from }));
}

/** The imports of LC_DYLD_CHAINED_FIXUPS: each name and the library ordinal it binds from. */
function chainedImports(bytes: Buffer, offset: number, dylibs: readonly string[]): MachOSlice['imports'] {
  if (offset + 28 > bytes.length) return [];
  const importsOffset = offset + bytes.readUInt32LE(offset + 8);
  const symbolsOffset = offset + bytes.readUInt32LE(offset + 12);
  const count = bytes.readUInt32LE(offset + 16);
  const format = bytes.readUInt32LE(offset + 20);
  const imports: MachOSlice['imports'] = [];
  const width = format === 3 ? 16 : format === 2 ? 8 : 4;
  for (let index = 0; index < count && importsOffset + (index + 1) * width <= bytes.length; index += 1) {
    const at = importsOffset + index * width;
    let ordinal: number;
    let nameOffset: number;
    if (format === 3) {
      // DYLD_CHAINED_IMPORT_ADDEND64: lib_ordinal:16, weak:1, reserved:15, name_offset:32.
      const word = bytes.readBigUInt64LE(at);
      ordinal = Number(word & 0xffffn);
      nameOffset = Number(word >> 32n);
      ordinal = ordinal >= 0xfff0 ? ordinal - 0x10000 : ordinal;
    } else {
      // DYLD_CHAINED_IMPORT(_ADDEND): lib_ordinal:8 (signed), weak:1, name_offset:23.
      const word = bytes.readUInt32LE(at);
      ordinal = word & 0xff;
      ordinal = ordinal >= 0xf0 ? ordinal - 0x100 : ordinal;
      nameOffset = word >>> 9;
    }
    const name = cString(bytes, symbolsOffset + nameOffset, bytes.length);
    // -2: flat lookup (whatever loaded the bundle: Node); -1: the main executable; 0: itself.
    imports.push({ name, from: ordinalSource(ordinal, dylibs) });
  }
  return imports;
}

function cString(bytes: Buffer, start: number, limit: number): string {
  const end = bytes.indexOf(0, start);
  return bytes.toString('utf8', start, end === -1 || end > limit ? limit : end);
}

/** `xxxx.yy.zz` nibbles as `major.minor` (and `.patch` when set). */
function version(value: number): string {
  const patch = value & 0xff;
  return `${value >>> 16}.${(value >> 8) & 0xff}${patch ? `.${patch}` : ''}`;
}

/**
 * The embedded signature's code directory (the strongest hash when there are several) and each
 * page's hash recomputed over the file up to its code limit.
 */
function checkSignature(bytes: Buffer, offset: number, size: number): NonNullable<MachOSlice['signature']> {
  if (offset + 12 > bytes.length || offset + size > bytes.length || bytes.readUInt32BE(offset) !== CSMAGIC_EMBEDDED_SIGNATURE) {
    return { hashType: 'none', pages: 0, problem: 'its code signature blob is not an embedded signature' };
  }
  const count = bytes.readUInt32BE(offset + 8);
  let best: { at: number; hashType: number } | undefined;
  for (let index = 0; index < count && index < 64; index += 1) {
    const blob = offset + bytes.readUInt32BE(offset + 12 + index * 8 + 4);
    if (blob + 44 > bytes.length || bytes.readUInt32BE(blob) !== CSMAGIC_CODEDIRECTORY) continue;
    const hashType = bytes.readUInt8(blob + 37);
    if (!best || (HASHES[hashType]?.size ?? 0) > (HASHES[best.hashType]?.size ?? 0)) best = { at: blob, hashType };
  }
  if (!best) return { hashType: 'none', pages: 0, problem: 'its code signature has no code directory' };
  const directory = best.at;
  const hash = HASHES[best.hashType];
  if (!hash) return { hashType: `type ${best.hashType}`, pages: 0, problem: `its code signature uses an unknown hash type (${best.hashType})` };
  const hashOffset = bytes.readUInt32BE(directory + 16);
  const codeSlots = bytes.readUInt32BE(directory + 28);
  const codeLimit = bytes.readUInt32BE(directory + 32);
  const hashSize = bytes.readUInt8(directory + 36);
  const pageShift = bytes.readUInt8(directory + 39);
  const pageSize = pageShift === 0 ? codeLimit : 2 ** pageShift;
  if (hashSize !== hash.size || codeLimit > bytes.length) return { hashType: hash.algorithm, pages: codeSlots, problem: 'its code directory does not fit the file' };
  for (let page = 0; page < codeSlots; page += 1) {
    const start = page * pageSize;
    const expected = bytes.subarray(directory + hashOffset + page * hashSize, directory + hashOffset + (page + 1) * hashSize);
    const actual = createHash(hash.algorithm).update(bytes.subarray(start, Math.min(start + pageSize, codeLimit))).digest().subarray(0, hashSize);
    if (!actual.equals(expected)) return { hashType: hash.algorithm, pages: codeSlots, problem: `its code signature does not match the file (page ${page} at byte ${start} differs: the file was changed after signing)` };
  }
  return { hashType: hash.algorithm, pages: codeSlots };
}

/** The oldest macOS each Node major runs on (its BUILDING.md): an addon may not ask for newer. */
export const NODE_MIN_MACOS: Readonly<Record<number, string>> = { 18: '10.15', 20: '10.15', 22: '11.0', 23: '11.0', 24: '13.5', 25: '13.5', 26: '13.5' };

function compareVersions(a: string, b: string): number {
  const left = a.split('.').map(Number);
  const right = b.split('.').map(Number);
  for (let index = 0; index < Math.max(left.length, right.length); index += 1) {
    const difference = (left[index] ?? 0) - (right[index] ?? 0);
    if (difference !== 0) return difference;
  }
  return 0;
}

/** Libraries every Mac has: the system's own under /usr/lib and its public frameworks. */
function systemLibrary(name: string): boolean {
  return (name.startsWith('/usr/lib/') && !name.startsWith('/usr/lib/../')) || name.startsWith('/System/Library/Frameworks/');
}

export interface MachOCheckOptions {
  target: { cpu: TargetCpu };
  /** The target Node's major: the oldest macOS it runs on bounds the addon's minimum. */
  nodeMajor: number;
  /** Names the target Node exports (`_napi_create_function`, …): what `dynamic` imports may use. */
  nodeExports?: ReadonlySet<string>;
  /** The binary is an addon (`.node`): it must be a bundle or dylib. */
  addon: boolean;
}

/**
 * Every structural problem of the target's slice of a Mach-O file, each naming its check; empty
 * when it passes them all. Not Mach-O, or no slice for the target cpu: one problem saying so.
 *
 * @example
 * await checkMachO('/…/argon2.armv8.glibc.node', { target: { cpu: 'arm64' }, nodeMajor: 22, nodeExports, addon: true }) // []
 */
export async function checkMachO(file: string, options: MachOCheckOptions): Promise<string[]> {
  const slices = await readMachO(file);
  if (!slices) return ['not a 64-bit Mach-O file'];
  const slice = slices.find((candidate) => candidate.cpu === options.target.cpu);
  if (!slice) return [`no ${options.target.cpu} slice (found: ${slices.map((candidate) => candidate.cpu).join(', ') || 'none'})`];
  const problems: string[] = [];
  if (options.addon && slice.fileType !== 'bundle' && slice.fileType !== 'dylib') problems.push(`file type: a ${slice.fileType}, not a bundle or dylib (an addon is loaded with dlopen)`);
  // arm64 Macs start at macOS 11: no arm64 binary can ask for less, nor need to.
  const floor = NODE_MIN_MACOS[options.nodeMajor] ?? '13.5';
  const oldest = options.target.cpu === 'arm64' && compareVersions(floor, '11.0') < 0 ? '11.0' : floor;
  // An addon asking for a newer macOS than Node runs on would fail to load where Node works; a
  // program a package ships (esbuild's binary) follows that package's own policy.
  if (options.addon && !slice.minOs) problems.push('minimum macOS: none recorded (no LC_BUILD_VERSION or LC_VERSION_MIN_MACOSX)');
  else if (options.addon && slice.minOs && compareVersions(slice.minOs, oldest) > 0) problems.push(`minimum macOS: asks for ${slice.minOs}, but Node ${options.nodeMajor} runs on macOS ${oldest} and later`);
  for (const dylib of slice.dylibs) {
    if (systemLibrary(dylib)) continue;
    if (/^@(loader_path|rpath|executable_path)\//.test(dylib) && (await shippedBeside(file, dylib, slice.rpaths))) continue;
    problems.push(`libraries: loads ${dylib}, which a Mac cannot be assumed to have and the package does not ship beside it`);
  }
  if (!slice.signature) {
    if (options.target.cpu === 'arm64') problems.push('code signature: none (arm64 macOS refuses to load unsigned code)');
  } else if (slice.signature.problem) {
    problems.push(`code signature: ${slice.signature.problem}`);
  }
  if (options.nodeExports) {
    const missing = slice.imports.filter((entry) => entry.from === 'dynamic' && !options.nodeExports?.has(entry.name)).map((entry) => entry.name.replace(/^_/, ''));
    if (missing.length > 0) problems.push(`symbols: uses ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ` (and ${missing.length - 5} more)` : ''}, which Node ${options.nodeMajor} does not export`);
  }
  return problems;
}

/** An @loader_path/@rpath library found in the package: beside the binary, or in one of its rpaths. */
async function shippedBeside(file: string, dylib: string, rpaths: readonly string[]): Promise<boolean> {
  const dir = path.dirname(file);
  const relative = dylib.replace(/^@(loader_path|executable_path|rpath)\//, '');
  const candidates = dylib.startsWith('@rpath/')
    ? rpaths.filter((rpath) => rpath.startsWith('@loader_path')).map((rpath) => path.join(dir, rpath.replace(/^@loader_path\/?/, ''), relative))
    : [path.join(dir, relative)];
  for (const candidate of [...candidates, path.join(dir, path.basename(relative))]) {
    if (await access(candidate).then(() => true, () => false)) return true;
  }
  return false;
}

/**
 * The names a Node binary (Mach-O) exports: its defined external symbols. Read from the symbol
 * table only (Node's binary is ~100 MB).
 */
export async function readMachOExports(file: string): Promise<Set<string>> {
  const handle = await open(file, 'r');
  try {
    const head = Buffer.alloc(32);
    await handle.read(head, 0, 32, 0);
    if (head.readUInt32LE(0) !== MH_MAGIC_64) throw new Error(`${file} is not a thin 64-bit Mach-O file`);
    const commands = Buffer.alloc(head.readUInt32LE(20));
    await handle.read(commands, 0, commands.length, 32);
    let at = 0;
    for (let index = 0; index < head.readUInt32LE(16) && at + 8 <= commands.length; index += 1) {
      if (commands.readUInt32LE(at) === LC_SYMTAB) {
        const symoff = commands.readUInt32LE(at + 8);
        const nsyms = commands.readUInt32LE(at + 12);
        const stroff = commands.readUInt32LE(at + 16);
        const strsize = commands.readUInt32LE(at + 20);
        const symbols = Buffer.alloc(nsyms * 16);
        const strings = Buffer.alloc(strsize);
        await handle.read(symbols, 0, symbols.length, symoff);
        await handle.read(strings, 0, strings.length, stroff);
        const names = new Set<string>();
        for (let entry = 0; entry + 16 <= symbols.length; entry += 16) {
          const type = symbols.readUInt8(entry + 4);
          // N_EXT with N_SECT: defined in the binary and visible to what it loads.
          if ((type & 0x01) !== 0 && (type & 0x0e) === 0x0e && (type & 0xe0) === 0) names.add(cString(strings, symbols.readUInt32LE(entry), strings.length));
        }
        return names;
      }
      at += commands.readUInt32LE(at + 4);
    }
    return new Set();
  } finally {
    await handle.close();
  }
}
