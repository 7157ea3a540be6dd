import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { commandTable } from '../../lib/cli/commands.js';
import { main } from '../../lib/cli/main.js';
import { repoRoot } from '../helpers/packages.js';

// The README's flag tables are the user's reference: they must list exactly the flags each
// command's --help offers (aliases included), so the two cannot drift apart.

/** `--help` of one command as a user's terminal of `columns` would show it. */
async function help(args: string[], columns?: number): Promise<string> {
  let out = '';
  const stdout = Object.assign(new Writable({ write(chunk, _encoding, done) { out += String(chunk); done(); } }), columns ? { columns } : {});
  const code = await main([...args, '--help'], { env: {}, cwd: repoRoot, stdout, stderr: stdout });
  expect(code).toBe(0);
  return out;
}

/** Every command's name (the default command as `dispatch`) and its examples, read from the table. */
function commands(): Array<{ name: string; examples: string[] }> {
  const modules = commandTable({ context: { env: {}, cwd: repoRoot, stdout: process.stdout, stderr: process.stderr }, signal: new AbortController().signal, setExitCode: () => {} });
  return modules.map((module) => {
    const examples: string[] = [];
    // Records .example() calls; every other yargs method just chains.
    const recorder: unknown = new Proxy({}, {
      get: (_target, property) => (...args: unknown[]) => {
        if (property === 'example') examples.push(String(args[0]));
        return recorder;
      },
    });
    (module.builder as (argv: unknown) => unknown)(recorder);
    const command = ([module.command].flat() as string[]).find((text) => !text.startsWith('$0')) as string;
    return { name: command.split(' ')[0] as string, examples };
  });
}

