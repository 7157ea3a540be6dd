/**
 * Windows x64 addons compiled on Linux with MinGW-w64. node-gyp builds Windows addons with MSVC
 * only, so this reads what to compile the way node-gyp would (gyp itself resolves binding.gyp
 * with `OS=="win"`: `-f gypd` writes the targets with their conditions and dependencies'
 * settings applied) and compiles it with mingw's `-posix` compilers, linked statically (the addon
 * needs no MinGW DLL) against an import library made from the target's own node.exe exports,
 * delay-loaded with node-gyp's hook so a renamed node.exe loads it too. Node-API only: V8's and
 * Node's C++ API are MSVC's ABI, which MinGW cannot link against.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chown, mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BundleError } from '../errors.js';
import { readPeExports } from './pe.js';
import type { Toolchain } from './toolchains.js';
import { formatTarget, type Target } from '../target.js';

/** Runs a program (inside the build's sandbox, as the build's user); resolves with its exit and output. */
export type RunTool = (command: string, args: string[], options: { cwd: string }) => Promise<{ code: number | null; stdout: string; stderr: string }>;

/** A gyp target as `-f gypd` writes it (conditions resolved, dependencies' settings merged). */
interface GypdTarget {
  target_name: string;
  type: string;
  sources?: string[];
  dependencies?: string[];
  libraries?: string[];
  link_settings?: { libraries?: string[] };
  actions?: unknown[];
  rules?: unknown[];
  copies?: Array<{ destination: string; files: string[] }>;
  product_name?: string;
  product_extension?: string;
  product_dir?: string;
  default_configuration?: string;
  configurations?: Record<string, GypdSettings>;
}

interface GypdSettings {
  defines?: string[];
  include_dirs?: string[];
  msvs_settings?: { VCCLCompilerTool?: { AdditionalOptions?: string[] | string } };
  libraries?: string[];
}

/** One gyp file's targets, keyed by the file's path relative to the package. */
type GypdFiles = Record<string, { targets?: GypdTarget[] }>;

/** Why an addon is not built here: the package, and what in it needs the target's own compiler. */
export class WindowsBuildRefusal extends Error {
  constructor(readonly packageName: string, readonly reason: string) {
    super(`${packageName}: ${reason}`);
  }
}

/** What to do about an addon this machine cannot build for Windows. */
export function windowsBuilderHint(target: Target): string {
  const name = formatTarget(target, { withNode: false });
  return `Add a ${name} builder (a Windows machine) to the ${name} pool in .bundlerc so the addon is compiled there, or use a version of the package that ships a ${name} prebuild.`;
}

/** What each build of an addon package produced, relative to the package dir. */
export interface WindowsBuildResult {
  name: string;
  products: string[];
}

const SOURCE_LANGUAGE: Record<string, 'c' | 'c++'> = { '.c': 'c', '.cc': 'c++', '.cpp': 'c++', '.cxx': 'c++', '.c++': 'c++' };
/** Not compiled, never a reason to refuse (headers and other inputs gyp lists for IDEs). */
const IGNORED_SOURCE = /\.(h|hh|hpp|hxx|inl|ipp|def|gyp|gypi|txt|md)$/i;
/** Headers that mean V8's or Node's C++ API (MSVC ABI on Windows). */
const V8_API_INCLUDE = /^\s*#\s*include\s*[<"](?:node|v8|nan|node_object_wrap|node_buffer|node_version_h_only|v8-[\w-]+)\.h[>"]/m;
/** Install scripts whose whole job is building binding.gyp (or loading a prebuild, or else building it). */
const GYP_INSTALL_SCRIPTS = [/^node-gyp rebuild$/, /^node-gyp-build(-optional-packages)?$/, /^prebuild-install( [^|&;]*)? \|\| node-gyp rebuild( [^|&;]*)?$/];
/** node-pre-gyp's: download a binary, else build binding.gyp into `binary.module_path` (the download is unreachable here anyway). */
const NODE_PRE_GYP_INSTALL = /^node-pre-gyp install --fallback-to-build( --[\w-]+(=\S+)?)*$/;
/** The placeholders of node-pre-gyp's `binary.module_path` this build can fill in for win32-x64. */
const MODULE_PATH_PLACEHOLDER = /\{(\w+)\}/g;

/**
 * node-gyp's delay-load hook (src/win_delay_load_hook.cc), for MinGW: when the addon's
 * delay-loaded `node.exe` is first used, hand back the running executable, whatever its name.
 */
