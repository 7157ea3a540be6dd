/**
 * Windows PE files read for what they link: the names a DLL or EXE exports (node.exe's Node-API,
 * the authority an addon is linked and checked against) and the DLLs and names a module imports,
 * eager and delay-loaded. Reads only the headers and the tables, never the whole file (node.exe
 * is 80 MB). The checks a win32 bundle's binaries get against the target's node.exe are here too.
 */
import { access, open } from 'node:fs/promises';
import path from 'node:path';
import type { FileHandle } from 'node:fs/promises';

export interface PeImport {
  /** The DLL's name as written in the file (compare case-insensitively, as Windows does). */
  dll: string;
  /** Imported names; `#<n>` for an import by ordinal. */
  names: string[];
  /** Bound by the delay-load helper on first call, not when the module loads. */
  delayed: boolean;
}

interface Section {
  virtualAddress: number;
  virtualSize: number;
  rawOffset: number;
  rawSize: number;
}

interface Layout {
  file: FileHandle;
  pe32plus: boolean;
  imageBase: bigint;
  directories: Array<{ rva: number; size: number }>;
  sections: Section[];
}

const EXPORT_DIRECTORY = 0;
const IMPORT_DIRECTORY = 1;
const DELAY_IMPORT_DIRECTORY = 13;
/** Sanity bounds: a table larger than this is a corrupt or hostile file, not a DLL. */
const MAX_ENTRIES = 200_000;

export class PeFormatError extends Error {}

async function readAt(file: FileHandle, position: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  const { bytesRead } = await file.read(buffer, 0, length, position);
  return buffer.subarray(0, bytesRead);
}

async function readLayout(file: FileHandle): Promise<Layout> {
  const dos = await readAt(file, 0, 64);
  if (dos.length < 64 || dos.toString('latin1', 0, 2) !== 'MZ') throw new PeFormatError('not a PE file (no MZ header)');
  const peOffset = dos.readUInt32LE(0x3c);
  const coff = await readAt(file, peOffset, 24);
  if (coff.length < 24 || coff.readUInt32BE(0) !== 0x50450000) throw new PeFormatError('not a PE file (no PE signature)');
  const sectionCount = coff.readUInt16LE(6);
  const optionalSize = coff.readUInt16LE(20);
  const optional = await readAt(file, peOffset + 24, optionalSize);
  const magic = optional.readUInt16LE(0);
  if (magic !== 0x10b && magic !== 0x20b) throw new PeFormatError(`unknown optional header magic 0x${magic.toString(16)}`);
  const pe32plus = magic === 0x20b;
  const imageBase = pe32plus ? optional.readBigUInt64LE(24) : BigInt(optional.readUInt32LE(28));
  const countAt = pe32plus ? 108 : 92;
  const count = Math.min(optional.readUInt32LE(countAt), 16);
  const directories = Array.from({ length: count }, (_, index) => ({ rva: optional.readUInt32LE(countAt + 4 + index * 8), size: optional.readUInt32LE(countAt + 8 + index * 8) }));
  const table = await readAt(file, peOffset + 24 + optionalSize, sectionCount * 40);
  const sections: Section[] = [];
  for (let at = 0; at + 40 <= table.length; at += 40) {
    sections.push({ virtualSize: table.readUInt32LE(at + 8), virtualAddress: table.readUInt32LE(at + 12), rawSize: table.readUInt32LE(at + 16), rawOffset: table.readUInt32LE(at + 20) });
  }
  return { file, pe32plus, imageBase, directories, sections };
}

/** The file offset of an RVA, or undefined when no section holds it. */
function offsetOf(layout: Layout, rva: number): number | undefined {
  for (const section of layout.sections) {
    const size = Math.max(section.virtualSize, section.rawSize);
    if (rva >= section.virtualAddress && rva < section.virtualAddress + size) return section.rawOffset + (rva - section.virtualAddress);
  }
  return undefined;
}