const FLAG = /(?:^|[\s`,/(])(--?[a-z][a-z0-9-]*)/g;
const flagsIn = (text: string) => new Set([...text.matchAll(FLAG)].map((match) => match[1] as string));

/** The flags (long names and short aliases) of the Options section of a --help text. */
function helpFlags(text: string): Set<string> {
  const options = text.split('\nOptions:\n')[1]?.split('\n\n')[0] ?? '';
  const flags = new Set<string>();
  for (const line of options.split('\n')) {
    // `-t, --targets, --target  …`: the short alias, the name, and further long aliases.
    const match = /^ {2}(?:(-[a-z]), )? *(--[a-z0-9-]+)((?:, --[a-z0-9-]+)*)/.exec(line);
    if (!match) continue;
    if (match[1]) flags.add(match[1]);
    flags.add(match[2] as string);
    for (const alias of (match[3] ?? '').split(', ').filter(Boolean)) flags.add(alias);
  }
  flags.delete('--help');
  flags.delete('-h');
  flags.delete('--version');
  return flags;
}

const cells = (row: string) => row.trim().replace(/^\||\|$/g, '').split(/(?<!\\)\|/).map((cell) => cell.trim());

/** The markdown tables of a piece of text: header cells and rows of cells. */
function tables(text: string): Array<{ header: string[]; rows: string[][] }> {
  const found: Array<{ header: string[]; rows: string[][] }> = [];
  const lines = text.split('\n');
  for (let index = 0; index < lines.length; index += 1) {
    if (!lines[index]?.startsWith('|') || lines[index - 1]?.startsWith('|')) continue;
    const block: string[] = [];
    for (let row = index; lines[row]?.startsWith('|'); row += 1) block.push(lines[row] as string);
    found.push({ header: cells(block[0] as string), rows: block.slice(2).map(cells) });
  }
  return found;
}

/** The README section (### heading to the next) that documents a command. */
const SECTION: Record<string, string> = {
  dispatch: '`bundle-dispatch <input>',
  bundle: '`bundle-dispatch bundle',
  builder: '`bundle-dispatch builder`',
  verify: '`bundle-dispatch verify',
  status: 'Runs:',
  runs: 'Runs:',
  logs: 'Runs:',
  cancel: 'Runs:',
  prune: 'Runs:',
  watch: '`bundle-dispatch watch',
};

/**
 * The flags the README documents for a command: the first column of its section's
 * `| flag |`/`| option |` table; in a section of several commands (a `| command | flags |`
 * table), the flags cell of the command's row plus those the paragraph above the table says
 * every one of them takes.
 */
function readmeFlags(readme: string, name: string): Set<string> {
  const heading = SECTION[name];
  expect(heading, `no README section is known for the command ${name}: add it to SECTION`).toBeDefined();
  const section = readme.split(/\n### /).find((part) => part.startsWith(heading as string));
  expect(section, `README has no section "### ${heading}…"`).toBeDefined();
  const found = tables(section as string);
  const flagTable = found.find((table) => ['flag', 'option'].includes(table.header[0] as string));
  if (flagTable) return new Set(flagTable.rows.flatMap((row) => [...flagsIn(row[0] as string)]));
  const commandTable = found.find((table) => table.header[0] === 'command' && table.header[1] === 'flags');
  expect(commandTable, `the README section "${heading}" has no flag table`).toBeDefined();
  const row = commandTable?.rows.find((cellsOfRow) => new RegExp(`^\`${name}[\` ]`).test(cellsOfRow[0] as string));
  expect(row, `the README's "${heading}" table has no row for ${name}`).toBeDefined();
  const intro = (section as string).split('\n\n')[1] ?? '';
  return new Set([...flagsIn(row?.[1] ?? ''), ...flagsIn(intro)]);
}

describe('help and the README', () => {
  it('the README\'s first command runs the tool itself, so its own output comes at once and its wall time is the user\'s wait', async () => {
    const readme = await readFile(path.join(repoRoot, 'README.md'), 'utf8');
    const first = /```sh\n([^\n]+)\n/.exec(readme)?.[1] ?? '';
    // npx would install this very project into npm's cache first (prepare: tsc), behind npm's spinner.
    expect(first).toBe('npm ci && node bin/bundle-dispatch.js examples/hello-app-1.0.0.tgz');
  });

  it('the README lists exactly the flags of every command\'s --help', async () => {
    const readme = await readFile(path.join(repoRoot, 'README.md'), 'utf8');
    const names = commands().map((command) => command.name);
    expect(names).toEqual(expect.arrayContaining(['dispatch', 'bundle', 'builder', 'verify', 'status', 'runs', 'logs', 'cancel', 'prune']));
    for (const name of names) {
      const offered = helpFlags(await help([name]));
      expect(offered.size, name).toBeGreaterThan(0);
      expect([...readmeFlags(readme, name)].sort(), `README flags of ${name}`).toEqual([...offered].sort());
    }
  });

  it('docs/builder.md\'s flag table lists exactly the flags of builder --help', async () => {
    const doc = await readFile(path.join(repoRoot, 'docs', 'builder.md'), 'utf8');
    const section = doc.split('\n## Flags and configuration\n')[1]?.split('\n## ')[0] ?? '';
    const table = tables(section).find((candidate) => candidate.header[0] === 'flag');
    const documented = new Set(table?.rows.flatMap((row) => [...flagsIn(row[0] as string)]));
    expect([...documented].sort()).toEqual([...helpFlags(await help(['builder']))].sort());
  });

  it('at 80 columns every line of every example stays whole, and no line is wider', async () => {
    for (const { name, examples } of commands()) {
      expect(examples.length, name).toBeGreaterThan(0);
      const text = await help([name], 80);
      const lines = text.split('\n');
      expect(lines.filter((line) => line.length > 80), name).toEqual([]);
      const shown = new Set(lines.map((line) => line.trim()));
      for (const line of examples.flatMap((entry) => entry.replace(/\$0/g, 'bundle-dispatch').split('\n'))) {
        expect(shown.has(line.trim()), `${name}: the example line "${line}" is broken across lines at 80 columns`).toBe(true);
      }
    }
  });

  it('builder --help says a token is required and offers --id and -t with the dispatch syntax', async () => {
    const text = await help(['builder']);
    expect(text.replace(/\s+/g, ' ')).toContain('A token is required: $BUNDLE_DISPATCH_BUILDER_TOKENS (comma-separated) or --token-file.');
    expect(text).toMatch(/^ {6}--id\b/m);
    const targets = (text: string) => /-t, --targets +(.+)/.exec(text)?.[1]?.trim() ?? '';
    expect(targets(text)).toMatch(/comma-separated or repeated/);
    expect(targets(await help(['dispatch']))).toMatch(/comma-separated or repeated/);
  });
});
