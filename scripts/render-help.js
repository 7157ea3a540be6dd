// After tsc: renders every command's --help with yargs, at every width the CLI wraps at, into
// build/lib/cli/help/<command>.<width>.txt, which `--help` then prints without loading the
// parser (lib/cli/help-cache.ts).
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { main } = await import(path.join(repo, 'build', 'lib', 'cli', 'main.js'));
const { HELP_COMMANDS, HELP_DIR, HELP_WIDTHS } = await import(path.join(repo, 'build', 'lib', 'cli', 'help-cache.js'));

await rm(HELP_DIR, { recursive: true, force: true });
await mkdir(HELP_DIR, { recursive: true });
let files = 0;
for (let width = HELP_WIDTHS.min; width <= HELP_WIDTHS.max; width += 1) {
  for (const command of HELP_COMMANDS) {
    let text = '';
    const stdout = Object.assign(new Writable({ write(chunk, _encoding, callback) { text += chunk.toString(); callback(); } }), { columns: width });
    const stderr = new Writable({ write(_chunk, _encoding, callback) { callback(); } });
    const argv = command === 'main' ? ['--help'] : [command, '--help'];
    const code = await main(argv, { env: { ...process.env, BUNDLE_DISPATCH_RENDER_HELP: '1' }, cwd: repo, stdout, stderr });
    if (code !== 0 || !text) throw new Error(`bundle-dispatch ${argv.join(' ')} at ${width} columns gave exit ${code}`);
    await writeFile(path.join(HELP_DIR, `${command}.${width}.txt`), text);
    files += 1;
  }
}
console.log(`rendered ${files} help texts into ${path.relative(repo, HELP_DIR)}`);