/** The section that holds `rva`, read whole (tables point all over their section). */
async function sectionBytes(layout: Layout, rva: number): Promise<{ bytes: Buffer; base: number } | undefined> {
  const section = layout.sections.find((s) => rva >= s.virtualAddress && rva < s.virtualAddress + Math.max(s.virtualSize, s.rawSize));
  if (!section) return undefined;
  return { bytes: await readAt(layout.file, section.rawOffset, section.rawSize), base: section.virtualAddress };
}

/** Reads NUL-terminated ASCII at `rva`, from the cached section when it is there. */
async function stringAt(layout: Layout, rva: number, cache?: { bytes: Buffer; base: number }): Promise<string> {
  if (cache && rva >= cache.base && rva < cache.base + cache.bytes.length) {
    const start = rva - cache.base;
    const end = cache.bytes.indexOf(0, start);
    return cache.bytes.toString('latin1', start, end === -1 ? cache.bytes.length : end);
  }
  const offset = offsetOf(layout, rva);
  if (offset === undefined) throw new PeFormatError(`name at RVA 0x${rva.toString(16)} lies outside every section`);
  const bytes = await readAt(layout.file, offset, 512);
  const end = bytes.indexOf(0);
  return bytes.toString('latin1', 0, end === -1 ? bytes.length : end);
}

async function withLayout<T>(file: string, read: (layout: Layout) => Promise<T>): Promise<T> {
  const handle = await open(file, 'r');
  try {
    return await read(await readLayout(handle));
  } finally {
    await handle.close();
  }
}

/** Names exported by a PE file (by name; ordinal-only exports have none), in table order. */
export function readPeExports(file: string): Promise<string[]> {
  return withLayout(file, async (layout) => {
    const directory = layout.directories[EXPORT_DIRECTORY];
    if (!directory || directory.rva === 0) return [];
    const section = await sectionBytes(layout, directory.rva);
    if (!section) throw new PeFormatError('export directory lies outside every section');
    const at = directory.rva - section.base;
    const nameCount = section.bytes.readUInt32LE(at + 24);
    const namesRva = section.bytes.readUInt32LE(at + 32);
    if (nameCount > MAX_ENTRIES) throw new PeFormatError(`export table claims ${nameCount} names`);
    const names: string[] = [];
    for (let index = 0; index < nameCount; index += 1) {
      const pointer = namesRva + index * 4 - section.base;
      const nameRva = pointer >= 0 && pointer + 4 <= section.bytes.length ? section.bytes.readUInt32LE(pointer) : (await readAt(layout.file, offsetOf(layout, namesRva + index * 4) ?? 0, 4)).readUInt32LE(0);
      names.push(await stringAt(layout, nameRva, section));
    }
    return names;
  });
}

/** Every DLL a PE file imports, with the names it takes from each; delay-loaded ones marked. */
export function readPeImports(file: string): Promise<PeImport[]> {
  return withLayout(file, async (layout) => {
    const imports: PeImport[] = [];
    const eager = layout.directories[IMPORT_DIRECTORY];
    if (eager && eager.rva !== 0) {
      for (let index = 0; index < MAX_ENTRIES; index += 1) {
        const offset = offsetOf(layout, eager.rva + index * 20);
        if (offset === undefined) throw new PeFormatError('import directory lies outside every section');
        const descriptor = await readAt(layout.file, offset, 20);
        if (descriptor.length < 20 || descriptor.every((byte) => byte === 0)) break;
        const lookup = descriptor.readUInt32LE(0) || descriptor.readUInt32LE(16); // OriginalFirstThunk, else FirstThunk
        imports.push({ dll: await stringAt(layout, descriptor.readUInt32LE(12)), names: await thunkNames(layout, lookup, 0), delayed: false });
      }
    }
    const delayed = layout.directories[DELAY_IMPORT_DIRECTORY];
    if (delayed && delayed.rva !== 0) {
      // Counted by the directory's size where it is a whole number of descriptors (our MinGW
      // builds set exactly one, with no zero descriptor after it), else up to the zero one.
      const count = delayed.size >= 32 && delayed.size % 32 === 0 ? delayed.size / 32 : MAX_ENTRIES;
      for (let index = 0; index < count; index += 1) {
        const offset = offsetOf(layout, delayed.rva + index * 32);
        if (offset === undefined) throw new PeFormatError('delay-import directory lies outside every section');
        const descriptor = await readAt(layout.file, offset, 32);
        if (descriptor.length < 32 || descriptor.every((byte) => byte === 0)) break;
        // Attribute bit 0: the fields are RVAs; old linkers wrote virtual addresses.
        const base = (descriptor.readUInt32LE(0) & 1) === 1 ? 0 : Number(layout.imageBase);
        const dllName = descriptor.readUInt32LE(4) - base;
        const nameTable = descriptor.readUInt32LE(16) - base;
        imports.push({ dll: await stringAt(layout, dllName), names: await thunkNames(layout, nameTable, base), delayed: true });
      }
    }
    return imports;
  });
}

