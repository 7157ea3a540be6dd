/**
 * Tar fixtures built in the test: `makeTar([{ name: 'package/package.json', content: '{…}' }])`.
 * Ordinary entries are written by tar-stream; `size` and `typeflag` overrides use a raw ustar
 * header so tests can forge what tar-stream refuses to write (lying sizes, GNU sparse files,
 * global pax headers, GNU long names).
 */
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { extract, pack, type Header } from 'tar-stream';

export interface TarEntry {
  /** The path in the archive, e.g. `package/index.js`. */
  name: string;
  content?: string | Buffer;
  /** Default `file`. */
  type?: Header['type'];
  linkname?: string;
  /** Default 0o644 (0o755 for directories). */
  mode?: number;
  uid?: number;
  gid?: number;
  uname?: string;
  gname?: string;
  mtime?: Date;
  devmajor?: number;
  devminor?: number;
  /** Extra pax records written before the entry (e.g. `{ path: 'package/../x' }` overrides the name). */
  pax?: Record<string, string>;
  /**
   * The size the header declares. The content is still written as given (padded to its own
   * length), so a bigger size makes a header that lies: a tar bomb or a cut archive.
   */
  size?: number;
  /** A raw type flag character (`'S'` GNU sparse, `'g'` global pax, `'L'` GNU long name…). */
  typeflag?: string;
}

export interface MakeTarOptions {
  /** Write the end-of-archive marker (two zero blocks). Default true. */
  end?: boolean;
}

const BLOCK = 512;

/** Builds an uncompressed tar in memory. */
export async function makeTar(entries: readonly TarEntry[], options: MakeTarOptions = {}): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (const entry of entries) {
    parts.push(entry.size !== undefined || entry.typeflag !== undefined ? rawEntry(entry) : await packedEntry(entry));
  }
  if (options.end !== false) parts.push(Buffer.alloc(2 * BLOCK));
  return Buffer.concat(parts);
}

/** makeTar, gzipped. */
export async function makeTgz(entries: readonly TarEntry[], options: MakeTarOptions = {}): Promise<Buffer> {
  return gzipSync(await makeTar(entries, options));
}

/** A minimal valid package: `package/package.json` plus the given extra entries. */
export function packageEntries(extra: readonly TarEntry[] = [], manifest: Record<string, unknown> = { name: 'fixture', version: '1.0.0' }): TarEntry[] {
  return [
    { name: 'package/', type: 'directory' },
    { name: 'package/package.json', content: JSON.stringify(manifest) },
    ...extra,
  ];
}

/** A stream of `buffer` in chunks of `chunkSize` bytes (small sizes exercise block boundaries). */
export function streamOf(buffer: Buffer, chunkSize = 64 * 1024): Readable {
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < buffer.length; offset += chunkSize) chunks.push(buffer.subarray(offset, offset + chunkSize));
  return Readable.from(chunks, { objectMode: false });
}

export async function readAll(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Uint8Array));
  return Buffer.concat(chunks);
}

export interface ListedEntry {
  header: Header;
  content: Buffer;
}

/** Parses a tar with tar-stream: every entry's header and content, in archive order. */
export async function listTar(tar: Buffer): Promise<ListedEntry[]> {
  const parser = extract();
  const listed: ListedEntry[] = [];
  const done = (async () => {
    for await (const entry of parser) listed.push({ header: entry.header, content: await readAll(entry) });
  })();
  parser.end(tar);
  await done;
  return listed;
}

/** Encodes pax records (`"<len> key=value\n"`), for raw `x` / `g` entries. */
export function paxRecords(records: Record<string, string>): Buffer {
  let out = '';
  for (const [key, value] of Object.entries(records)) {
    const body = ` ${key}=${value}\n`;
    let length = Buffer.byteLength(body) + 1;
    while (String(length).length + Buffer.byteLength(body) !== length) length = String(length).length + Buffer.byteLength(body);
    out += `${length}${body}`;
  }
  return Buffer.from(out);
}

async function packedEntry(entry: TarEntry): Promise<Buffer> {
  const packer = pack();
  const collected = readAll(packer);
  const header: Partial<Header> & Pick<Header, 'name'> = {
    name: entry.name,
    type: entry.type ?? 'file',
    mode: entry.mode ?? (entry.type === 'directory' ? 0o755 : 0o644),
    uid: entry.uid ?? 0,
    gid: entry.gid ?? 0,
    uname: entry.uname ?? '',
    gname: entry.gname ?? '',
    mtime: entry.mtime ?? new Date('2020-01-01T00:00:00Z'),
    ...(entry.linkname === undefined ? {} : { linkname: entry.linkname }),
    ...(entry.devmajor === undefined ? {} : { devmajor: entry.devmajor }),
    ...(entry.devminor === undefined ? {} : { devminor: entry.devminor }),
    ...(entry.pax === undefined ? {} : { pax: entry.pax }),
  };
  await new Promise<void>((resolve, reject) => {
    packer.entry(header, entry.content ?? Buffer.alloc(0), (error) => (error ? reject(error) : resolve()));
  });
  packer.finalize();
  const bytes = await collected;
  return bytes.subarray(0, bytes.length - 2 * BLOCK); // drop tar-stream's end-of-archive marker
}

function rawEntry(entry: TarEntry): Buffer {
  const content = typeof entry.content === 'string' ? Buffer.from(entry.content) : entry.content ?? Buffer.alloc(0);
  const header = Buffer.alloc(BLOCK);
  header.write(entry.name, 0, 100, 'utf8');
  writeOctal(header, entry.mode ?? 0o644, 100, 8);
  writeOctal(header, entry.uid ?? 0, 108, 8);
  writeOctal(header, entry.gid ?? 0, 116, 8);
  writeOctal(header, entry.size ?? content.length, 124, 12);
  writeOctal(header, Math.floor((entry.mtime ?? new Date('2020-01-01T00:00:00Z')).getTime() / 1000), 136, 12);
  header.write(entry.typeflag ?? typeflagOf(entry.type), 156, 1, 'latin1');
  if (entry.linkname) header.write(entry.linkname, 157, 100, 'utf8');
  header.write('ustar\0', 257, 'latin1');
  header.write('00', 263, 'latin1');
  header.write(entry.uname ?? '', 265, 32, 'utf8');
  header.write(entry.gname ?? '', 297, 32, 'utf8');
  writeOctal(header, entry.devmajor ?? 0, 329, 8);
  writeOctal(header, entry.devminor ?? 0, 337, 8);
  header.fill(' ', 148, 156);
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  const padding = (BLOCK - (content.length % BLOCK)) % BLOCK;
  return Buffer.concat([header, content, Buffer.alloc(padding)]);
}

function writeOctal(buffer: Buffer, value: number, offset: number, length: number): void {
  buffer.write(`${value.toString(8).padStart(length - 1, '0')}\0`, offset, length, 'latin1');
}

function typeflagOf(type: Header['type'] | undefined): string {
  switch (type) {
    case 'link': return '1';
    case 'symlink': return '2';
    case 'character-device': return '3';
    case 'block-device': return '4';
    case 'directory': return '5';
    case 'fifo': return '6';
    case 'contiguous-file': return '7';
    default: return '0';
  }
}
