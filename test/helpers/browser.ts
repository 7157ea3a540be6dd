/**
 * Headless Chromium for end-to-end tests: Debian's `chromium` driven by playwright-core (no
 * browser download, ever). A missing browser is a test failure with a clear message, not a skip.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chromium, type BrowserContext } from 'playwright-core';
import { tempDir } from './packages.js';

/** Flags for a quiet, offline, throwaway browser. */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** The chromium binary, or an error that says how to get it. */
export function chromiumPath(): string {
  if (existsSync('/usr/bin/chromium')) return '/usr/bin/chromium';
  try {
    const found = execFileSync('sh', ['-c', 'command -v chromium'], { encoding: 'utf8' }).trim();
    if (found) return found;
  } catch {
    // Not on PATH either: the error below says what to do.
  }
  throw new Error('Chromium is not installed: the dashboard tests need Debian\'s chromium package. Install it with `apt-get update && apt-get install -y --no-install-recommends chromium` (.ci/run does this).');
}

export interface TestBrowser {
  context: BrowserContext;
  /** Closes the browser and removes its profile; kills what is left of it by pid. */
  close(): Promise<void>;
}

/** A fresh browser with its own `--user-data-dir` (a temp dir removed on close). */
export async function launchChromium(options: { viewport?: { width: number; height: number } } = {}): Promise<TestBrowser> {
  const executablePath = chromiumPath();
  const profile = await tempDir('bd-chromium-');
  // launchPersistentContext is playwright's way to pass --user-data-dir (it refuses the flag in args).
  const context = await chromium.launchPersistentContext(profile.dir, {
    executablePath,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: options.viewport ?? { width: 1280, height: 900 },
    timeout: 60_000,
  });
  return {
    context,
    async close() {
      await Promise.race([context.close().catch(() => undefined), new Promise((resolve) => setTimeout(resolve, 10_000))]);
      // Anything still running with this profile (a hung close) is ours: kill it by pid.
      const leftovers = execFileSync('ps', ['-A', '-o', 'pid=,args='], { encoding: 'utf8' }).split('\n')
        .filter((line) => line.includes(`--user-data-dir=${profile.dir}`))
        .map((line) => Number(line.trim().split(/\s+/)[0]));
      for (const pid of leftovers) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
      await profile.remove();
    },
  };
}
