/**
 * This package's own root (where its package.json says `"name": "bundle-dispatch"`), found by
 * walking up from this module: the same from the source tree and from `build/lib/…`.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface PackageRoot {
  dir: string;
  version: string;
}

let found: Promise<PackageRoot | undefined> | undefined;

/** The package root and version; undefined when no package.json up the tree is ours. */
export function findPackageRoot(): Promise<PackageRoot | undefined> {
  found ??= (async () => {
    for (let dir = path.dirname(fileURLToPath(import.meta.url)); path.dirname(dir) !== dir; dir = path.dirname(dir)) {
      const text = await readFile(path.join(dir, 'package.json'), 'utf8').catch(() => undefined);
      const manifest = text === undefined ? undefined : (JSON.parse(text) as { name?: string; version?: string });
      if (manifest?.name === 'bundle-dispatch') return { dir, version: manifest.version ?? '0.0.0' };
    }
    return undefined;
  })();
  return found;
}

/** The version in this package's package.json ('0.0.0' when it cannot be found). */
export async function ownVersion(): Promise<string> {
  return (await findPackageRoot())?.version ?? '0.0.0';
}
