/**
 * The command table: every command's yargs definition (its flags, their help, examples) and a
 * handler that imports the command's module on first use. `--help` renders from these
 * definitions alone, so listing or checking a command costs yargs and this file: the builder's
 * HTTP server, the AWS SDK, got, listr2 and the workflow load only for the command that runs
 * (bench/startup.bench.js measures it, test/cli/startup.test.ts checks what loads).
 */
import type { Argv, CommandModule } from 'yargs';
import type { BuilderArgs } from './builder.js';
import type { BundleArgs } from './bundle.js';
import type { DispatchArgs, StatusArgs } from './dispatch.js';
import type { CliContext } from './context.js';
import type { CancelArgs, LogsArgs, PruneArgs, RunsArgs } from './runs.js';
import type { VerifyArgs } from './verify.js';
import type { WatchArgs } from './watch.js';

/** What every handler needs from main(): its context, the run's signal, where the exit code goes. */
export interface CommandRun {
  context: CliContext;
  signal: AbortSignal;
  setExitCode: (code: number) => void;
}

/**
 * An example as yargs' full-width row: the description as a shell comment above the command.
 * yargs' two-column layout caps the command at half the width and breaks it mid-word; this way
 * every line of a command stays whole at 80 columns (test/cli/help.test.ts) and copies as is.
 */
export function example(command: string, description: string): [string, string] {
  return [`# ${description}\n${command}`, ''];
}

function bundleOptions<T>(argv: Argv<T>) {
  return argv
    .option('json', { type: 'boolean', default: false, describe: 'Print exactly one JSON document on stdout (for scripts and cron).' })
    .option('verbose', { type: 'boolean', default: false, describe: 'Show npm\'s full output and stack traces.' })
    .option('config', { type: 'string', describe: 'Read this config file instead of the nearest .bundlerc.' })
    .option('hooks', { type: 'string', array: true, describe: 'Hook module(s) to load (repeatable); replaces the hooks of .bundlerc.' })
    .option('registry', { type: 'string', describe: 'npm registry URL for dependencies.' })
    .option('cache-dir', { type: 'string', describe: 'Directory for npm\'s cache and fetched Node runtimes.' })
    .option('keep-workdir', { type: 'boolean', describe: 'Keep the build\'s workdir for debugging.' })
    .option('sandbox', { type: 'string', choices: ['auto', 'required', 'off'], describe: 'Run npm and install scripts in a bubblewrap sandbox: auto (where it works), required, off (default auto).' })
    .option('gzip-level', { type: 'number', describe: 'Gzip level of the bundle: 1 (fastest) to 9 (smallest) (default 6).' })
    .positional('input', { type: 'string', demandOption: true, describe: 'The .tgz (or .tar) that `npm pack` wrote.' })
    .option('output', { alias: 'o', type: 'string', describe: 'Where to write the bundle (default: {name}-{version}-{os}-{cpu}[-{libc}]-node{major}.tgz in the current dir).' })
    .option('targets', { alias: ['t', 'target'], type: 'string', describe: 'The target as the main command names it, os-cpu[-libc][@node] (or --os/--cpu/--libc/--node); default: this machine.' })
    .option('os', { type: 'string', describe: 'Target os (linux, darwin, win32); default: this machine.' })
    .option('cpu', { type: 'string', describe: 'Target cpu (x64, arm64, …); default: this machine.' })
    .option('libc', { type: 'string', choices: ['glibc', 'musl'], describe: 'Target libc (linux only); default: this machine\'s.' })
    .option('node', { type: 'string', describe: 'Node version range to build for; default: from the package\'s devEngines/engines.' });
}

