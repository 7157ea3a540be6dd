/**
 * A Node-API addon's binding.gyp built for a platform node-gyp cannot build for from Linux
 * (Windows with MinGW, macOS with zig): gyp itself resolves binding.gyp for the target's OS
 * (`-f gypd` writes the targets with their conditions and dependencies' settings applied), then
 * each source is compiled and each addon linked by the platform's flavor (windows-build.ts,
 * darwin-build.ts). Node-API only: V8's and Node's C++ API are refused before anything compiles.
 */
import { createHash } from 'node:crypto';
import { chown, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BundleError } from '../errors.js';

/** Runs a program (inside the build's sandbox, as the build's user); resolves with its exit and output. */
export type RunTool = (command: string, args: string[], options: { cwd: string }) => Promise<{ code: number | null; stdout: string; stderr: string }>;

/** A gyp target as `-f gypd` writes it (conditions resolved, dependencies' settings merged). */
export interface GypdTarget {
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

export interface GypdSettings {
  defines?: string[];
  include_dirs?: string[];
  msvs_settings?: { VCCLCompilerTool?: { AdditionalOptions?: string[] | string } };
  xcode_settings?: Record<string, string | string[] | undefined>;
  libraries?: string[];
}

/** One gyp file's targets, keyed by the file's path relative to the package. */
type GypdFiles = Record<string, { targets?: GypdTarget[] }>;

/** Why an addon is not built here: the package, and what in it needs the target's own compiler. */
export class GypBuildRefusal extends Error {
  constructor(readonly packageName: string, readonly reason: string) {
    super(`${packageName}: ${reason}`);
  }
}

/** What each build of an addon package produced, relative to the package dir. */
export interface GypBuildResult {
  name: string;
  products: string[];
}

/** How one platform compiles and links what gyp resolved. */
export interface GypFlavor {
  /** gyp's `OS` and `target_arch`. */
  gyp: { os: 'win' | 'mac'; arch: string; platform: string };
  /** For messages: the platform ("Windows") and what compiles for it ("MinGW"). */
  platform: string;
  compiler: string;
  /** Why V8's or Node's C++ API cannot be linked for this platform here. */
  v8Reason: string;
  /** What to do when the compiler fails (a builder of the platform, usually). */
  failureHint: string;
  /** A refusal of a resolved target before anything compiles (macOS frameworks), or undefined. */
  refuseTarget?: (target: GypdTarget, settings: GypdSettings) => string | undefined;
  /** Flags of one target's compiles. */
  compileFlags: (settings: GypdSettings, gypDir: string, targetName: string) => { c: string[]; cxx: string[] };
  /** The program and leading arguments that compile a language (`zig cc -target …`). */
  compile: (language: 'c' | 'c++') => { command: string; args: string[] };
  /** Links one addon to `product` (already in its directory). */
  link: (input: { target: GypdTarget; settings: GypdSettings; gypDir: string; objects: string[]; product: string; objectsDir: string; tool: (command: string, args: string[], what: string) => Promise<string> }) => Promise<void>;
}

const SOURCE_LANGUAGE: Record<string, 'c' | 'c++'> = { '.c': 'c', '.cc': 'c++', '.cpp': 'c++', '.cxx': 'c++', '.c++': 'c++' };
/** Not compiled, never a reason to refuse (headers and other inputs gyp lists for IDEs). */
const IGNORED_SOURCE = /\.(h|hh|hpp|hxx|inl|ipp|def|gyp|gypi|txt|md)$/i;
/** Headers that mean V8's or Node's C++ API. */
const V8_API_INCLUDE = /^\s*#\s*include\s*[<"](?:node|v8|nan|node_object_wrap|node_buffer|node_version_h_only|v8-[\w-]+)\.h[>"]/m;
/** Install scripts whose whole job is building binding.gyp (or loading a prebuild, or else building it). */
const GYP_INSTALL_SCRIPTS = [/^node-gyp rebuild$/, /^node-gyp-build(-optional-packages)?$/, /^prebuild-install( [^|&;]*)? \|\| node-gyp rebuild( [^|&;]*)?$/];
/** node-pre-gyp's: download a binary, else build binding.gyp into `binary.module_path` (the download is unreachable here anyway). */
const NODE_PRE_GYP_INSTALL = /^node-pre-gyp install --fallback-to-build( --[\w-]+(=\S+)?)*$/;
/** The placeholders of node-pre-gyp's `binary.module_path` a build here can fill in. */
const MODULE_PATH_PLACEHOLDER = /\{(\w+)\}/g;

/**
 * Whether a package's install work is a binding.gyp build this module can do: a binding.gyp,
 * and install scripts (if any) that only build it (`node-gyp rebuild`, `node-gyp-build`,
 * `prebuild-install || node-gyp rebuild`). Anything else → the reason not. `v8Reason` says why
 * NAN (V8's C++ API) cannot be built for the platform.
 */
export function gypBuildable(packageJson: Record<string, unknown>, hasBindingGyp: boolean, v8Reason: string): string | undefined {
  if (!hasBindingGyp) return 'its install script is not a binding.gyp build';
  const scripts = (typeof packageJson.scripts === 'object' && packageJson.scripts !== null ? packageJson.scripts : {}) as Record<string, unknown>;
  const dependencies = (typeof packageJson.dependencies === 'object' && packageJson.dependencies !== null ? packageJson.dependencies : {}) as Record<string, unknown>;
  if ('nan' in dependencies) return `it is written against NAN (V8's C++ API, ${v8Reason})`;
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
 * (`--module_name`, `--module_path`, `--napi_build_version`, …), for the target platform and
 * Node: where the addon goes is where node-pre-gyp's `find` looks for it at run time there.
 */
export function nodePreGypVariables(packageJson: Record<string, unknown>, packageDir: string, node: { version: string; abi: string; napiMax: number }, platform: { platform: string; arch: string } = { platform: 'win32', arch: 'x64' }): Record<string, string> | undefined {
  const binary = nodePreGypBinary(packageJson);
  if (!binary) return undefined;
  const napi = binary.napi_versions ? Math.max(...binary.napi_versions.filter((v) => v <= node.napiMax)) : undefined;
  if (napi !== undefined && !Number.isFinite(napi)) throw new GypBuildRefusal(String(packageJson.name), `binary.napi_versions (${binary.napi_versions?.join(', ') ?? ''}) asks for a Node-API newer than Node ${node.version} has (${node.napiMax})`);
  const values: Record<string, string> = {
    module_name: binary.module_name, version: String(packageJson.version), name: String(packageJson.name), platform: platform.platform, arch: platform.arch, target_arch: platform.arch,
    libc: 'unknown', configuration: 'Release', toolset: '', node_abi: `node-v${node.abi}`, major: String(semverMajor(String(packageJson.version))),
    ...(napi !== undefined ? { napi_build_version: String(napi), node_napi_label: `napi-v${napi}` } : { node_napi_label: `node-v${node.abi}` }),
  };
  const modulePath = binary.module_path.replace(MODULE_PATH_PLACEHOLDER, (whole, key: string) => {
    const value = values[key];
    if (value === undefined) throw new GypBuildRefusal(String(packageJson.name), `binary.module_path uses ${whole}, which this ${platform.platform} build cannot fill in`);
    return value;
  });
  const resolved = path.resolve(packageDir, modulePath);
  if (resolved !== packageDir && !resolved.startsWith(`${packageDir}${path.sep}`)) throw new GypBuildRefusal(String(packageJson.name), `binary.module_path (${binary.module_path}) points outside the package`);
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

/** What every platform's build of one package is given. */
export interface GypBuildOptions {
  name: string;
  packageDir: string;
  /** The target version's `include/node` (Node's headers are the same on every platform). */
  headers: string;
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
}

/**
 * Builds one package's binding.gyp with a platform's flavor: gyp resolves it (running `<!(…)`
 * commands through `run`, so inside the sandbox), the V8-API check refuses before anything
 * compiles, then every source is compiled (in parallel) and each addon linked to
 * `build/Release/<name>.node` (or the target's product_dir).
 */
export async function buildGypAddon(options: GypBuildOptions & { flavor: GypFlavor }): Promise<GypBuildResult> {
  const { packageDir, flavor } = options;
  const makeDir = (dir: string) => makeOwnedDir(dir, options.owner);
  await makeDir(options.workDir);
  const files = await resolveGyp(options);
  const binding = files['binding.gyp'];
  if (!binding?.targets) throw new GypBuildRefusal(options.name, 'gyp found no targets in binding.gyp');
  const targets = new Map<string, { file: string; target: GypdTarget }>();
  for (const [file, data] of Object.entries(files)) for (const target of data.targets ?? []) targets.set(`${file}:${target.target_name}`, { file, target });

  const objectsDir = path.join(options.workDir, createHash('sha256').update(packageDir).digest('hex').slice(0, 16));
  await makeDir(objectsDir);
  const run = (command: string, args: string[], what: string) => tool({ ...options, packageDir }, command, args, what);

  const built = new Map<string, string[]>(); // target key → what it adds to a link (objects of static libraries)
  const products: string[] = [];
  const copies: Array<{ dir: string; copy: { destination: string; files: string[] } }> = [];
  const order = dependencyOrder(targets, Object.keys(files).filter((file) => file === 'binding.gyp'));
  // Every refusal before anything compiles: a package is built whole or not at all.
  const plan: Array<{ key: string; file: string; gypDir: string; target: GypdTarget; settings: GypdSettings; sources: Array<{ file: string; language: 'c' | 'c++' }> }> = [];
  for (const key of order) {
    const { file, target } = targets.get(key) as { file: string; target: GypdTarget };
    const gypDir = path.join(packageDir, path.dirname(file));
    if ((target.actions?.length ?? 0) > 0 || (target.rules?.length ?? 0) > 0) {
      throw new GypBuildRefusal(options.name, `gyp target ${target.target_name} runs actions or rules (generated code), which this ${flavor.platform} build does not run`);
    }
    for (const copy of target.copies ?? []) copies.push({ dir: gypDir, copy });
    if (target.type === 'none') continue;
    if (!['loadable_module', 'shared_library', 'static_library'].includes(target.type)) {
      throw new GypBuildRefusal(options.name, `gyp target ${target.target_name} is a ${target.type}, not an addon or a library`);
    }
    const settings = configurationOf(target);
    const refusal = flavor.refuseTarget?.(target, settings);
    if (refusal) throw new GypBuildRefusal(options.name, `gyp target ${target.target_name} ${refusal}`);
    const sources: Array<{ file: string; language: 'c' | 'c++' }> = [];
    for (const source of target.sources ?? []) {
      // <(SHARED_INTERMEDIATE_DIR) and the like: files another target's copies or actions make.
      if (/<\(\w+\)/.test(source)) throw new GypBuildRefusal(options.name, `gyp target ${target.target_name} compiles ${source}, a file gyp's build would generate, which this ${flavor.platform} build does not`);
      const language = SOURCE_LANGUAGE[path.extname(source).toLowerCase()];
      if (language) sources.push({ file: path.resolve(gypDir, source), language });
      else if (!IGNORED_SOURCE.test(source)) throw new GypBuildRefusal(options.name, `gyp target ${target.target_name} lists ${source}, which this ${flavor.platform} build cannot compile (C and C++ only)`);
    }
    await refuseV8Api(options.name, sources.map((source) => source.file), packageDir, flavor.v8Reason);
    plan.push({ key, file, gypDir, target, settings, sources });
  }
  for (const { key, file, gypDir, target, settings, sources } of plan) {
    const flags = flavor.compileFlags(settings, gypDir, target.target_name);
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
    options.log(`LINK ${path.relative(packageDir, product)}`);
    await flavor.link({ target, settings, gypDir, objects: [...objects, ...linked], product, objectsDir, tool: run });
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
  if (products.length === 0) throw new GypBuildRefusal(options.name, 'binding.gyp builds no addon (no loadable_module or shared_library target)');
  return { name: options.name, products: products.sort() };
}

/**
 * gyp with `-f gypd -DOS=<os> -Dtarget_arch=<arch>`: binding.gyp and the gyp files it depends on
 * (node-addon-api's), each with conditions resolved and dependencies' settings merged, as JSON.
 * The `.gypd` files gyp writes beside each `.gyp` (over any of that name) are read and removed in the same run.
 */
async function resolveGyp(options: { name: string; packageDir: string; workDir: string; flavor: GypFlavor; gyp: { main: string; python: string }; variables?: Record<string, string>; run: RunTool }): Promise<GypdFiles> {
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
  const { os: gypOs, arch } = options.flavor.gyp;
  const result = await options.run(options.gyp.python, ['-c', script, options.gyp.main, 'binding.gyp', output,
    '-I', defaults, `-DOS=${gypOs}`, `-Dtarget_arch=${arch}`, '-Dhost_arch=x64', '-Dnode_engine=v8', `-Dmodule_root_dir=${options.packageDir}`,
    '-Dnode_root_dir=', '-Dnode_gyp_dir=', `-Dnode_lib_file=${gypOs === 'win' ? 'node.lib' : ''}`, '-Dlibrary=shared_library', '-Dvisibility=default',
    ...Object.entries(options.variables ?? {}).map(([name, value]) => `-D${name}=${value}`)], { cwd: options.packageDir });
  const text = await readFile(output, 'utf8').catch(() => undefined);
  await rm(output, { force: true });
  if (result.code !== 0 || text === undefined) {
    throw new GypBuildRefusal(options.name, `gyp could not read binding.gyp for ${options.flavor.platform}: ${lastLines(`${result.stdout}\n${result.stderr}`)}`);
  }
  return JSON.parse(text) as GypdFiles;
}

/** `mkdir -p`, each directory it made handed to `owner`. */
export async function makeOwnedDir(dir: string, owner?: { uid: number; gid: number }): Promise<void> {
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

/** A Node-API addon must not use V8's or Node's C++ API: found in its sources or its own headers. */
async function refuseV8Api(name: string, sources: string[], packageDir: string, v8Reason: string): Promise<void> {
  const headers = await ownHeaders(packageDir);
  for (const file of [...sources, ...headers]) {
    const text = await readFile(file, 'utf8').catch(() => '');
    const include = V8_API_INCLUDE.exec(text);
    if (include) {
      throw new GypBuildRefusal(name, `${path.relative(packageDir, file)} includes ${include[0].trim().replace(/^#\s*include\s*/, '')}: V8's or Node's C++ API, ${v8Reason}; only Node-API addons are built here`);
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

async function compileAll(sources: Array<{ file: string; language: 'c' | 'c++'; object: string }>, flags: { c: string[]; cxx: string[] }, options: { packageDir: string; flavor: GypFlavor; run: RunTool; log: (line: string) => void }): Promise<string[]> {
  const queue = [...sources];
  const workers = Array.from({ length: Math.max(1, Math.min(os.availableParallelism(), queue.length)) }, async () => {
    for (let source = queue.shift(); source !== undefined; source = queue.shift()) {
      options.log(`${source.language === 'c' ? 'CC' : 'CXX'} ${path.relative(options.packageDir, source.file)}`);
      const compiler = options.flavor.compile(source.language);
      await tool(options, compiler.command, [...compiler.args, '-c', ...(source.language === 'c' ? flags.c : flags.cxx), source.file, '-o', source.object], `compiling ${path.relative(options.packageDir, source.file)}`);
    }
  });
  await Promise.all(workers);
  return sources.map((source) => source.object);
}

/** Runs one tool of the build; a failure is ERR_NATIVE_BUILD with the tool's last lines. */
export async function tool(options: { packageDir: string; flavor: Pick<GypFlavor, 'compiler' | 'platform' | 'failureHint'>; run: RunTool }, command: string, args: string[], what: string): Promise<string> {
  const result = await options.run(command, args, { cwd: options.packageDir });
  if (result.code !== 0) {
    throw new BundleError('ERR_NATIVE_BUILD', `${options.flavor.compiler} failed ${what} for ${options.flavor.platform}: ${lastLines(result.stderr || result.stdout, 12)}`, { hint: options.flavor.failureHint });
  }
  return result.stdout;
}

function lastLines(text: string, count = 6): string {
  return text.trim().split('\n').slice(-count).join('\n');
}
