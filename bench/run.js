#!/usr/bin/env node
// `npm run bench [section…]`: runs each benchmark section in this process, one after the other,
// so every ratio it prints compares two measurements taken in the same run on the same machine.
import { readdir } from 'node:fs/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
// As in the bin: the AWS SDK is pinned to Node 20 releases on purpose; its notice is noise here.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const available = (await readdir(here))
  .filter((name) => name.endsWith('.bench.js'))
  .map((name) => name.slice(0, -'.bench.js'.length))
  .sort();
const wanted = process.argv.slice(2);
const unknown = wanted.filter((name) => !available.includes(name));
if (unknown.length > 0) {
  console.error(`Unknown bench section(s): ${unknown.join(', ')}. Available: ${available.join(', ')}`);
  process.exit(2);
}
for (const name of wanted.length > 0 ? wanted : available) {
  console.log(`\n## ${name}`);
  const section = await import(pathToFileURL(path.join(here, `${name}.bench.js`)).href);
  await section.run({ log: (line) => console.log(line) });
}