/** `bundle-dispatch bundle <input>`. */
export function bundleCommand({ context, signal, setExitCode }: CommandRun): CommandModule<object, BundleArgs> {
  return {
    command: 'bundle <input>',
    describe: 'Bundle an npm pack tarball for this machine (or a cross target without native code).',
    builder: (argv) => bundleOptions(argv)
      .example(...example('$0 bundle my-app-1.0.0.tgz', 'bundle for this machine, Node from engines'))
      .example(...example('$0 bundle my-app-1.0.0.tgz --node 22 -o out/app.tgz', 'bundle for Node 22'))
      .example(...example('$0 bundle my-app-1.0.0.tgz --os darwin --cpu arm64', 'cross bundle (no native code allowed)'))
      .example(...example('$0 bundle my-app-1.0.0.tgz --json | jq .sha256', 'machine-readable result')) as unknown as Argv<BundleArgs>,
    handler: async (args) => {
      const { commandBundle } = await import('./bundle.js');
      setExitCode(await commandBundle(args, context, signal));
    },
  };
}

function builderOptions<T>(argv: Argv<T>) {
  return argv
    .option('host', { type: 'string', describe: 'Address to listen on (default 127.0.0.1).' })
    .option('port', { type: 'number', describe: 'Port (default 7420; 0 = any free port, the URL is the first line on stdout).' })
    .option('store', { type: 'string', describe: 'Records, logs and results: a directory or s3://bucket/prefix.' })
    .option('slots', { type: 'number', describe: 'Builds that run at once (default: number of CPUs).' })
    .option('targets', { alias: 't', type: 'string', array: true, describe: 'Targets served os-cpu[-libc], comma-separated or repeated (default: this machine, the linux CPUs it has a cross toolchain for, and cross targets).' })
    .option('hooks', { type: 'string', array: true, describe: 'Hook module(s) every build loads.' })
    .option('token-file', { type: 'string', describe: 'File with accepted bearer tokens, one per line (besides $BUNDLE_DISPATCH_BUILDER_TOKENS; one of the two is required).' })
    .option('id', { type: 'string', describe: 'This builder\'s name in build records and provenance (builder.id; default the host name; replicas sharing a store need different ids).' })
    .option('signing-key', { type: 'string', describe: 'PEM private key that signs provenance (generated, mode 0600, when absent; public key beside it as *.pub.pem).' })
    .option('allow-sources', { type: 'string', array: true, describe: 'Loopback/private CIDRs or host names sources and outputs may point at (default: public addresses only; link-local never).' })
    .option('shutdown-grace', { type: 'number', describe: 'Seconds running builds get after SIGTERM (default 30); a second SIGTERM cancels them at once.' })
    .option('advertise-url', { type: 'string', describe: 'URL the other replicas of the pool reach this builder at (forwarded cancels).' })
    .option('metrics', { type: 'string', describe: 'Where GET /metrics is served: api (default: the API port, no token), a port of its own, or off.' })
    .option('registry', { type: 'string', describe: 'npm registry URL for dependencies.' })
    .option('cache-dir', { type: 'string', describe: 'npm cache and fetched Node runtimes.' })
    .option('sandbox', { type: 'string', choices: ['auto', 'required', 'off'], describe: 'Run builds in a bubblewrap sandbox: auto (where it works), required, off (default auto).' })
    .option('log-level', { type: 'string', choices: ['debug', 'info', 'warn', 'error'], describe: 'Log level on stderr: JSON lines, or readable lines on a terminal (default info).' })
    .option('config', { type: 'string', describe: 'Read this config file instead of the nearest .bundlerc.' });
}

/** `bundle-dispatch builder`. */
export function builderCommand({ context, signal, setExitCode }: CommandRun): CommandModule<object, BuilderArgs> {
  return {
    command: 'builder',
    describe: 'Run the builder service: the bundle workflow behind an HTTP API (see docs/builder.md). A token is required: $BUNDLE_DISPATCH_BUILDER_TOKENS (comma-separated) or --token-file.',
    builder: (argv) => builderOptions(argv)
      .example(...example('export BUNDLE_DISPATCH_BUILDER_TOKENS=$(openssl rand -hex 32)\n$0 builder --port 0 --store ./builder-store', 'a local builder on a free port; its URL is the first line on stdout'))
      .example(...example('$0 builder --host 0.0.0.0 --store s3://builds/x64 --id x64-1 \\\n--token-file /etc/bundle-dispatch/tokens -t linux-x64,linux-arm64', 'a pool member')) as unknown as Argv<BuilderArgs>,
    handler: async (args) => {
      const { commandBuilder } = await import('./builder.js');
      setExitCode(await commandBuilder(args, context, signal));
    },
  };
}

