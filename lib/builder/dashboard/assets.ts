/**
 * The dashboard's static files (plain JS and CSS under `lib/builder/dashboard/assets/`, which
 * tsc does not emit: they are read at run time from the package root, listed in package.json
 * "files"). Loaded once into memory, gzipped once, served under content-hashed names
 * (`dashboard.3f9c1a2b.js`) as immutable, with an ETag.
 */
import { createHash } from 'node:crypto';
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { findPackageRoot } from '../../package-root.js';

export interface Asset {
  /** Hashed file name, e.g. `dashboard.3f9c1a2b.js`. */
  name: string;
  type: string;
  body: Buffer;
  gzip: Buffer;
  etag: string;
}

export interface AssetSet {
  /** By hashed name. */
  byName: Map<string, Asset>;
  /** Plain name (`dashboard.js`) → URL path (`/assets/dashboard.3f9c1a2b.js`). */
  url(plain: string): string;
}

const TYPES: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

/** `lib/builder/dashboard/assets` of this package, from the source tree and from `build/lib/…` alike. */
export async function defaultAssetsDir(): Promise<string> {
  const root = await findPackageRoot();
  if (!root) throw new Error('bundle-dispatch: cannot find the package root (for the dashboard assets).');
  return path.join(root.dir, 'lib', 'builder', 'dashboard', 'assets');
}

export async function loadAssets(dir: string): Promise<AssetSet> {
  const byName = new Map<string, Asset>();
  const urls = new Map<string, string>();
  for (const file of (await readdir(dir)).sort()) {
    const extension = path.extname(file);
    const type = TYPES[extension];
    if (!type) continue;
    const body = await readFile(path.join(dir, file));
    const hash = createHash('sha256').update(body).digest('hex').slice(0, 12);
    const name = `${path.basename(file, extension)}.${hash}${extension}`;
    byName.set(name, { name, type, body, gzip: gzipSync(body, { level: 9 }), etag: `"${hash}"` });
    urls.set(file, `/assets/${name}`);
  }
  return {
    byName,
    url(plain) {
      const url = urls.get(plain);
      if (!url) throw new Error(`dashboard asset ${plain} is missing from ${dir}`);
      return url;
    },
  };
}