/** The names of one import lookup table (`#<ordinal>` for imports by ordinal). */
async function thunkNames(layout: Layout, tableRva: number, base: number): Promise<string[]> {
  const names: string[] = [];
  const width = layout.pe32plus ? 8 : 4;
  const offset = offsetOf(layout, tableRva);
  if (offset === undefined) throw new PeFormatError(`import lookup table at RVA 0x${tableRva.toString(16)} lies outside every section`);
  const section = await sectionBytes(layout, tableRva);
  for (let index = 0; index < MAX_ENTRIES; index += 1) {
    const entry = await readAt(layout.file, offset + index * width, width);
    if (entry.length < width) break;
    const value = layout.pe32plus ? entry.readBigUInt64LE(0) : BigInt(entry.readUInt32LE(0));
    if (value === 0n) return names;
    const byOrdinal = layout.pe32plus ? (value >> 63n) === 1n : (value >> 31n) === 1n;
    if (byOrdinal) names.push(`#${Number(value & 0xffffn)}`);
    else names.push(await stringAt(layout, Number(value & 0x7fffffffn) - base + 2, section)); // skip the 2-byte hint
  }
  throw new PeFormatError('import lookup table does not end');
}

// --- checks against the target's node.exe ------------------------------------------------

/** MinGW's runtime DLLs: never on Windows, so a binary needing one must ship it beside itself. */
const MINGW_RUNTIME_DLL = /^(libstdc\+\+-\d+|libgcc_s_[\w-]+|libwinpthread-\d+|libgomp-\d+|libssp-\d+)\.dll$/i;

/** Why a PE binary's imports cannot be satisfied on the target Node, or undefined when they can. */
export async function checkPeImports(file: string, nodeExports: ReadonlySet<string>, nodeVersion: string): Promise<string | undefined> {
  let imports;
  try {
    imports = await readPeImports(file);
  } catch (error) {
    return `its import tables cannot be read (${(error as Error).message})`;
  }
  const missing = imports.filter((entry) => entry.dll.toLowerCase() === 'node.exe').flatMap((entry) => entry.names.filter((name) => !nodeExports.has(name)));
  if (missing.length > 0) return `imports ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ` (and ${missing.length - 5} more)` : ''} from node.exe, which Node ${nodeVersion}'s node.exe does not export`;
  const runtimeDlls = [];
  for (const entry of imports) {
    if (MINGW_RUNTIME_DLL.test(entry.dll) && !(await access(path.join(path.dirname(file), entry.dll)).then(() => true, () => false))) runtimeDlls.push(entry.dll);
  }
  if (runtimeDlls.length > 0) return `needs ${runtimeDlls.join(', ')} (MinGW's runtime, which Windows does not have) and its package does not ship it beside the binary`;
  return undefined;
}

/** Node-API's names: what stays the same from one Node version to the next. */
const NODE_API_NAME = /^(napi|node_api)_/;

/** The addons (PE) that import anything but Node-API from node.exe. */
export async function beyondNodeApi(dir: string, addons: string[]): Promise<string[]> {
  const beyond: string[] = [];
  for (const addon of addons) {
    const imports = await readPeImports(path.join(dir, addon)).catch(() => undefined);
    if (!imports || imports.some((entry) => entry.dll.toLowerCase() === 'node.exe' && entry.names.some((name) => !NODE_API_NAME.test(name)))) beyond.push(addon);
  }
  return beyond;
}
