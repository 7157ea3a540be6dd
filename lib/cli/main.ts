import type { EventEmitter } from 'node:events';
import path from 'node:path';
import type { Writable } from 'node:stream';
import yargs, { type Argv } from 'yargs';
import { BundleError, toBundleError } from '../errors.js';
import { hostTarget, formatTarget } from '../target.js';
import { loadHookModules } from '../workflow/hooks.js';
import { createScaffold } from '../workflow/scaffold.js';
import { runBundle, type BundleRequest } from './bundle.js';
import { loadCliConfig, workflowDefaults } from './config.js';
import { EXIT, errorJson, exitCodeFor, formatError } from './errors.js';
import { createLineView, createListrView, formatBytes, formatMs } from './progress.js';

export interface CliContext {
  env: NodeJS.ProcessEnv;
  cwd: string;
  stdout: Writable & { isTTY?: boolean };
  stderr: Writable & { isTTY?: boolean };
  /** Where SIGINT/SIGTERM come from (the process, in the bin). */
  signals?: EventEmitter;
}

interface CommonArgs {
  verbose: boolean;
  json: boolean;
  config?: string;
  hooks?: string[];
  registry?: string;
  'cache-dir'?: string;
  'keep-workdir'?: boolean;
}

/** The bundle command's own flags are the request's fields. */
type BundleArgs = CommonArgs & Pick<BundleRequest, 'input' | 'output' | 'os' | 'cpu' | 'libc' | 'node'>;

/** Flags that set config keys, by config key (no yargs defaults: config applies them). */
function configFlags(args: CommonArgs): Record<string, unknown> {
  return { hooks: args.hooks, registry: args.registry, cacheDir: args['cache-dir'], keepWorkdir: args['keep-workdir'] };
}

function commonOptions<T>(argv: Argv<T>) {
  return argv
    .option('json', { type: 'boolean', default: false, describe: 'Print exactly one JSON document on stdout (for scripts and cron).' })
    .option('verbose', { type: 'boolean', default: false, describe: 'Show npm\'s full output and stack traces.' })
    .option('config', { type: 'string', describe: 'Read this config file instead of the nearest .bundlerc.' })
    .option('hooks', { type: 'string', array: true, describe: 'Hook module(s) to load (repeatable); replaces the hooks of .bundlerc.' })
    .option('registry', { type: 'string', describe: 'npm registry URL for dependencies.' })
    .option('cache-dir', { type: 'string', describe: 'Directory for npm\'s cache and fetched Node runtimes.' })
    .option('keep-workdir', { type: 'boolean', describe: 'Keep the build\'s workdir for debugging.' });
}

async function commandBundle(args: BundleArgs, context: CliContext, signal: AbortSignal): Promise<number> {
  const config = await loadCliConfig(context, configFlags(args), args.config);
  const hookModules = await loadHookModules(config.hooks, context.cwd);
  const defaults = workflowDefaults(config, context.env);
  const host = hostTarget();
  const scaffold = createScaffold(defaults, hookModules.map((loadedModule) => loadedModule.module), {
    env: context.env,
    workRoot: config.workDir,
    npmCacheDir: path.join(config.cacheDir, 'npm'),
    runtimeCacheDir: path.join(config.cacheDir, 'runtimes'),
    host,
  });

  const interactive = !args.json && Boolean(context.stdout.isTTY) && !context.env.CI;
  const view = interactive
    ? createListrView(`Bundle ${path.basename(args.input)}`, { verbose: args.verbose })
    : createLineView(context.stderr, { verbose: args.verbose });
  try {
    const outcome = await runBundle(scaffold, { ...args, cwd: context.cwd, host }, { signal, onEvent: (event) => view.onEvent(event) });
    await view.done();
    if (args.json) {
      context.stdout.write(`${JSON.stringify(outcome, null, 2)}\n`);
    } else {
      const relative = path.relative(context.cwd, outcome.file) || outcome.file;
      context.stdout.write([
        `✔ ${relative}`,
        `  target   ${formatTarget(outcome.target)}  node ${outcome.node} (ABI ${outcome.abi})  npm ${outcome.npm}`,
        `  bundled  ${outcome.bundledDependencies.length} packages${outcome.nativeFiles.length ? `, ${outcome.nativeFiles.length} native file(s)` : ''}`,
        `  size     ${formatBytes(outcome.size)}  sha256 ${outcome.sha256}`,
        `  time     ${formatMs(Object.values(outcome.durations).reduce((sum, ms) => sum + (ms ?? 0), 0))}`,
        '',
      ].join('\n'));
    }
    return EXIT.ok;
  } catch (error) {
    await view.done(error);
    throw error;
  }
}

