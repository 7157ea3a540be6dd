/**
 * The builder's dashboard end to end: the real bin (so the assets are served the way an
 * installed package serves them) and real headless Chromium (Debian's `chromium` via
 * playwright-core). Chromium missing → these tests fail, they do not skip.
 */
import { chmod, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBuilderClient, type BuilderClient } from '../../lib/builder/client.js';
import type { BuildRecord } from '../../lib/protocol.js';
import { chromiumPath, launchChromium, type TestBrowser } from '../helpers/browser.js';
import { TEST_UID_RANGES, childEnv, hostTargetSpec, newToken, spawnBuilder, startSourceServer, tgz, waitFor, type ChildBuilder, type SourceServer } from '../helpers/builder.js';
import { packageTar, repoRoot, tempDir, testCacheDir } from '../helpers/packages.js';
import { escapeHtml, safeNext } from '../../lib/builder/dashboard/pages.js';
import { SessionStore, sessionIdFrom } from '../../lib/builder/dashboard/sessions.js';

/** This file's build uids when run as root. */
const UIDS = `${TEST_UID_RANGES.dashboard.first}-${TEST_UID_RANGES.dashboard.last}`;
// The test always saves its screenshot; it replaces the one in docs/ (shown in the README) only
// when asked, so a test run leaves the checkout clean: UPDATE_DOCS_SCREENSHOT=1 npx vitest run …
const SCREENSHOT = process.env.UPDATE_DOCS_SCREENSHOT ? path.join(repoRoot, 'docs', 'dashboard.png') : path.join(tmpdir(), 'bundle-dispatch-dashboard.png');
/** Page updates are quick, but this machine may be busy with other test files' npm installs. */
const POLL = { timeout: 20_000 };

let root: { dir: string; remove: () => Promise<void> };
let sources: SourceServer;
let builder: ChildBuilder;
let client: BuilderClient;
let browser: TestBrowser;
let page: Page;
const token = newToken();
const pageErrors: string[] = [];
let quick: BuildRecord;
let live: { id: string };

/** An install script that prints hostile markup and ANSI colours, then a line every 150 ms until cancelled. */
const liveLogPackage = () => tgz(packageTar({ name: 'live-log', version: '2.0.0', scripts: { install: 'node ticker.js' } }, {
  'ticker.js': [
    'console.log("\\u001b[32mgreen ok\\u001b[39m plain \\u001b[1;31mbold red\\u001b[0m");',
    'console.log("\\u001b[38;5;208morange\\u001b[0m \\u001b[38;2;10;200;30mtruecolor\\u001b[0m \\u001b[2K\\u001b]0;window title\\u0007after escapes");',
    'console.log("<script>window.__pwned = 1</script>");',
    'console.log("<img src=x onerror=\\"window.__pwned = 2\\">");',
    'let n = 0;',
    'setInterval(() => {',
    '  n += 1;',
    '  console.log(`\\u001b[36m[compile]\\u001b[0m src/module-${n}.c → build/Release/obj/module-${n}.o \\u001b[32m✓\\u001b[0m \\u001b[2m(${40 + (n * 37) % 200} ms)\\u001b[22m`);',
    '}, 150);',
  ].join('\n'),
}));

/** A request as it is (no redirects followed, no cookie jar). */
const raw = (pathname: string, init: RequestInit = {}) => fetch(`${builder.url}${pathname}`, { redirect: 'manual', ...init });

const login = async (): Promise<string> => {
  const response = await raw('/login', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ token, next: '/' }).toString() });
  expect(response.status).toBe(303);
  const cookie = response.headers.get('set-cookie') ?? '';
  return /bd_session=([^;]+)/.exec(cookie)?.[1] ?? '';
};

const logText = () => page.locator('#log').innerText();

describe('dashboard test prerequisites', () => {
  // Without a browser the end-to-end tests below cannot run: this fails (never skips) and says how to fix it.
  it('finds Debian\'s chromium', () => {
    expect(chromiumPath()).toMatch(/chromium$/);
  });
});