const DELAY_LOAD_HOOK = `#include <windows.h>
#include <delayimp.h>
static FARPROC WINAPI load_exe_hook(unsigned int event, PDelayLoadInfo info) {
  if (event != dliNotePreLoadLibrary) return NULL;
  if (_stricmp(info->szDll, "node.exe") != 0) return NULL;
  return (FARPROC)GetModuleHandle(NULL);
}
PfnDliHook __pfnDliNotifyHook2 = load_exe_hook;
`;

/**
 * The delay-import library of node.exe's C exports (everything an addon may link: Node-API,
 * libuv, OpenSSL, zlib), made once per node.exe beside it, and the full export list for the
 * import check. Written to a temporary name and renamed, so a half-made library is never used.
 */
export async function nodeImportLibrary(options: { nodeExe: string; dlltool: string; run: (command: string, args: string[]) => Promise<{ code: number | null; stderr: string }> }): Promise<{ library: string; exports: Set<string> }> {
  const exports = await readPeExports(options.nodeExe);
  const dir = path.join(path.dirname(path.dirname(options.nodeExe)), 'mingw');
  const library = path.join(dir, 'libnode-delay.a');
  if (existsSync(library)) return { library, exports: new Set(exports) };
  await mkdir(dir, { recursive: true });
  const suffix = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const def = path.join(dir, `node-${suffix}.def`);
  const partial = `${library}.${suffix}`;
  // C names only: MSVC-mangled C++ names cannot be used from MinGW anyway, and dlltool chokes on '?'.
  await writeFile(def, `LIBRARY node.exe\nEXPORTS\n${exports.filter((name) => /^[A-Za-z_]\w*$/.test(name)).map((name) => `  ${name}\n`).join('')}`);
  try {
    const made = await options.run(options.dlltool, ['-d', def, '-y', partial, '-D', 'node.exe']);
    if (made.code !== 0) throw new BundleError('ERR_NATIVE_BUILD', `dlltool could not make node.exe's import library: ${made.stderr.trim()}`);
    await rename(partial, library);
  } finally {
    await rm(def, { force: true });
    await rm(partial, { force: true });
  }
  return { library, exports: new Set(exports) };
}

/**
 * Whether a package's install work is a binding.gyp build this module can do for Windows: a
 * binding.gyp, and install scripts (if any) that only build it (`node-gyp rebuild`,
 * `node-gyp-build`, `prebuild-install || node-gyp rebuild`). Anything else → the reason not.
 */
export function windowsBuildable(packageJson: Record<string, unknown>, hasBindingGyp: boolean): string | undefined {
  if (!hasBindingGyp) return 'its install script is not a binding.gyp build';
  const scripts = (typeof packageJson.scripts === 'object' && packageJson.scripts !== null ? packageJson.scripts : {}) as Record<string, unknown>;
  const dependencies = (typeof packageJson.dependencies === 'object' && packageJson.dependencies !== null ? packageJson.dependencies : {}) as Record<string, unknown>;
  if ('nan' in dependencies) return 'it is written against NAN (V8\'s C++ API, which MinGW cannot link for Windows: MSVC\'s ABI)';
  for (const script of ['preinstall', 'install', 'postinstall'] as const) {
    const body = scripts[script];
    if (typeof body !== 'string' || body.trim() === '' || GYP_INSTALL_SCRIPTS.some((pattern) => pattern.test(body.trim()))) continue;
    if (NODE_PRE_GYP_INSTALL.test(body.trim()) && nodePreGypBinary(packageJson)) continue;
    return `its ${script} script (${body.trim()}) does more than build binding.gyp`;
  }
  return undefined;
}

/** node-pre-gyp's `binary` settings of a package (module_name and module_path), if it has them. */
function nodePreGypBinary(packageJson: Record<string, unknown>): { module_name: string; module_path: string; napi_versions?: number[] } | undefined {
  const binary = packageJson.binary as { module_name?: unknown; module_path?: unknown; napi_versions?: unknown } | undefined;
  if (typeof binary?.module_name !== 'string' || typeof binary.module_path !== 'string') return undefined;
  const napiVersions = Array.isArray(binary.napi_versions) ? binary.napi_versions.filter((v): v is number => typeof v === 'number') : undefined;
  return { module_name: binary.module_name, module_path: binary.module_path, ...(napiVersions ? { napi_versions: napiVersions } : {}) };
}