function dispatchOptions<T>(argv: Argv<T>) {
  return argv
    .positional('input', { type: 'string', demandOption: true, describe: 'A .tgz/.tar from npm pack, a package directory, a registry spec (name@version) or a git URL with #ref.' })
    .option('targets', { alias: 't', type: 'string', array: true, describe: 'Targets os-cpu[-libc][@node range], comma-separated or repeated (default: this machine).' })
    .option('source', { type: 'string', describe: 'Source store: a directory or s3://bucket/prefix (dispatch.source).' })
    .option('destination', { alias: 'd', type: 'string', describe: 'Destination store for bundles and manifest.json (dispatch.destination; default ./dist).' })
    .option('key-template', { type: 'string', describe: 'Destination key of a bundle (default {name}/{version}/{file}).' })
    .option('concurrency', { type: 'number', describe: 'Targets dispatched at once (default 8).' })
    .option('force', { type: 'boolean', describe: 'Rebuild targets the destination already holds.' })
    .option('overwrite', { type: 'boolean', describe: 'Replace a different object at a destination key (immutable otherwise).' })
    .option('fail-fast', { type: 'boolean', describe: 'Cancel the other targets on the first failure.' })
    .option('wait-lock', { type: 'number', describe: 'Seconds to wait for another run on the same destination + input (default 0: fail).' })
    .option('notify', { type: 'string', describe: 'POST the final JSON summary to this URL.' })
    .option('label', { type: 'string', describe: 'Label shown in the builders\' histories (e.g. "cron nightly").' })
    .option('json', { type: 'boolean', default: false, describe: 'Print exactly one JSON document on stdout.' })
    .option('verbose', { type: 'boolean', default: false, describe: 'Stream full build logs, prefixed by target; stack traces.' })
    .option('config', { type: 'string', describe: 'Read this config file instead of the nearest .bundlerc.' })
    .option('registry', { type: 'string', describe: 'npm registry URL (for npm pack and the lockfile).' })
    .option('cache-dir', { type: 'string', describe: 'npm cache, run history, locks and the default source store.' })
    .option('sandbox', { type: 'string', choices: ['auto', 'required', 'off'], describe: 'The embedded builder\'s sandbox for install scripts: auto, required, off (default auto).' })
    .option('gzip-level', { type: 'number', describe: 'Gzip level of the bundles, sent to every builder: 1 (fastest) to 9 (smallest) (default 6).' });
}

/** The default command: `bundle-dispatch <input> --targets …`. */
export function dispatchCommand({ context, signal, setExitCode }: CommandRun): CommandModule<object, DispatchArgs> {
  return {
    command: ['$0 <input>', 'dispatch <input>'],
    describe: 'Build bundles of <input> for every target on builders and deliver them, verified, to the destination.',
    builder: (argv) => dispatchOptions(argv)
      .example(...example('$0 my-app-1.0.0.tgz', 'this machine, embedded builder, bundles in ./dist'))
      .example(...example('$0 ./my-app --targets linux-x64,linux-arm64-musl@22 \\\n-d s3://releases/bundles', 'builder pools from .bundlerc'))
      .example(...example('$0 my-app@latest --targets linux-x64 --json', 'a registry spec, machine-readable'))
      .example(...example('$0 git+https://git.example/app.git#v1.2.0 --targets linux-x64', 'a git ref (the commit goes in the manifest)')) as unknown as Argv<DispatchArgs>,
    handler: async (args) => {
      const { commandDispatch } = await import('./dispatch.js');
      setExitCode(await commandDispatch(args, context, signal));
    },
  };
}

