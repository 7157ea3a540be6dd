import { describe, expect, it } from 'vitest';
import { lazyShim, loadYargs } from '../../lib/cli/yargs-factory.js';

/** The shape of a shim: its keys, and those of its object fields, sorted. */
function shape(shim: Record<string, unknown>): Record<string, string[]> {
  const result: Record<string, string[]> = { '.': Object.keys(shim).sort() };
  for (const [key, value] of Object.entries(shim)) {
    if (value && typeof value === 'object' && key !== 'y18n') result[key] = Object.keys(value).sort();
  }
  return result;
}

describe('yargs without its help renderer loaded up front', () => {
  it('hands yargs\' factory the shim yargs\' own ESM entry builds, field for field', async () => {
    const { shim, entry } = await lazyShim();
    const { default: own } = await import(new URL('./lib/platform-shims/esm.mjs', entry).href) as { default: Record<string, unknown> };
    expect(shape(shim)).toEqual(shape(own));
    for (const key of Object.keys(own)) expect(typeof shim[key], key).toBe(typeof own[key]);
    expect(shim.mainFilename).toBe(own.mainFilename);
    expect((shim.stringWidth as (text: string) => number)('héllo ✔ 漢字')).toBe((own.stringWidth as (text: string) => number)('héllo ✔ 漢字'));
    expect((shim.y18n as { __: (text: string) => string }).__('Options:')).toBe((own.y18n as { __: (text: string) => string }).__('Options:'));
  });

  it('parses, validates and renders help exactly as `import(\'yargs\')` does', async () => {
    const { default: stock } = await import('yargs');
    const ours = await loadYargs();
    expect(ours).not.toBe(stock);
    const run = async (yargs: typeof stock, argv: string[]) => {
      let output = '';
      let failure = '';
      const parsed = await yargs(argv)
        .scriptName('tool')
        .command('build <input>', 'Build it.', (inner) => inner
          .positional('input', { type: 'string', describe: 'The input.' })
          .option('targets', { alias: 't', type: 'string', array: true, describe: 'Targets, comma-separated — or repeated: ✔ 漢字 width.' })
          .option('level', { type: 'number', choices: [1, 6, 9], describe: 'How hard.' })
          .example('$0 build app.tgz -t linux-x64', 'for one target'), () => undefined)
        .strict()
        .wrap(80)
        .exitProcess(false)
        .fail((message) => {
          failure = message;
        })
        .parseAsync(argv, {}, (_error, _argv, text) => {
          output = text;
        });
      const { $0: _name, ...rest } = parsed as Record<string, unknown>;
      return { output, failure, parsed: rest };
    };
    for (const argv of [['build', '--help'], ['--help'], ['build', 'a.tgz', '-t', 'x', '-t', 'y', '--level', '6'], ['build', 'a.tgz', '--level', '5'], ['build'], ['build', 'a.tgz', '--nope']]) {
      expect(await run(ours, argv), argv.join(' ')).toEqual(await run(stock, argv));
    }
    expect((await run(ours, ['build', '--help'])).output).toContain('漢字');
  });
});