/**
 * The gyp variables node-pre-gyp passes to node-gyp for a package with `binary` settings
 * (`--module_name`, `--module_path`, `--napi_build_version`, …), for win32-x64 and the target
 * Node: where the addon goes is where node-pre-gyp's `find` looks for it at run time there.
 */
export function nodePreGypVariables(packageJson: Record<string, unknown>, packageDir: string, node: { version: string; abi: string; napiMax: number }): Record<string, string> | undefined {
  const binary = nodePreGypBinary(packageJson);
  if (!binary) return undefined;
  const napi = binary.napi_versions ? Math.max(...binary.napi_versions.filter((v) => v <= node.napiMax)) : undefined;
  if (napi !== undefined && !Number.isFinite(napi)) throw new WindowsBuildRefusal(String(packageJson.name), `binary.napi_versions (${binary.napi_versions?.join(', ') ?? ''}) asks for a Node-API newer than Node ${node.version} has (${node.napiMax})`);
  const values: Record<string, string> = {
    module_name: binary.module_name, version: String(packageJson.version), name: String(packageJson.name), platform: 'win32', arch: 'x64', target_arch: 'x64',
    libc: 'unknown', configuration: 'Release', toolset: '', node_abi: `node-v${node.abi}`, major: String(semverMajor(String(packageJson.version))),
    ...(napi !== undefined ? { napi_build_version: String(napi), node_napi_label: `napi-v${napi}` } : { node_napi_label: `node-v${node.abi}` }),
  };
  const modulePath = binary.module_path.replace(MODULE_PATH_PLACEHOLDER, (whole, key: string) => {
    const value = values[key];
    if (value === undefined) throw new WindowsBuildRefusal(String(packageJson.name), `binary.module_path uses ${whole}, which this Windows build cannot fill in`);
    return value;
  });
  const resolved = path.resolve(packageDir, modulePath);
  if (resolved !== packageDir && !resolved.startsWith(`${packageDir}${path.sep}`)) throw new WindowsBuildRefusal(String(packageJson.name), `binary.module_path (${binary.module_path}) points outside the package`);
  return {
    module_name: binary.module_name, module_path: resolved, node_abi_napi: napi !== undefined ? 'napi' : `node-v${node.abi}`, node_napi_label: values.node_napi_label as string,
    ...(napi !== undefined ? { napi_build_version: String(napi), napi_version: String(node.napiMax) } : {}),
  };
}

function semverMajor(version: string): number {
  return Number.parseInt(version.split('.')[0] ?? '0', 10) || 0;
}