/** The flags of the commands that read the local run history (status, runs, logs, cancel, prune). */
function historyOptions<T>(argv: Argv<T>) {
  return argv
    .option('json', { type: 'boolean', default: false, describe: 'Print exactly one JSON document on stdout.' })
    .option('config', { type: 'string', describe: 'Read this config file instead of the nearest .bundlerc.' })
    .option('cache-dir', { type: 'string', describe: 'The cache dir whose run history to read (as given to dispatch; default ~/.cache/bundle-dispatch).' });
}

/** `bundle-dispatch status <run-id|build-url>`. */
export function statusCommand({ context, signal, setExitCode }: CommandRun): CommandModule<object, StatusArgs> {
  return {
    command: 'status [run]',
    describe: 'Show a dispatch run from the local history (re-attaching to its unfinished builds), or follow one build by its URL.',
    builder: (argv) => historyOptions(argv)
      .positional('run', { type: 'string', default: 'latest', describe: 'A run id (printed by every run), a unique prefix of one, latest (the default), or a build URL …/v1/builds/<id>.' })
      .option('verbose', { type: 'boolean', default: false, describe: 'Full build logs.' })
      .option('follow', { type: 'boolean', default: true, describe: 'Follow a running run to its end (--no-follow: show it once).' })
      .option('exit-status', { type: 'boolean', default: false, describe: 'Exit with the run\'s outcome: 0 delivered, 1 failed, 130 cancelled or interrupted, 8 still running (default: 0 once shown).' })
      .example(...example('$0 status 20260301T020000Z-1a2b3c4d', 'a run from the local history'))
      .example(...example('$0 status --exit-status', 'the latest run, followed to its end; exit 1 if a target failed'))
      .example(...example('$0 status <run-id> --json', 'one JSON document (the run document)')) as unknown as Argv<StatusArgs>,
    handler: async (args) => {
      const { commandStatus } = await import('./dispatch.js');
      setExitCode(await commandStatus(args, context, signal));
    },
  };
}

/** `bundle-dispatch runs`. */
export function runsCommand({ context, setExitCode }: CommandRun): CommandModule<object, RunsArgs> {
  return {
    command: 'runs',
    describe: 'List recent dispatch runs from the local history, newest first.',
    builder: (argv) => historyOptions(argv)
      .option('limit', { alias: 'n', type: 'number', default: 20, describe: 'Show at most this many runs.' })
      .option('state', { type: 'string', choices: ['running', 'succeeded', 'failed', 'cancelled', 'interrupted'], describe: 'Only runs in this state.' })
      .example(...example('$0 runs', 'the last 20 runs'))
      .example(...example('$0 runs --state failed --limit 5', 'the last 5 failed runs'))
      .example(...example('$0 runs --json', 'one JSON document {runs: […]}')) as unknown as Argv<RunsArgs>,
    handler: async (args) => {
      const { commandRuns } = await import('./runs.js');
      setExitCode(await commandRuns(args, context));
    },
  };
}

/** `bundle-dispatch logs <run-id>`. */
export function logsCommand({ context, signal, setExitCode }: CommandRun): CommandModule<object, LogsArgs> {
  return {
    command: 'logs <run>',
    describe: 'Print each target\'s build log of a run, prefixed by target (from its builder, or the local copy when the builder is gone).',
    builder: (argv) => historyOptions(argv)
      .positional('run', { type: 'string', demandOption: true, describe: 'A run id (bundle-dispatch runs lists them), a unique prefix of one, or latest.' })
      .option('targets', { alias: ['t', 'target'], type: 'string', describe: 'Only these targets, comma-separated (each a label, or os-cpu[-libc] without the @range).' })
      .option('follow', { alias: 'f', type: 'boolean', default: false, describe: 'For a running run: keep printing lines as they come until it ends.' })
      .example(...example('$0 logs 20260301T020000Z-1a2b3c4d', 'every target\'s log'))
      .example(...example('$0 logs 20260301T020000Z-1a2b3c4d -f', 'follow a running run to its end'))
      .example(...example('$0 logs --targets linux-arm64 <run-id>', 'one target')) as unknown as Argv<LogsArgs>,
    handler: async (args) => {
      const { commandLogs } = await import('./runs.js');
      setExitCode(await commandLogs(args, context, signal));
    },
  };
}

