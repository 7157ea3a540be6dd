import type { CliContext } from './context.js';
import { BundleError, toBundleError } from '../errors.js';
import { ownVersion } from '../package-root.js';
import { commandTable } from './commands.js';
import { cachedHelp, helpRequest, helpWidth } from './help-cache.js';
import { EXIT, errorJson, exitCodeFor, formatError } from './errors.js';
import { knownSecrets } from '../redact.js';
import { editDistance } from '../edit-distance.js';

export type { CliContext } from './context.js';

/**
 * Runs the CLI and returns the exit code; the bin sets process.exitCode from it. The only
 * place that decides exit codes and prints errors.
 */
export async function main(argv: string[], context: CliContext): Promise<number> {
  // `--version` alone needs neither yargs nor a command: answer it before loading them.
  if (argv.length === 1 && argv[0] === '--version') {
    context.stdout.write(`${await ownVersion()}\n`);
    return EXIT.ok;
  }
  // `--help` (and `<command> --help`): the text yargs rendered at build time for this width.
  const help = helpRequest(argv);
  if (help && !context.env.BUNDLE_DISPATCH_RENDER_HELP) {
    const text = await cachedHelp(help, helpWidth((context.stdout as { columns?: number }).columns));
    if (text !== undefined) {
      context.stdout.on('error', () => undefined);
      context.stdout.write(text);
      return EXIT.ok;
    }
  }
  const controller = new AbortController();
  const onSignal = (name: string) => () => controller.abort(new BundleError('ERR_ABORTED', `Interrupted by ${name}.`));
  const onInt = onSignal('SIGINT');
  const onTerm = onSignal('SIGTERM');
  context.signals?.on('SIGINT', onInt);
  context.signals?.on('SIGTERM', onTerm);
  // `bundle-dispatch logs <id> | head -1`: the reader went away. Stop quietly, like any Unix
  // tool whose output was closed: no stack trace, no error message, exit 0.
  let outputClosed = false;
  const onOutputError = (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE' && error.code !== 'ERR_STREAM_DESTROYED') throw error;
    outputClosed = true;
    controller.abort(new BundleError('ERR_ABORTED', 'The output was closed.'));
  };
  context.stdout.on('error', onOutputError);
  let json = argv.includes('--json');
  let verbose = argv.includes('--verbose');
  let exitCode: number = EXIT.ok;

  const fail = (error: unknown) => {
    if (outputClosed) {
      exitCode = EXIT.ok;
      return;
    }
    const failure = toBundleError(error, controller.signal);
    exitCode = exitCodeFor(failure);
    // A secret of this process that reached an error (a script printed it) is scrubbed here too.
    const secrets = knownSecrets(context.env);
    if (json) context.stdout.write(`${JSON.stringify(errorJson(failure, secrets))}\n`);
    else context.stderr.write(formatError(failure, { verbose, secrets }));
  };

  const setExitCode = (code: number) => {
    exitCode = code;
  };

  // yargs and the command table are all that `--help` and usage errors load; each command's
  // module loads in its handler (lib/cli/commands.ts).
  // yargs without cliui and string-width until help is rendered (lib/cli/yargs-factory.ts).
  const { loadYargs } = await import('./yargs-factory.js');
  const yargs = await loadYargs();
  const parser = yargs(argv)
    .scriptName('bundle-dispatch')
    .usage('$0 <command> [options]\n\nBuild self-contained, platform-locked bundles of a Node.js package.')
    .command(commandTable({ context, signal: controller.signal, setExitCode }))
    .demandCommand(1, 'Give a command: bundle-dispatch bundle <input.tgz>. See --help.')
    .strict()
    .help()
    .alias('help', 'h')
    .version(await ownVersion())
    .wrap(helpWidth((context.stdout as { columns?: number }).columns))
    .exitProcess(false)
    .fail((message, error, usage) => {
      if (error) throw error;
      // yargs names an unknown flag; the flags of the command being parsed say what was meant.
      const known = Object.keys((usage as unknown as { getDescriptions(): Record<string, unknown> }).getDescriptions());
      throw new BundleError('ERR_USAGE', message, { hint: unknownFlagHint(message, known) ?? 'Run bundle-dispatch --help.' });
    });

  skipHelpCache(parser);
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
  // The listener stays: output written last (help, a summary) may fail after we return.
  return outputClosed ? EXIT.ok : exitCode;
}

/**
 * yargs renders a command's whole help text (cliui and string widths: ~40 ms) as the command's
 * handler starts, to print it should the handler fail; main() never prints it (a failure gets
 * its own hint). yargs has no option for that, so its usage instance's cache is made a no-op.
 * Where a yargs version lacks these internals, nothing changes (test/cli/startup.test.ts notices).
 */
export function skipHelpCache(parser: object): boolean {
  type Internals = { getInternalMethods?: () => { getUsageInstance?: () => { cacheHelpMessage?: () => void } } };
  const usage = (parser as Internals).getInternalMethods?.().getUsageInstance?.();
  if (typeof usage?.cacheHelpMessage !== 'function') return false;
  usage.cacheHelpMessage = () => undefined;
  return true;
}

/**
 * "Did you mean --targets?" for yargs' `Unknown argument(s): tagets` (several: each with a
 * close flag), from the flags `known` to the command being parsed.
 */
export function unknownFlagHint(message: string, known: readonly string[]): string | undefined {
  const unknown = /^Unknown arguments?: (.+)$/.exec(message)?.[1]?.split(', ').map((name) => name.trim()) ?? [];
  const suggestions = unknown.flatMap((name) => {
    const closest = closestNames(name, known);
    return closest ? [`--${closest} (for ${name.length === 1 ? '-' : '--'}${name})`] : [];
  });
  if (suggestions.length === 0) return undefined;
  return `Did you mean ${suggestions.join(', ')}? Run the command with --help for its flags.`;
}

/** The known name nearest to `name` by edit distance, when near enough to be a typo. */
function closestNames(name: string, known: readonly string[]): string | undefined {
  const scored = known.map((candidate) => ({ candidate, score: editDistance(name.toLowerCase(), candidate.toLowerCase()) })).sort((a, b) => a.score - b.score);
  const best = scored[0];
  return best && best.score <= Math.max(1, Math.floor(name.length / 3)) ? best.candidate : undefined;
}