/** The newest Node-API version the Node of these headers supports (node_version.h). */
export async function supportedNodeApi(headers: string): Promise<number> {
  const text = await readFile(path.join(headers, 'node_version.h'), 'utf8').catch(() => '');
  return Number.parseInt(/#define NODE_API_SUPPORTED_VERSION_MAX (\d+)/.exec(text)?.[1] ?? /#define NAPI_VERSION (\d+)/.exec(text)?.[1] ?? '8', 10);
}

/**
 * Builds one package's binding.gyp for win32-x64: gyp resolves it (running `<!(…)` commands
 * through `run`, so inside the sandbox), the V8-API check refuses before anything compiles, then
 * every source is compiled (in parallel) and each addon linked to `build/Release/<name>.node`
 * (or the target's product_dir), stripped, with its delay-import directory set.
 *
 * @example
 * await buildWindowsAddon({ name: 'my-addon', packageDir, toolchain, headers: '/…/include/node', nodeLibrary, workDir, gyp, run, log });
 */
export async function buildWindowsAddon(options: {
  name: string;
  packageDir: string;
  toolchain: Toolchain;
  /** The target version's `include/node` (Node's headers are the same on every platform). */
  headers: string;
  /** From {@link nodeImportLibrary}. */
  nodeLibrary: string;
  /** Scratch space for objects, outside the package (nothing of it is bundled). */
  workDir: string;
  /** node-gyp's `gyp_main.py`, and the python that runs it. */
  gyp: { main: string; python: string };
  /** More gyp variables (`-Dname=value`): node-pre-gyp's, from {@link nodePreGypVariables}. */
  variables?: Record<string, string>;
  run: RunTool;
  /** The build's user, when `run` runs as another: the directories made here are handed over. */
  owner?: { uid: number; gid: number };
  log: (line: string) => void;
}): Promise<WindowsBuildResult> {
  const { packageDir, toolchain } = options;
  const makeDir = (dir: string) => makeOwnedDir(dir, options.owner);
  await makeDir(options.workDir);
  const files = await resolveGyp(options);
  const binding = files['binding.gyp'];
  if (!binding?.targets) throw new WindowsBuildRefusal(options.name, 'gyp found no targets in binding.gyp');
  const targets = new Map<string, { file: string; target: GypdTarget }>();
  for (const [file, data] of Object.entries(files)) for (const target of data.targets ?? []) targets.set(`${file}:${target.target_name}`, { file, target });

  const objectsDir = path.join(options.workDir, createHash('sha256').update(packageDir).digest('hex').slice(0, 16));
  await makeDir(objectsDir);
  const hook = path.join(objectsDir, 'delay-load-hook.c');
  await writeFile(hook, DELAY_LOAD_HOOK);

  const built = new Map<string, string[]>(); // target key → what it adds to a link (objects of static libraries)
  const products: string[] = [];
  const copies: Array<{ dir: string; copy: { destination: string; files: string[] } }> = [];
  const order = dependencyOrder(targets, Object.keys(files).filter((file) => file === 'binding.gyp'));
  for (const key of order) {
    const { file, target } = targets.get(key) as { file: string; target: GypdTarget };
    const gypDir = path.join(packageDir, path.dirname(file));
    if ((target.actions?.length ?? 0) > 0 || (target.rules?.length ?? 0) > 0) {
      throw new WindowsBuildRefusal(options.name, `gyp target ${target.target_name} runs actions or rules (generated code), which this Windows build does not run`);
    }
    for (const copy of target.copies ?? []) copies.push({ dir: gypDir, copy });
    if (target.type === 'none') continue;
    if (!['loadable_module', 'shared_library', 'static_library'].includes(target.type)) {
      throw new WindowsBuildRefusal(options.name, `gyp target ${target.target_name} is a ${target.type}, not an addon or a library`);
    }
    const settings = configurationOf(target);
    const sources: Array<{ file: string; language: 'c' | 'c++' }> = [];
    for (const source of target.sources ?? []) {
      const language = SOURCE_LANGUAGE[path.extname(source).toLowerCase()];
      if (language) sources.push({ file: path.resolve(gypDir, source), language });
      else if (!IGNORED_SOURCE.test(source)) throw new WindowsBuildRefusal(options.name, `gyp target ${target.target_name} lists ${source}, which this Windows build cannot compile (C and C++ only)`);
    }
    await refuseV8Api(options.name, sources.map((source) => source.file), packageDir);
    const flags = compileFlags(settings, gypDir, options.headers, target.target_name, packageDir);
    const objects = await compileAll(sources.map((source, index) => ({
      ...source,
      object: path.join(objectsDir, `${target.target_name}-${index}-${path.basename(source.file)}.o`),
    })), flags, { ...options, packageDir });
    if (target.type === 'static_library') {
      built.set(key, objects);
      continue;
    }
    const linked = (target.dependencies ?? []).flatMap((dependency) => built.get(dependencyKey(file, dependency)) ?? []);
    const productDir = target.product_dir ? path.resolve(gypDir, target.product_dir.replace('<(PRODUCT_DIR)', 'build/Release')) : path.join(packageDir, 'build', 'Release');
    const product = path.join(productDir, `${target.product_name ?? target.target_name}.${target.product_extension ?? 'node'}`);
    await makeDir(productDir);
    const hookObject = path.join(objectsDir, 'delay-load-hook.o');
    if (!existsSync(hookObject)) await tool(options, toolchain.cc, ['-c', '-O2', hook, '-o', hookObject], 'compiling the delay-load hook');
    const libraries = [...(target.libraries ?? []), ...(target.link_settings?.libraries ?? []), ...(settings.libraries ?? [])].map((library) => linkLibrary(library, gypDir));
    options.log(`LINK ${path.relative(packageDir, product)}`);
    await tool(options, toolchain.cxx, [
      // No time stamp, and a fixed preferred base (MinGW derives one from the output's path): same sources, same bytes.
      '-shared', '-static', '-Wl,--no-insert-timestamp', '-Wl,--disable-auto-image-base', '-o', product,
      ...objects, ...linked, hookObject, options.nodeLibrary, '-ldelayimp', ...libraries,
    ], `linking ${target.target_name}`);
    await finishProduct(product, options);
    products.push(path.relative(packageDir, product));
  }
  const copied = new Set<string>();
  for (const { dir, copy } of copies) {
    const destination = path.resolve(dir, copy.destination.replace('<(PRODUCT_DIR)', 'build/Release'));
    await makeDir(destination);
    for (const file of copy.files) {
      const from = path.resolve(dir, file.replace('<(PRODUCT_DIR)', 'build/Release'));
      await writeFile(path.join(destination, path.basename(from)), await readFile(from));
      products.push(path.relative(packageDir, path.join(destination, path.basename(from))));
      copied.add(path.relative(packageDir, from));
    }
  }
  if (options.variables?.module_path) {
    // node-pre-gyp loads from module_path only; its own builds leave nothing loadable in build/ either.
    for (const product of [...products]) {
      if (!copied.has(product)) continue;
      await rm(path.join(packageDir, product), { force: true });
      products.splice(products.indexOf(product), 1);
    }
  }
  if (products.length === 0) throw new WindowsBuildRefusal(options.name, 'binding.gyp builds no addon (no loadable_module or shared_library target)');
  return { name: options.name, products: products.sort() };
}

/**
 * gyp with `-f gypd -DOS=win -Dtarget_arch=x64`: binding.gyp and the gyp files it depends on
 * (node-addon-api's), each with conditions resolved and dependencies' settings merged, as JSON.
 * The `.gypd` files gyp writes beside each `.gyp` (over any of that name) are read and removed in the same run.
 */
async function resolveGyp(options: { name: string; packageDir: string; workDir: string; gyp: { main: string; python: string }; variables?: Record<string, string>; run: RunTool }): Promise<GypdFiles> {
  const defaults = path.join(options.workDir, 'addon-defaults.gypi');
  const output = path.join(options.workDir, `gypd-${createHash('sha256').update(options.packageDir).digest('hex').slice(0, 16)}.json`);
  // What node-gyp's addon.gypi gives every target that matters to a Node-API build.
  await writeFile(defaults, JSON.stringify({ target_defaults: { type: 'loadable_module', product_extension: 'node', defines: ['NODE_GYP_MODULE_NAME=>(_target_name)'] } }));
  const script = [
    'import ast, json, os, sys',
    'gyp_main, binding, output = sys.argv[1:4]',
    'sys.path.insert(0, os.path.join(os.path.dirname(gyp_main), "pylib"))',
    'import gyp',
    'root = os.path.dirname(os.path.abspath(binding))',
    'def gypd_files():',
    '  for top, dirs, files in os.walk(root):',
    '    for name in files:',
    '      if name.endswith(".gypd") and os.path.exists(os.path.join(top, name[:-1])): yield os.path.join(top, name)',
    'code = gyp.main([binding, "-f", "gypd", "--depth=."] + sys.argv[4:])',
    'found = {}',
    'for file in list(gypd_files()):',
    '  with open(file) as handle: found[os.path.relpath(file[:-1], root)] = ast.literal_eval(handle.read())',
    '  os.remove(file)',
    'json.dump(found, open(output, "w"))',
    'sys.exit(code)',
  ].join('\n');
  const result = await options.run(options.gyp.python, ['-c', script, options.gyp.main, 'binding.gyp', output,
    '-I', defaults, '-DOS=win', '-Dtarget_arch=x64', '-Dhost_arch=x64', '-Dnode_engine=v8', `-Dmodule_root_dir=${options.packageDir}`,
    '-Dnode_root_dir=', '-Dnode_gyp_dir=', '-Dnode_lib_file=node.lib', '-Dlibrary=shared_library', '-Dvisibility=default',
    ...Object.entries(options.variables ?? {}).map(([name, value]) => `-D${name}=${value}`)], { cwd: options.packageDir });
  const text = await readFile(output, 'utf8').catch(() => undefined);
  await rm(output, { force: true });
  if (result.code !== 0 || text === undefined) {
    throw new WindowsBuildRefusal(options.name, `gyp could not read binding.gyp for Windows: ${lastLines(`${result.stdout}\n${result.stderr}`)}`);
  }
  return JSON.parse(text) as GypdFiles;
}

/** `mkdir -p`, each directory it made handed to `owner`. */
async function makeOwnedDir(dir: string, owner?: { uid: number; gid: number }): Promise<void> {
  const first = await mkdir(dir, { recursive: true });
  if (!owner || first === undefined) return;
  for (let current = dir; ; current = path.dirname(current)) {
    await chown(current, owner.uid, owner.gid);
    if (current === first || current === path.dirname(current)) return;
  }
}

/** Targets to build, dependencies first, starting from the roots' targets. */
function dependencyOrder(targets: Map<string, { file: string; target: GypdTarget }>, rootFiles: string[]): string[] {
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (key: string) => {
    if (seen.has(key)) return;
    seen.add(key);
    const entry = targets.get(key);
    if (!entry) return;
    for (const dependency of entry.target.dependencies ?? []) visit(dependencyKey(entry.file, dependency));
    order.push(key);
  };
  for (const [key, entry] of targets) if (rootFiles.includes(entry.file)) visit(key);
  return order;
}

/** A gypd dependency (`node_modules/x/y.gyp:name#target`, relative to the depending file) as a target key. */
function dependencyKey(fromFile: string, dependency: string): string {
  const [file, name] = dependency.replace(/#\w+$/, '').split(':') as [string, string];
  return `${path.normalize(path.join(path.dirname(fromFile), file))}:${name}`;
}

function configurationOf(target: GypdTarget): GypdSettings {
  const configurations = target.configurations ?? {};
  return configurations.Release ?? configurations[target.default_configuration ?? 'Default'] ?? Object.values(configurations)[0] ?? {};
}

/** Compiler flags of a target: MSVC's defaults that matter to the sources, gyp's defines and include dirs. */
function compileFlags(settings: GypdSettings, gypDir: string, headers: string, targetName: string, packageDir: string): { c: string[]; cxx: string[] } {
  const defines = ['WIN32', '_WINDOWS', 'BUILDING_NODE_EXTENSION', 'HOST_BINARY="node.exe"', ...(settings.defines ?? [])]
    .map((define) => define.replace('>(_target_name)', targetName));
  const includes = [...(settings.include_dirs ?? []).map((dir) => path.resolve(gypDir, dir)), headers];
  const options = settings.msvs_settings?.VCCLCompilerTool?.AdditionalOptions;
  const standard = (Array.isArray(options) ? options : typeof options === 'string' ? options.split(/\s+/) : [])
    .map((option) => /^[/-]std:c\+\+(\w+)$/.exec(option)?.[1]).find((value) => value !== undefined);
  // gcc's -std names: c++latest has no fixed meaning, c++20 is the newest MSVC names for sure.
  const cxxStandard = standard === undefined ? 'gnu++17' : standard === 'latest' ? 'gnu++20' : `gnu++${standard}`;
  // No absolute build paths in the binary: it must not differ by workdir.
  const common = ['-O2', `-ffile-prefix-map=${packageDir}=.`, ...defines.map((define) => `-D${define}`), ...includes.map((dir) => `-I${dir}`)];
  return { c: common, cxx: [`-std=${cxxStandard}`, ...common] };
}

/** A gyp `libraries` entry as the MinGW linker takes it (`ws2_32.lib` → `-lws2_32`). */
function linkLibrary(library: string, gypDir: string): string {
  if (library.startsWith('-l') || library.startsWith('-L')) return library;
  if (/^[\w.-]+\.lib$/i.test(library)) return `-l${library.slice(0, -4)}`;
  return path.resolve(gypDir, library);
}

/** A Node-API addon must not use V8's or Node's C++ API: found in its sources or its own headers. */
async function refuseV8Api(name: string, sources: string[], packageDir: string): Promise<void> {
  const headers = await ownHeaders(packageDir);
  for (const file of [...sources, ...headers]) {
    const text = await readFile(file, 'utf8').catch(() => '');
    const include = V8_API_INCLUDE.exec(text);
    if (include) {
      throw new WindowsBuildRefusal(name, `${path.relative(packageDir, file)} includes ${include[0].trim().replace(/^#\s*include\s*/, '')}: V8's or Node's C++ API, which MinGW cannot link for Windows (MSVC's ABI); only Node-API addons are built here`);
    }
  }
}

/** The package's own C/C++ headers (not its dependencies'), a bounded walk. */
async function ownHeaders(packageDir: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (dir: string, depth: number): Promise<void> => {
    if (depth > 6 || found.length > 2000) return;
    for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      if (entry.name === 'node_modules' || entry.name.startsWith('.') || entry.name === 'build') continue;
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(full, depth + 1);
      else if (/\.(h|hh|hpp|hxx)$/i.test(entry.name)) found.push(full);
    }
  };
  await walk(packageDir, 0);
  return found;
}

async function compileAll(sources: Array<{ file: string; language: 'c' | 'c++'; object: string }>, flags: { c: string[]; cxx: string[] }, options: { packageDir: string; toolchain: Toolchain; run: RunTool; log: (line: string) => void }): Promise<string[]> {
  const queue = [...sources];
  const workers = Array.from({ length: Math.max(1, Math.min(os.availableParallelism(), queue.length)) }, async () => {
    for (let source = queue.shift(); source !== undefined; source = queue.shift()) {
      options.log(`${source.language === 'c' ? 'CC' : 'CXX'} ${path.relative(options.packageDir, source.file)}`);
      const compiler = source.language === 'c' ? options.toolchain.cc : options.toolchain.cxx;
      await tool(options, compiler, ['-c', ...(source.language === 'c' ? flags.c : flags.cxx), source.file, '-o', source.object], `compiling ${path.relative(options.packageDir, source.file)}`);
    }
  });
  await Promise.all(workers);
  return sources.map((source) => source.object);
}

async function tool(options: { packageDir: string; run: RunTool }, command: string, args: string[], what: string): Promise<string> {
  const result = await options.run(command, args, { cwd: options.packageDir });
  if (result.code !== 0) {
    throw new BundleError('ERR_NATIVE_BUILD', `MinGW failed ${what} for Windows: ${lastLines(result.stderr || result.stdout, 12)}`, {
      hint: 'The compiler\'s output above names the problem; a package that builds only with MSVC needs a Windows builder (a pool for win32-x64 in .bundlerc).',
    });
  }
  return result.stdout;
}

/**
 * Strips the product and points its delay-import directory at node.exe's descriptor: GNU ld
 * leaves data directory 13 empty for dlltool's delay imports (the helper finds them without it),
 * and every tool that lists what a DLL needs (ours included) reads that directory.
 */
export async function finishProduct(product: string, options: { toolchain: Toolchain; packageDir: string; run: RunTool }): Promise<void> {
  const binutils = options.toolchain.binutils;
  if (!binutils) throw new BundleError('ERR_CONFIG', 'The win32-x64 toolchain has no nm and strip.');
  const symbols = await tool(options, binutils.nm, [product], 'reading symbols');
  const descriptor = /^([0-9a-f]+) \w __DELAY_IMPORT_DESCRIPTOR_\w+$/m.exec(symbols);
  await tool(options, binutils.strip, ['--strip-all', product], 'stripping');
  if (!descriptor) throw new BundleError('ERR_NATIVE_BUILD', `${path.basename(product)}: no delay-import descriptor for node.exe after linking.`);
  await setDelayImportDirectory(product, BigInt(`0x${descriptor[1]}`));
}

/** Writes data directory 13 (delay imports) of a PE32+ file, one descriptor of 32 bytes at virtual address `address`, and a zero time stamp. */
async function setDelayImportDirectory(file: string, address: bigint): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    const dos = Buffer.alloc(64);
    await handle.read(dos, 0, 64, 0);
    const peOffset = dos.readUInt32LE(0x3c);
    const imageBase = Buffer.alloc(8);
    await handle.read(imageBase, 0, 8, peOffset + 24 + 24);
    const entry = Buffer.alloc(8);
    entry.writeUInt32LE(Number(address - imageBase.readBigUInt64LE(0)), 0);
    entry.writeUInt32LE(32, 4);
    // strip stamps the COFF header with the time and sums the file with it: zero both, as the
    // linker's --no-insert-timestamp leaves them, so the same sources give the same bytes
    // (Windows checks the sum of drivers only).
    await handle.write(Buffer.alloc(4), 0, 4, peOffset + 8);
    await handle.write(Buffer.alloc(4), 0, 4, peOffset + 24 + 64);
    // PE32+: the data directories start 112 bytes into the optional header, 8 bytes each.
    await handle.write(entry, 0, 8, peOffset + 24 + 112 + 13 * 8);
  } finally {
    await handle.close();
  }
}

function lastLines(text: string, count = 6): string {
  return text.trim().split('\n').slice(-count).join('\n');
}