/** `bundle-dispatch cancel <run-id>`. */
export function cancelCommand({ context, signal, setExitCode }: CommandRun): CommandModule<object, CancelArgs> {
  return {
    command: 'cancel <run>',
    describe: 'Cancel a running dispatch run from another terminal: its builds are cancelled, the run is marked cancelled and its process exits 130.',
    builder: (argv) => historyOptions(argv)
      .positional('run', { type: 'string', demandOption: true, describe: 'A run id (bundle-dispatch runs --state running lists them), a unique prefix of one, or latest.' })
      .example(...example('$0 cancel 20260301T020000Z-1a2b3c4d', 'cancel that run'))
      .example(...example('$0 runs --state running --json', 'find the running ones first')) as unknown as Argv<CancelArgs>,
    handler: async (args) => {
      const { commandCancel } = await import('./runs.js');
      setExitCode(await commandCancel(args, context, signal));
    },
  };
}

/** `bundle-dispatch prune`. */
export function pruneCommand({ context, signal, setExitCode }: CommandRun): CommandModule<object, PruneArgs> {
  return {
    command: 'prune',
    describe: 'Remove old runs (and their logs), sources and embedded-builder builds from the cache dir; never what a manifest points at or a running run needs.',
    builder: (argv) => historyOptions(argv)
      .option('older-than', { type: 'string', describe: 'Retention: what was last written longer ago than this goes (30d, 12h, 2w; default 30d).' })
      .option('dry-run', { type: 'boolean', default: false, describe: 'List what would go, remove nothing.' })
      .example(...example('$0 prune --dry-run', 'what the default retention (30d) removes'))
      .example(...example('$0 prune --older-than 7d --json', 'a weekly cron job')) as unknown as Argv<PruneArgs>,
    handler: async (args) => {
      const { commandPrune } = await import('./runs.js');
      setExitCode(await commandPrune(args, context, signal));
    },
  };
}

/** `bundle-dispatch verify <bundle.tgz|url> --key PUB…`. */
export function verifyCommand({ context, signal, setExitCode }: CommandRun): CommandModule<object, VerifyArgs> {
  return {
    command: 'verify <bundle>',
    describe: 'Verify a bundle against its signed provenance (<bundle>.intoto.jsonl), offline, before installing it.',
    builder: (argv) => argv
      .positional('bundle', { type: 'string', demandOption: true, describe: 'The bundle: a .tgz file or an http(s) URL.' })
      .option('provenance', { type: 'string', describe: 'The provenance (file or URL); default <bundle>.intoto.jsonl.' })
      .option('key', { type: 'string', array: true, describe: 'A trusted public key of the builder (PEM file; repeatable).' })
      .option('source-sha256', { type: 'string', describe: 'Also require the bundle to be built from this source tarball (its sha256).' })
      .option('targets', { alias: ['t', 'target'], type: 'string', describe: 'Also require this target (os-cpu[-libc]).' })
      .option('builder', { type: 'string', describe: 'Also require this builder (its builder.id, or the URI urn:bundle-dispatch:builder:<id>).' })
      .option('json', { type: 'boolean', default: false, describe: 'Print exactly one JSON document on stdout.' })
      .example(...example('$0 verify app-1.0.0-linux-x64-glibc-node22.tgz \\\n--key builder.pub.pem --targets linux-x64', 'check before npm install'))
      .example(...example('$0 verify --key builder.pub.pem --json \\\nhttps://releases.example/app/1.0.0/app-1.0.0-linux-x64-glibc-node22.tgz', 'a published bundle')) as unknown as Argv<VerifyArgs>,
    handler: async (args) => {
      const { runVerify } = await import('./verify.js');
      setExitCode(await runVerify(args, context, signal));
    },
  };
}

