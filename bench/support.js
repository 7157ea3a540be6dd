// What the dispatch-side benches share: where the repo is, its built modules, an environment
// without secrets, the npm tools of the dispatching side, and the express app they build.
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** A module of the build (`npm run build` first), e.g. lib('dispatch/run.js'). */
export const lib = (name) => import(path.join(repo, 'build', 'lib', name));

/** This process's environment without tokens, secrets or AWS settings. */
export function benchEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !/TOKEN|SECRET|AWS_/i.test(name)));
}

/** npm for the dispatching side (packing, lockfiles), with the tests' npm cache under `cacheDir`. */
export async function dispatchTools(home, cacheDir) {
  const { locateNpm } = await lib('workflow/npm.js');
  return { node: process.execPath, npmCli: locateNpm(process.env.PATH), env: { PATH: process.env.PATH ?? '', HOME: home, npm_config_cache: path.join(cacheDir, 'npm'), npm_config_update_notifier: 'false' }, secrets: [] };
}

/** A typical app (express: ≥ 20 dependencies) in `dir`, as a package directory. */
export async function writeExpressApp(dir) {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'express-app', version: '1.0.0', main: 'index.js', dependencies: { express: '5.3.0' } }));
  await writeFile(path.join(dir, 'index.js'), 'module.exports = require("express");\n');
  return dir;
}

/**
 * The case the tool exists for: an app with a native addon of its own (the tests' V8 fixture,
 * C++ compiled by node-gyp against the target's headers) and express, as a package directory.
 */
export async function writeNativeApp(dir) {
  await mkdir(dir, { recursive: true });
  const fixture = path.join(repo, 'test', 'fixtures', 'v8-addon');
  await copyFile(path.join(fixture, 'v8adder.cc'), path.join(dir, 'v8adder.cc'));
  await copyFile(path.join(fixture, 'binding.gyp'), path.join(dir, 'binding.gyp'));
  await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'native-app', version: '1.0.0', main: 'index.js', dependencies: { express: '5.3.0' } }));
  await writeFile(path.join(dir, 'index.js'), 'module.exports = { add: require("./build/Release/v8adder.node").add, express: require("express") };\n');
  return dir;
}

/** A Node-API app (node-addon-api C++ with exceptions, test/fixtures/win-addon) plus express: what builds for win32 too. */
export async function writeNodeApiApp(dir) {
  const fixture = path.join(repo, 'test', 'fixtures', 'win-addon');
  await mkdir(path.join(dir, 'src'), { recursive: true });
  for (const file of ['binding.gyp', 'src/hello.cc', 'src/win.cc', 'src/posix.cc']) await copyFile(path.join(fixture, file), path.join(dir, file));
  await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'napi-app', version: '1.0.0', main: 'index.js', dependencies: { express: '5.3.0', 'node-addon-api': '8.9.2' } }));
  await writeFile(path.join(dir, 'index.js'), 'module.exports = { hello: require("./build/Release/hello.node").hello, express: require("express") };\n');
  return dir;
}