/**
 * Runs the CLI and returns the exit code; the bin sets process.exitCode from it. The only
 * place that decides exit codes and prints errors.
 */
export async function main(argv: string[], context: CliContext): Promise<number> {
  const controller = new AbortController();
  const onSignal = (name: string) => () => controller.abort(new BundleError('ERR_ABORTED', `Interrupted by ${name}.`));
  const onInt = onSignal('SIGINT');
  const onTerm = onSignal('SIGTERM');
  context.signals?.on('SIGINT', onInt);
  context.signals?.on('SIGTERM', onTerm);
  let json = argv.includes('--json');
  let verbose = argv.includes('--verbose');
  let exitCode: number = EXIT.ok;

  const fail = (error: unknown) => {
    const failure = toBundleError(error, controller.signal);
    exitCode = exitCodeFor(failure);
    if (json) context.stdout.write(`${JSON.stringify(errorJson(failure))}\n`);
    else context.stderr.write(formatError(failure, { verbose }));
  };

  // Commands load only when they can run or be listed: `bundle` must not pay for the HTTP
  // server, S3 and dispatch code at start-up.
  const first = argv.find((arg) => !arg.startsWith('-'));
  const builderModule = first === undefined || argv.includes('builder') ? await import('./builder.js') : undefined;
  const dispatchModule = first !== 'bundle' && first !== 'builder' && first !== 'verify' ? await import('./dispatch.js') : undefined;
  const verifyModule = first === undefined || first === 'verify' ? await import('./verify.js') : undefined;
  const setExitCode = (code: number) => {
    exitCode = code;
  };

  const parser = yargs(argv)
    .scriptName('bundle-dispatch')
    .usage('$0 <command> [options]\n\nBuild self-contained, platform-locked bundles of a Node.js package.')
    .command('bundle <input>', 'Bundle an npm pack tarball for this machine (or a cross target without native code).', (command) =>
      commonOptions(command)
        .positional('input', { type: 'string', demandOption: true, describe: 'The .tgz (or .tar) that `npm pack` wrote.' })
        .option('output', { alias: 'o', type: 'string', describe: 'Where to write the bundle (default: {name}-{version}-{os}-{cpu}[-{libc}]-node{major}.tgz in the current dir).' })
        .option('os', { type: 'string', describe: 'Target os (linux, darwin, win32); default: this machine.' })
        .option('cpu', { type: 'string', describe: 'Target cpu (x64, arm64, …); default: this machine.' })
        .option('libc', { type: 'string', choices: ['glibc', 'musl'], describe: 'Target libc (linux only); default: this machine\'s.' })
        .option('node', { type: 'string', describe: 'Node version range to build for; default: from the package\'s devEngines/engines.' })
        .example('$0 bundle my-app-1.0.0.tgz', 'bundle for this machine, Node from engines')
        .example('$0 bundle my-app-1.0.0.tgz --node 22 -o out/app.tgz', 'bundle for Node 22')
        .example('$0 bundle my-app-1.0.0.tgz --os darwin --cpu arm64', 'cross bundle (no native code allowed)')
        .example('$0 bundle my-app-1.0.0.tgz --json | jq .sha256', 'machine-readable result'),
    async (args) => {
      exitCode = await commandBundle(args as unknown as BundleArgs, context, controller.signal);
    })
    .command(builderModule ? [builderModule.builderCommand(context, controller.signal, setExitCode)] : [])
    .command(dispatchModule ? [dispatchModule.dispatchCommand(context, controller.signal, setExitCode)] : [])
    .command(dispatchModule ? [dispatchModule.statusCommand(context, controller.signal, setExitCode)] : [])
    .command(verifyModule ? [verifyModule.verifyCommand(context, controller.signal, setExitCode)] : [])
    .demandCommand(1, 'Give a command: bundle-dispatch bundle <input.tgz>. See --help.')
    .strict()
    .help()
    .alias('help', 'h')
    .version()
    .wrap(Math.min(110, (context.stdout as { columns?: number }).columns ?? 100))
    .exitProcess(false)
    .fail((message, error) => {
      throw error ?? new BundleError('ERR_USAGE', message, { hint: 'Run bundle-dispatch --help.' });
    });

  try {
    const parsed = await parser.parseAsync(argv, {}, (error, _result, output) => {
      if (output && !error) context.stdout.write(`${output}\n`);
    });
    json = Boolean((parsed as { json?: boolean }).json);
    verbose = Boolean((parsed as { verbose?: boolean }).verbose);
  } catch (error) {
    fail(error);
  } finally {
    context.signals?.off('SIGINT', onInt);
    context.signals?.off('SIGTERM', onTerm);
  }
  return exitCode;
}