describe('builder dashboard (real bin, headless Chromium)', () => {
  beforeAll(async () => {
    // First: without a browser nothing here can pass, and the message says how to fix it.
    chromiumPath();
    root = await tempDir('bd-dashboard-');
    await chmod(root.dir, 0o711);
    await mkdir(path.join(root.dir, 'work'), { recursive: true });
    sources = await startSourceServer();
    builder = await spawnBuilder(['--store', path.join(root.dir, 'store'), '--cache-dir', testCacheDir, '--slots', '2'], childEnv({
      BUNDLE_DISPATCH_BUILDER_TOKENS: token,
      BUNDLE_DISPATCH_WORK_DIR: path.join(root.dir, 'work'),
      BUNDLE_DISPATCH_BUILDER_ID: 'builder-linux-x64-1',
      BUNDLE_DISPATCH_BUILDER_RUN_AS_UIDS: UIDS,
    }));
    client = createBuilderClient({ url: builder.url, token });

    const quickSource = await tgz(packageTar({ name: 'quick-app', version: '1.4.2' }, { 'index.js': 'module.exports = 1;\n' }));
    const created = await client.createBuild({ source: { url: sources.add('quick-app.tgz', quickSource.body), sha256: quickSource.sha256 }, target: hostTargetSpec(), label: 'release v1.4.2' }, { idempotencyKey: `quick-${Date.now()}` });
    quick = await client.followBuild(created.id);
    expect(quick.state).toBe('succeeded');
    const liveSource = await liveLogPackage();
    live = await client.createBuild({ source: { url: sources.add('live-log.tgz', liveSource.body), sha256: liveSource.sha256 }, target: hostTargetSpec(), label: 'ci #512' }, { idempotencyKey: `live-${Date.now()}` });
    await waitFor(async () => (await client.getLog(live.id)).some((line) => line.message.includes('[compile]')) || undefined, 60_000, 200);

    browser = await launchChromium();
    page = await browser.context.newPage();
    page.on('pageerror', (error) => pageErrors.push(`pageerror: ${error.message}`));
    page.on('console', (message) => {
      // The login page itself answers 401 (no session, no data): Chromium logs that load; the rest counts.
      if (message.type() === 'error' && !/status of 401/.test(message.text())) pageErrors.push(`console: ${message.text()}`);
    });
  }, 180_000);
  afterAll(async () => {
    await browser?.close();
    if (builder && builder.child.exitCode === null && builder.child.signalCode === null) {
      builder.child.kill('SIGTERM');
      const timer = setTimeout(() => builder.child.kill('SIGKILL'), 10_000);
      await builder.exited;
      clearTimeout(timer);
    }
    await sources?.stop();
    await root?.remove();
  });

  it('gives nothing without a session: 401 on the API, the list and a build page', async () => {
    for (const pathname of ['/v1/builds', `/v1/builds/${live.id}`, `/v1/builds/${live.id}/events`, `/v1/builds/${live.id}/log`, `/v1/builds/${quick.id}/artifact`]) {
      const response = await raw(pathname);
      expect(response.status, pathname).toBe(401);
      expect(await response.text(), pathname).not.toMatch(/live-log|quick-app|ci #512/);
    }
    for (const pathname of ['/', `/builds/${live.id}`, '/?state=running']) {
      const response = await raw(pathname);
      expect(response.status, pathname).toBe(401);
      const html = await response.text();
      expect(html).toContain('<form method="post" action="/login">');
      expect(html).not.toMatch(/live-log|quick-app|ci #512|release v1/);
    }
    expect((await raw('/v1/builds', { headers: { cookie: 'bd_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' } })).status).toBe(401);

    // A wrong token: the form again, no cookie. A cross-site login: refused.
    const wrong = await raw('/login', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=${newToken()}` });
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('set-cookie')).toBeNull();
    const crossSite = await raw('/login', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', origin: 'https://evil.example', 'sec-fetch-site': 'cross-site' }, body: new URLSearchParams({ token }).toString() });
    expect(crossSite.status).toBe(403);
    expect(crossSite.headers.get('set-cookie')).toBeNull();

    // The cookie: a random session id (not the token), HttpOnly, SameSite=Strict.
    const response = await raw('/login', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ token, next: '//evil.example/' }).toString() });
    expect(response.headers.get('location')).toBe('/');
    const setCookie = response.headers.get('set-cookie') ?? '';
    expect(setCookie).toMatch(/^bd_session=[A-Za-z0-9_-]{43}; Path=\/; Max-Age=\d+; HttpOnly; SameSite=Strict$/);
    expect(setCookie).not.toContain(token);
    const session = /bd_session=([^;]+)/.exec(setCookie)?.[1] ?? '';
    const withSession = { cookie: `bd_session=${session}` };
    expect((await raw('/v1/builds', { headers: withSession })).status).toBe(200);
    // CSRF: with the cookie, a state-changing request also needs the dashboard's header and this origin.
    expect((await raw(`/v1/builds/${live.id}`, { method: 'DELETE', headers: withSession })).status).toBe(401);
    expect((await raw(`/v1/builds/${live.id}`, { method: 'DELETE', headers: { ...withSession, 'x-dashboard-request': '1', origin: 'https://evil.example' } })).status).toBe(401);
    expect((await raw(`/v1/builds/${live.id}`, { method: 'DELETE', headers: { ...withSession, 'x-dashboard-request': '1', 'sec-fetch-site': 'same-site' } })).status).toBe(401);
    expect((await raw('/logout', { method: 'POST', headers: withSession })).status).toBe(403);
    expect((await client.getBuild(live.id)).state).toBe('running');
    // Logging in again gives a new id and ends the old session (no fixation).
    const again = await raw('/login', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...withSession }, body: new URLSearchParams({ token }).toString() });
    const renewed = /bd_session=([^;]+)/.exec(again.headers.get('set-cookie') ?? '')?.[1];
    expect(renewed).toBeDefined();
    expect(renewed).not.toBe(session);
    expect((await raw('/v1/builds', { headers: withSession })).status).toBe(401);
    expect((await raw('/v1/builds', { headers: { cookie: `bd_session=${renewed}` } })).status).toBe(200);
  });

  it('sends a strict CSP and security headers; assets are hashed, immutable, with ETags', async () => {
    const session = await login();
    const response = await raw('/', { headers: { cookie: `bd_session=${session}` } });
    expect(response.status).toBe(200);
    const csp = response.headers.get('content-security-policy') ?? '';
    expect(csp).toContain('script-src \'self\'');
    expect(csp).toContain('frame-ancestors \'none\'');
    expect(csp).toContain('default-src \'none\'');
    expect(csp).not.toContain('unsafe-inline');
    expect(response.headers.get('x-content-type-options')).toBe('nosniff');
    expect(response.headers.get('referrer-policy')).toBe('same-origin');
    expect(response.headers.get('cache-control')).toBe('no-store');
    const html = await response.text();
    // No inline script or style: every <script> has a src, no style attributes.
    expect(html.match(/<script(?![^>]*\bsrc=)[^>]*>/g)).toBeNull();
    expect(html).not.toMatch(/\sstyle=/);
    const assets = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((match) => match[1] as string);
    expect(assets.map((asset) => asset.replace(/\.[0-9a-f]{12}\./, '.H.'))).toEqual(['/assets/dashboard.H.css', '/assets/dashboard.H.js']);
    let total = 0;
    for (const asset of assets) {
      const first = await raw(asset, { headers: { 'accept-encoding': 'identity' } });
      expect(first.status).toBe(200);
      expect(first.headers.get('cache-control')).toBe('public, max-age=31536000, immutable');
      const etag = first.headers.get('etag') ?? '';
      expect(etag).toMatch(/^"[0-9a-f]{12}"$/);
      total += (await first.arrayBuffer()).byteLength;
      expect((await raw(asset, { headers: { 'if-none-match': etag } })).status).toBe(304);
    }
    // Small: script and styles together, uncompressed.
    expect(total).toBeLessThan(40_000);
    // API responses cannot be framed or run script either.
    const api = await raw('/v1/health');
    expect(api.headers.get('x-content-type-options')).toBe('nosniff');
    expect(api.headers.get('content-security-policy')).toContain('default-src \'none\'');
  });

  it('logs in with the form and lists the builds, newest first', async () => {
    await page.goto(builder.url);
    await page.locator('input#token').fill(token);
    await page.locator('button[type=submit]').click();
    await page.locator(`tr[data-id="${live.id}"]`).waitFor();
    const cookies = await browser.context.cookies(builder.url);
    const session = cookies.find((cookie) => cookie.name === 'bd_session');
    expect(session).toMatchObject({ httpOnly: true, sameSite: 'Strict' });
    expect(session?.value).not.toContain(token);
    const ids = await page.locator('tbody tr').evaluateAll((rows) => rows.map((row) => row.getAttribute('data-id')));
    expect(ids).toEqual([live.id, quick.id]);
    const liveRow = page.locator(`tr[data-id="${live.id}"]`);
    await expect.poll(() => liveRow.innerText(), POLL).toContain('running');
    // Running, and already named by its package (the builder read package.json when it unpacked the source).
    expect(await liveRow.innerText()).toContain('live-log@2.0.0');
    expect(await liveRow.innerText()).toContain('ci #512');
    const quickRow = await page.locator(`tr[data-id="${quick.id}"]`).innerText();
    expect(quickRow).toContain('succeeded');
    expect(quickRow).toContain('quick-app@1.4.2');
    expect(quickRow).toContain('release v1.4.2');
    expect(quickRow).toMatch(/\d+(\.\d)? s|\d+ ms/);
    await expect.poll(() => page.locator('#builder').innerText(), POLL).toContain('builder-linux-x64-1');
  });

  it('shows a running build: steps, the live log following the end, ANSI colours, markup as text', async () => {
    await page.locator(`a[href="/builds/${live.id}"]`).click();
    await page.waitForURL(`**/builds/${live.id}`);
    await expect.poll(() => page.locator('#state').getAttribute('data-state'), POLL).toBe('running');
    // Lines keep arriving over SSE.
    await expect.poll(logText, { timeout: 30_000 }).toMatch(/module-\d+\.c/);
    const count = async () => (await logText()).match(/\[compile\]/g)?.length ?? 0;
    const before = await count();
    await expect.poll(count, { timeout: 30_000 }).toBeGreaterThan(before + 3);

    // Hostile markup is text: shown, never parsed, never run.
    const text = await logText();
    expect(text).toContain('<script>window.__pwned = 1</script>');
    expect(text).toContain('<img src=x onerror="window.__pwned = 2">');
    expect(await page.evaluate(() => (globalThis as { __pwned?: unknown }).__pwned)).toBeUndefined();
    expect(await page.locator('#log script, #log img').count()).toBe(0);
    // ANSI colours become classes; no escape code is left in the text.
    expect(await page.locator('#log span.fg-2', { hasText: 'green ok' }).count()).toBe(1);
    expect(await page.locator('#log span.b.fg-1', { hasText: 'bold red' }).count()).toBe(1);
    expect(text).not.toContain('\u001b');
    expect(text).not.toContain('[32m');
    // 256 and 24-bit colours through CSSOM (allowed by the CSP); other escapes (erase line, OSC title) dropped.
    // Runs in the page; the project's types have no DOM, hence the cast.
    const color = (text: string) => page.locator('#log .line').getByText(text, { exact: true })
      .evaluate((span) => (globalThis as unknown as { getComputedStyle(node: unknown): { color: string } }).getComputedStyle(span).color);
    expect(await color('orange')).toBe('rgb(255, 135, 0)');
    expect(await color('truecolor')).toBe('rgb(10, 200, 30)');
    expect(text).toContain('truecolor after escapes');
    expect(text).not.toContain('window title');

    const steps = await page.locator('table.steps').innerText();
    expect(steps).toMatch(/unpack\s+finished\s+\d/);
    expect(steps).toMatch(/install\s+running/);
    // The steps still to come are listed, in order, so progress is visible.
    expect(steps).toMatch(/install\s+running[^]*bundle\s+pending[^]*verify\s+pending[^]*pack\s+pending[^]*output\s+pending/);
    // Named by its package while it runs (read when the builder unpacked it), not by the source's hash or file.
    expect(await page.locator('h1').innerText()).toBe('live-log@2.0.0');
    expect((await client.getBuild(live.id)).package).toEqual({ name: 'live-log', version: '2.0.0' });
    // Times: relative, with the full date, time and zone on hover.
    const started = page.locator('dl.meta time').nth(1);
    expect(await started.innerText()).toMatch(/^(just now|\d+ s ago|\d+ min ago)$/);
    expect(await started.getAttribute('title')).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(\d{4}-\d\d-\d\dT[\d:.]+Z\)$/);
    // At 1280×800 the log starts above the fold.
    await page.setViewportSize({ width: 1280, height: 800 });
    const logTop = await page.locator('#log').evaluate((log) => (log as unknown as { getBoundingClientRect(): { top: number } }).getBoundingClientRect().top);
    expect(logTop).toBeLessThan(800 - 120);
    await page.setViewportSize({ width: 1280, height: 900 });
    const meta = await page.locator('dl.meta').innerText();
    expect(meta).toContain('ci #512');
    expect(meta).toMatch(/Runtime\s+Node \d+\.\d+\.\d+/);

    // Auto-scroll: at the end while following; scrolled up, it stays put; "Follow" resumes.
    const position = () => page.locator('#log').evaluate((log) => ({ top: log.scrollTop, max: log.scrollHeight - log.clientHeight }));
    await expect.poll(async () => (await position()).max, { timeout: 30_000 }).toBeGreaterThan(100);
    await expect.poll(async () => {
      const { top, max } = await position();
      return max - top;
    }, POLL).toBeLessThan(5);
    await page.locator('#log').evaluate((log) => {
      log.scrollTop = 0;
    });
    const lines = await count();
    await expect.poll(count, { timeout: 30_000 }).toBeGreaterThan(lines + 3);
    expect((await position()).top).toBe(0);
    expect(await page.locator('#follow').isVisible()).toBe(true);
    await page.locator('#follow').click();
    const resumed = await count();
    await expect.poll(count, { timeout: 30_000 }).toBeGreaterThan(resumed + 3);
    const { top, max } = await position();
    expect(max - top).toBeLessThan(5);
    expect(await page.locator('#follow').isVisible()).toBe(false);

    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    expect(pageErrors).toEqual([]);
  });

  it('cancels the build from its page and shows the new status', async () => {
    page.once('dialog', (dialog) => void dialog.accept());
    await page.locator('#cancel').click();
    await expect.poll(() => page.locator('#state').getAttribute('data-state'), { timeout: 30_000 }).toBe('cancelled');
    expect(await page.locator('#cancel').isVisible()).toBe(false);
    expect(await page.locator('dl.meta').innerText()).toContain('ERR_ABORTED');
    expect(await page.locator('table.steps').innerText()).toMatch(/install\s+failed/);
    expect((await client.getBuild(live.id)).state).toBe('cancelled');
    expect(pageErrors).toEqual([]);
  });

  it('shows a finished build: artifact link, sha256, peak memory, durations', async () => {
    await page.goto(`${builder.url}/builds/${quick.id}`);
    await expect.poll(() => page.locator('#state').getAttribute('data-state'), POLL).toBe('succeeded');
    expect(await page.locator('#sha256').innerText()).toBe(quick.artifact?.sha256);
    expect(await page.locator('#artifact').getAttribute('href')).toBe(`/v1/builds/${quick.id}/artifact`);
    // The link works with the session cookie alone.
    const download = await page.request.get(`${builder.url}/v1/builds/${quick.id}/artifact`);
    expect(download.status()).toBe(200);
    expect(download.headers()['x-sha256']).toBe(quick.artifact?.sha256);
    const meta = await page.locator('dl.meta').innerText();
    if (quick.peakMemory !== undefined) expect(meta).toMatch(/Peak memory\s+[\d.]+ (KiB|MiB|GiB)/);
    expect(meta).toMatch(/Duration\s+[\d.]+ (s|ms)/);
    expect(await page.locator('table.steps').innerText()).toMatch(/pack\s+finished\s+\d+ ms/);
    expect(await page.locator('#log').innerText()).not.toBe('');
    const rawLog = await page.request.get(`${builder.url}${await page.locator('#raw-log').getAttribute('href')}`);
    expect(rawLog.status()).toBe(200);
    expect(rawLog.headers()['content-security-policy']).toContain('sandbox');
    expect(pageErrors).toEqual([]);
  });

  it('filters by status and pages through the history', async () => {
    await page.goto(builder.url);
    await page.locator(`tr[data-id="${quick.id}"]`).waitFor();
    await page.locator('#state-filter').selectOption('cancelled');
    await page.waitForURL('**/?state=cancelled');
    await expect.poll(() => page.locator('tbody tr').evaluateAll((rows) => rows.map((row) => row.getAttribute('data-id'))), POLL).toEqual([live.id]);
    await page.locator('#state-filter').selectOption('succeeded');
    await expect.poll(() => page.locator('tbody tr').evaluateAll((rows) => rows.map((row) => row.getAttribute('data-id'))), POLL).toEqual([quick.id]);

    await page.goto(`${builder.url}/?limit=1`);
    await expect.poll(() => page.locator('tbody tr').evaluateAll((rows) => rows.map((row) => row.getAttribute('data-id'))), POLL).toEqual([live.id]);
    await page.locator('#older').click();
    await expect.poll(() => page.locator('tbody tr').evaluateAll((rows) => rows.map((row) => row.getAttribute('data-id'))), POLL).toEqual([quick.id]);
    expect(await page.getByText('← Newest').isVisible()).toBe(true);
    expect(pageErrors).toEqual([]);
  });

  it('fits a 390 px wide phone screen', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    // Evaluated in the page (no DOM types here): how far the document scrolls sideways.
    const overflow = () => page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth");
    await page.goto(builder.url);
    await page.locator(`tr[data-id="${live.id}"]`).waitFor();
    expect(await overflow()).toBe(0);
    // Rows become cards: every row is visible without sideways scrolling.
    const box = await page.locator(`tr[data-id="${quick.id}"]`).boundingBox();
    expect(box && box.x + box.width).toBeLessThanOrEqual(390);
    await page.goto(`${builder.url}/builds/${live.id}`);
    await expect.poll(() => page.locator('#state').getAttribute('data-state'), POLL).toBe('cancelled');
    await expect.poll(logText, POLL).toContain('[compile]');
    expect(await overflow()).toBe(0);
    const log = await page.locator('#log').boundingBox();
    expect(log && log.x + log.width).toBeLessThanOrEqual(390);
    expect(await page.locator('#logout').isVisible()).toBe(true);
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  it('logs out: back to the login form, and the old session id is refused', async () => {
    const session = (await browser.context.cookies(builder.url)).find((cookie) => cookie.name === 'bd_session')?.value ?? '';
    expect((await raw('/v1/builds', { headers: { cookie: `bd_session=${session}` } })).status).toBe(200);
    await page.goto(builder.url);
    await page.locator('#logout').click();
    await page.locator('input#token').waitFor();
    expect((await browser.context.cookies(builder.url)).some((cookie) => cookie.name === 'bd_session')).toBe(false);
    expect((await raw('/v1/builds', { headers: { cookie: `bd_session=${session}` } })).status).toBe(401);
    expect(pageErrors).toEqual([]);
    // Neither the token nor a session id reached the builder's logs (the wrong logins are there).
    expect(builder.stderr()).toContain('dashboard login with a wrong token');
    expect(builder.stderr()).not.toContain(token);
    expect(builder.stderr()).not.toContain(session);
  });
});

describe('dashboard sessions and pages (unit)', () => {
  it('expires sessions, caps their number, ignores malformed ids', () => {
    let now = 1_000_000;
    const store = new SessionStore({ ttlMs: 60_000, maxSessions: 3, now: () => now });
    const first = store.create();
    expect(first.id).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(first.maxAgeSeconds).toBe(60);
    expect(store.valid(first.id)).toBe(true);
    now += 60_000;
    expect(store.valid(first.id)).toBe(false);
    expect(store.size).toBe(0);
    const ids = [store.create().id, store.create().id, store.create().id, store.create().id];
    expect(store.size).toBe(3);
    expect(ids.map((id) => store.valid(id))).toEqual([false, true, true, true]);
    store.delete(ids[1]);
    expect(store.valid(ids[1])).toBe(false);
    for (const bad of [undefined, '', 'short', `${ids[2]}x`, ids[2]?.toUpperCase()]) expect(store.valid(bad)).toBe(false);
  });

  it('reads the session cookie among others', () => {
    expect(sessionIdFrom('a=1; bd_session=abc; b=2')).toBe('abc');
    expect(sessionIdFrom('xbd_session=abc')).toBeUndefined();
    expect(sessionIdFrom(undefined)).toBeUndefined();
  });

  it('redirects after login only to its own pages, and escapes what it echoes', () => {
    expect(safeNext('/')).toBe('/');
    expect(safeNext('/builds/0mwrqw8sd3515bb7ff29dc093')).toBe('/builds/0mwrqw8sd3515bb7ff29dc093');
    expect(safeNext('/?state=running&limit=5')).toBe('/?state=running&limit=5');
    for (const bad of ['//evil.example/', 'https://evil.example/', '/\\evil.example', '/builds/../x', '/?x="><script>', 42]) expect(safeNext(bad)).toBe('/');
    expect(escapeHtml('<a href="x" onclick=\'y\'>&</a>')).toBe('&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;');
  });
});