/** `bundle-dispatch watch [input…]` and `bundle-dispatch watch status`. */
export function watchCommand({ context, signal, setExitCode }: CommandRun): CommandModule<object, WatchArgs> {
  return {
    command: 'watch [inputs..]',
    describe: 'Build every new version of what it follows (registry packages by dist-tag or semver range), through the normal dispatch; `watch status` shows what it knows.',
    builder: (argv) => argv
      .positional('inputs', { type: 'string', array: true, describe: 'What to follow: name@tag or name@range (default: watch.entries of .bundlerc); `status` shows the watcher\'s state.' })
      .option('targets', { alias: 't', type: 'string', array: true, describe: 'Targets of every dispatch, as for the main command (default: this machine).' })
      .option('destination', { alias: 'd', type: 'string', describe: 'Destination store (dispatch.destination; a manifest there means the version is done).' })
      .option('label', { type: 'string', describe: 'Label of the entry\'s runs in `runs` (default: the input).' })
      .option('once', { type: 'boolean', default: false, describe: 'Check every entry once, dispatch what is new, exit (for cron): 0 all delivered or nothing new, 1 a check or dispatch failed, 75 another watcher holds the state.' })
      .option('interval', { type: 'number', describe: 'Seconds between checks without --once (watch.interval, default 300).' })
      .option('backfill', { type: 'number', describe: 'On an entry\'s first check, build the N newest matches (watch.backfill, default 1).' })
      .option('max-tries', { type: 'number', describe: 'Give up on a failing version after N dispatches (watch.maxTries, default 3).' })
      .option('notify', { type: 'string', describe: 'POST each dispatch\'s summary, and a notice when a version is given up on, to this URL.' })
      .option('listen', { type: 'string', describe: 'host:port to receive push/tag webhooks from GitHub, GitLab and Gitea on (long-running only; secrets from BUNDLE_DISPATCH_WEBHOOK_*_SECRET).' })
      .option('json', { type: 'boolean', default: false, describe: 'One JSON document per check (or the state, for `watch status`) on stdout.' })
      .option('verbose', { type: 'boolean', default: false, describe: 'Show each dispatch\'s progress on stderr.' })
      .option('config', { type: 'string', describe: 'Read this config file instead of the nearest .bundlerc.' })
      .option('registry', { type: 'string', describe: 'npm registry URL (where versions are looked up and packed from).' })
      .option('cache-dir', { type: 'string', describe: 'Run history, locks and the watcher\'s state (<cache-dir>/watch/).' })
      .option('sandbox', { type: 'string', choices: ['auto', 'required', 'off'], describe: 'The embedded builder\'s sandbox for install scripts: auto, required, off (default auto).' })
      .example(...example('$0 watch my-app@latest --targets linux-x64,linux-arm64 \\\n-d s3://releases --once', 'cron: build the version latest points at, if new'))
      .example(...example('$0 watch @acme/app@^2 --backfill 3 --interval 600', 'every 2.x release, the 3 newest first; checks every 10 minutes'))
      .example(...example('$0 watch status --json', 'what the watcher knows: last check, newest, last dispatched, failures')) as unknown as Argv<WatchArgs>,
    handler: async (args) => {
      const { commandWatch } = await import('./watch.js');
      setExitCode(await commandWatch(args, context, signal));
    },
  };
}

/** Every command, in the order `--help` lists them. */
export function commandTable(run: CommandRun): CommandModule<object, never>[] {
  return [bundleCommand(run), builderCommand(run), dispatchCommand(run), statusCommand(run), runsCommand(run), logsCommand(run), cancelCommand(run), pruneCommand(run), verifyCommand(run), watchCommand(run)] as unknown as CommandModule<object, never>[];
}
