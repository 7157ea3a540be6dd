// `node --import <this file>`: appends the URL of every module the process loads (ESM through a
// loader hook, CommonJS through Module._load) to the file $RECORD_IMPORTS, one per line.
// test/cli/startup.test.ts uses it to check what a command loads.
import { appendFileSync } from 'node:fs';
import { Module, register } from 'node:module';
import { pathToFileURL } from 'node:url';

const out = process.env.RECORD_IMPORTS;
if (out) {
  register('./record-imports-hooks.mjs', import.meta.url);
  const load = Module._load;
  Module._load = function recordLoad(request, parent, isMain) {
    try {
      const file = Module._resolveFilename(request, parent, isMain);
      if (file.includes('/')) appendFileSync(out, `${pathToFileURL(file).href}\n`);
    } catch {
      // load() reports the failure.
    }
    return load.apply(this, arguments);
  };
}
