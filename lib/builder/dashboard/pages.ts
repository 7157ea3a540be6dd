/**
 * The dashboard's two HTML documents: the shell (the script renders the build list or one
 * build from the API) and the login form. Neither holds build data; the only value put into
 * them from a request (the page to return to) is validated and escaped.
 */
import type { AssetSet } from './assets.js';

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', '\'': '&#39;' };

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (char) => ESCAPES[char] ?? char);
}

/** Where a login may send the browser afterwards: the list or a build page, nothing else. */
export function safeNext(next: unknown): string {
  return typeof next === 'string' && /^\/(builds\/[0-9a-z]{6,64})?(\?[A-Za-z0-9=&_%.-]{0,512})?$/.test(next) ? next : '/';
}

function head(assets: AssetSet, title: string, script: boolean): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<link rel="stylesheet" href="${assets.url('dashboard.css')}">
${script ? `<script defer src="${assets.url('dashboard.js')}"></script>\n` : ''}</head>`;
}

/** The page the script fills in: `/` (build list) and `/builds/:id` (one build). */
export function shellPage(assets: AssetSet): string {
  return `${head(assets, 'Builds · bundle-dispatch', true)}
<body>
<header class="top">
<a class="brand" href="/">bundle-dispatch</a>
<span class="builder" id="builder"></span>
<button type="button" class="link" id="logout">Log out</button>
</header>
<main id="app"><noscript>The dashboard needs JavaScript.</noscript></main>
</body>
</html>
`;
}

/** The login form (works without JavaScript: a plain POST to /login). */
export function loginPage(assets: AssetSet, options: { next: string; error?: string }): string {
  return `${head(assets, 'Log in · bundle-dispatch', false)}
<body>
<header class="top"><a class="brand" href="/">bundle-dispatch</a></header>
<main class="login">
<h1>Builder dashboard</h1>
<form method="post" action="/login">
<label for="token">Builder token</label>
<input id="token" name="token" type="password" autocomplete="off" autocapitalize="off" spellcheck="false" required autofocus>
<input type="hidden" name="next" value="${escapeHtml(safeNext(options.next))}">
${options.error ? `<p class="error" role="alert">${escapeHtml(options.error)}</p>\n` : ''}<button type="submit">Log in</button>
</form>
<p class="hint">A token from <code>BUNDLE_DISPATCH_BUILDER_TOKENS</code> or the builder's token file. It is checked once; the browser keeps only a session cookie.</p>
</main>
</body>
</html>
`;
}
