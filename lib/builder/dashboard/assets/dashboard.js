/* bundle-dispatch builder dashboard: the build list (`/`) and one build (`/builds/:id`).
 * Everything from the API becomes text nodes (textContent), never HTML: log lines, labels and
 * names are data. ANSI colour codes become class names. No inline script (CSP). */
/* global document, window, location, fetch, EventSource, URLSearchParams, confirm, requestAnimationFrame, setInterval, clearInterval */
'use strict';
(() => {
  const STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
  const CSRF = { 'x-dashboard-request': '1' };
  const MAX_LINES = 5000;
  const app = document.getElementById('app');

  /** createElement with attributes and children; strings become text nodes. */
  const h = (tag, attributes, ...children) => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(typeof child === 'object' ? child : String(child));
    }
    return node;
  };

  const api = async (path, options = {}) => {
    const response = await fetch(path, { credentials: 'same-origin', ...options, headers: { accept: 'application/json', ...options.headers } });
    if (response.status === 401) {
      // The session ended: the page itself now answers with the login form.
      location.reload();
      throw new Error('Logged out.');
    }
    const body = response.status === 204 ? undefined : await response.json().catch(() => undefined);
    if (!response.ok) throw new Error((body && body.error && body.error.message) || `HTTP ${response.status}`);
    return body;
  };

  // ---- formatting -------------------------------------------------------------------------
  const pad = (n) => String(n).padStart(2, '0');
  const duration = (ms) => {
    if (ms === undefined || ms === null || !Number.isFinite(ms)) return '';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = Math.round(ms / 1000);
    if (s < 60) return `${(ms / 1000).toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${pad(Math.floor(s / 60) % 60)} min`;
  };
  const elapsed = (record) => {
    if (!record.startedAt) return undefined;
    const end = record.finishedAt ? Date.parse(record.finishedAt) : Date.now();
    return end - Date.parse(record.startedAt);
  };
  /** A moment as "12 s ago" / "5 min ago" / "3 d ago"; the full date, time and zone on hover. */
  const when = (iso) => {
    if (!iso) return '';
    const date = new Date(iso);
    const seconds = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
    const relative = seconds < 10 ? 'just now' : seconds < 60 ? `${seconds} s ago` : seconds < 3600 ? `${Math.floor(seconds / 60)} min ago`
      : seconds < 86400 ? `${Math.floor(seconds / 3600)} h ago` : `${Math.floor(seconds / 86400)} d ago`;
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    const full = `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())} ${zone} (${date.toISOString()})`;
    return h('time', { datetime: date.toISOString(), title: full }, relative);
  };
  /** The workflow's steps in order: the ones not started yet are listed too, as pending. */
  const STEP_ORDER = ['unpack', 'configure', 'runtime', 'install', 'bundle', 'verify', 'pack', 'output'];
  const bytes = (n) => {
    if (typeof n !== 'number') return '';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
  };
  const target = (t) => `${t.os}-${t.cpu}${t.libc && t.libc !== 'glibc' ? `-${t.libc}` : ''}${t.node ? `@${t.node}` : ''}`;
  /** name@version once the build has unpacked its source (the record has it from then on), else the source's file name. */
  const pkg = (record) => {
    if (record.package) return `${record.package.name}@${record.package.version}`;
    const source = record.source && (record.source.url || record.source.key);
    const file = source ? source.split('?')[0].split('/').pop() : '';
    return file || record.id;
  };
  const badge = (state) => h('span', { class: `state state-${state}` }, state);
  const terminal = (state) => state === 'succeeded' || state === 'failed' || state === 'cancelled';
  /** Only http(s) URLs and this origin's paths become links. */
  const safeHref = (url) => {
    if (typeof url !== 'string') return undefined;
    if (/^\/v1\//.test(url)) return url;
    try {
      const parsed = new URL(url);
      return parsed.protocol === 'https:' || parsed.protocol === 'http:' ? parsed.href : undefined;
    } catch {
      return undefined;
    }
  };

  // ---- ANSI SGR → spans ---------------------------------------------------------------------
  // CSI … m sets the style; other escape sequences (cursor moves, OSC titles) are dropped.
  // eslint-disable-next-line no-control-regex -- matching control characters is the point
  const ESCAPES = /\u001b\[([0-9;:]*)([@-~])|\u001b\][^\u0007\u001b]*(?:\u0007|\u001b\\)?|\u001b[@-Z\\-_]?/g;
  // eslint-disable-next-line no-control-regex -- matching control characters is the point
  const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f]/g;
  const CUBE = [0, 95, 135, 175, 215, 255];
  const color256 = (n) => {
    if (n < 16) return n;
    if (n >= 232) {
      const v = 8 + 10 * (n - 232);
      return `rgb(${v}, ${v}, ${v})`;
    }
    const i = n - 16;
    return `rgb(${CUBE[Math.floor(i / 36)]}, ${CUBE[Math.floor(i / 6) % 6]}, ${CUBE[i % 6]})`;
  };
  const sgr = (previous, text) => {
    const style = { ...previous };
    const codes = text === '' ? [0] : text.split(/[;:]/).map((code) => Number(code) || 0);
    for (let index = 0; index < codes.length; index += 1) {
      const code = codes[index];
      if (code === 0) Object.keys(style).forEach((key) => delete style[key]);
      else if (code === 1) style.b = true;
      else if (code === 2) style.d = true;
      else if (code === 3) style.i = true;
      else if (code === 4) style.u = true;
      else if (code === 7) style.inv = true;
      else if (code === 22) {
        delete style.b;
        delete style.d;
      }
      else if (code === 23) delete style.i;
      else if (code === 24) delete style.u;
      else if (code === 27) delete style.inv;
      else if (code >= 30 && code <= 37) style.fg = code - 30;
      else if (code >= 90 && code <= 97) style.fg = code - 90 + 8;
      else if (code === 39) delete style.fg;
      else if (code >= 40 && code <= 47) style.bg = code - 40;
      else if (code >= 100 && code <= 107) style.bg = code - 100 + 8;
      else if (code === 49) delete style.bg;
      else if (code === 38 || code === 48) {
        const key = code === 38 ? 'fg' : 'bg';
        if (codes[index + 1] === 5) {
          style[key] = color256(Math.min(255, codes[index + 2] || 0));
          index += 2;
        } else if (codes[index + 1] === 2) {
          const [r, g, b] = codes.slice(index + 2, index + 5).map((v) => Math.min(255, v || 0));
          style[key] = `rgb(${r}, ${g}, ${b})`;
          index += 4;
        }
      }
    }
    return style;
  };
  const styled = (text, style) => {
    const clean = text.replace(CONTROL, '');
    if (clean === '') return undefined;
    if (Object.keys(style).length === 0) return document.createTextNode(clean);
    const span = document.createElement('span');
    span.textContent = clean;
    const classes = ['b', 'd', 'i', 'u', 'inv'].filter((key) => style[key]);
    for (const key of ['fg', 'bg']) {
      if (typeof style[key] === 'number') classes.push(`${key}-${style[key]}`);
      // CSSOM, not a style attribute: allowed by the CSP, and a colour value cannot inject markup.
      else if (typeof style[key] === 'string') span.style[key === 'fg' ? 'color' : 'backgroundColor'] = style[key];
    }
    span.className = classes.join(' ');
    return span;
  };
  /** A log message as DOM nodes: text only, coloured spans for SGR codes. */
  const ansi = (message) => {
    const nodes = [];
    let style = {};
    let last = 0;
    for (const match of String(message).matchAll(ESCAPES)) {
      nodes.push(styled(message.slice(last, match.index), style));
      last = match.index + match[0].length;
      if (match[2] === 'm') style = sgr(style, match[1]);
    }
    nodes.push(styled(String(message).slice(last), style));
    return nodes.filter(Boolean);
  };

  // ---- header -------------------------------------------------------------------------------
  const showHealth = async () => {
    const health = await fetch('/v1/health').then((response) => response.json()).catch(() => undefined);
    if (!health) return;
    const q = health.queue;
    document.getElementById('builder').textContent = `${health.builder} · ${q.running} running, ${q.queued} queued, ${q.capacity} slot${q.capacity === 1 ? '' : 's'}`;
  };
  document.getElementById('logout').addEventListener('click', async () => {
    await fetch('/logout', { method: 'POST', credentials: 'same-origin', headers: CSRF }).catch(() => undefined);
    location.assign('/');
  });

  // ---- build list ---------------------------------------------------------------------------
  const showList = async () => {
    const params = new URLSearchParams(location.search);
    const state = STATES.includes(params.get('state')) ? params.get('state') : '';
    const cursor = params.get('cursor') || '';
    const limit = Math.min(100, Math.max(1, Number(params.get('limit')) || 20));
    const link = (changes) => {
      const next = new URLSearchParams({ ...(state ? { state } : {}), ...(limit !== 20 ? { limit: String(limit) } : {}), ...changes });
      for (const [key, value] of [...next]) if (!value) next.delete(key);
      const query = next.toString();
      return query ? `/?${query}` : '/';
    };
    const filter = h('select', { id: 'state-filter', 'aria-label': 'Status', onchange: (event) => location.assign(link({ state: event.target.value, cursor: '' })) },
      h('option', { value: '' }, 'All statuses'), STATES.map((name) => h('option', { value: name, selected: name === state }, name)));
    const body = h('tbody');
    const pager = h('div', { class: 'pager' });
    const message = h('p', { class: 'muted' });
    app.replaceChildren(
      h('div', { class: 'bar' }, h('h1', { class: 'grow' }, 'Builds'), h('label', {}, 'Status ', filter)),
      h('table', { class: 'builds' },
        h('thead', {}, h('tr', {}, ['Status', 'Package', 'Target', 'Started', 'Duration', 'Trigger'].map((name) => h('th', {}, name)))), body),
      message, pager);
    document.title = 'Builds · bundle-dispatch';

    const render = (list) => {
      body.replaceChildren(...list.builds.map((record) => h('tr', { 'data-id': record.id, 'data-state': record.state },
        h('td', {}, badge(record.state)),
        h('td', {}, h('a', { href: `/builds/${encodeURIComponent(record.id)}` }, pkg(record))),
        h('td', { 'data-label': 'target', class: 'mono' }, target(record.target)),
        h('td', { 'data-label': 'started' }, when(record.startedAt || record.createdAt)),
        h('td', { 'data-label': 'duration', class: 'num' }, duration(elapsed(record))),
        h('td', { 'data-label': 'trigger' }, record.label || ''))));
      message.textContent = list.builds.length === 0 ? (state ? `No ${state} builds on this page.` : 'No builds yet.') : '';
      pager.replaceChildren(
        cursor ? h('a', { href: link({ cursor: '' }) }, '← Newest') : h('span'),
        list.cursor ? h('a', { href: link({ cursor: list.cursor }), rel: 'next', id: 'older' }, 'Older →') : h('span'));
    };
    const load = async () => {
      const query = new URLSearchParams({ limit: String(limit), ...(cursor ? { cursor } : {}), ...(state ? { state } : {}) });
      render(await api(`/v1/builds?${query}`));
    };
    try {
      await load();
    } catch (error) {
      message.textContent = `Could not load builds: ${error.message}`;
      return;
    }
    // The first page follows what happens; older pages stay put.
    if (!cursor) setInterval(() => load().catch(() => undefined), 3000);
  };

  // ---- one build ----------------------------------------------------------------------------
  const showBuild = async (id) => {
    const title = h('h1', { class: 'grow' }, id);
    const state = h('span');
    const cancel = h('button', { type: 'button', class: 'danger', id: 'cancel', hidden: true }, 'Cancel build');
    const problem = h('p', { class: 'error', role: 'alert' });
    const meta = h('dl', { class: 'meta' });
    const steps = h('tbody');
    const follow = h('button', { type: 'button', id: 'follow', hidden: true }, 'Follow ↓');
    const count = h('span', { class: 'muted', id: 'lines' });
    const log = h('div', { class: 'log', id: 'log', role: 'log', tabindex: '0' });
    app.replaceChildren(
      h('p', {}, h('a', { href: '/' }, '← Builds')),
      h('div', { class: 'bar' }, title, state, cancel),
      problem,
      // Details and steps side by side where there is room, so the log starts above the fold.
      h('div', { class: 'overview' },
        meta,
        h('table', { class: 'steps' }, h('thead', {}, h('tr', {}, h('th', {}, 'Step'), h('th', {}, 'State'), h('th', {}, 'Duration'))), steps)),
      h('div', { class: 'logbar' }, h('h2', {}, 'Log'), count, follow, h('a', { href: `/v1/builds/${encodeURIComponent(id)}/log`, id: 'raw-log' }, 'NDJSON')),
      log);

    let record;
    /** The runtime step's choice, from its log line, until the record has `resolved` (at the end). */
    let chosen;
    const render = () => {
      title.textContent = pkg(record);
      document.title = `${pkg(record)} · ${record.state} · bundle-dispatch`;
      state.replaceChildren(badge(record.state));
      state.id = 'state';
      state.dataset.state = record.state;
      cancel.hidden = terminal(record.state);
      const rows = [
        ['Target', h('span', { class: 'mono' }, target(record.target))],
        ['Trigger', record.label],
        ['Build', h('span', { class: 'mono' }, record.id)],
        ['Builder', record.builder],
        ['Queue position', record.queuePosition],
        ['Created', when(record.createdAt)],
        ['Started', when(record.startedAt)],
        ['Duration', duration(elapsed(record))],
        ['Runtime', record.resolved ? `Node ${record.resolved.node} (ABI ${record.resolved.abi}), npm ${record.resolved.npm}`
          : chosen && `Node ${chosen.version} (ABI ${chosen.abi})`],
        ['Peak memory', bytes(record.peakMemory)],
        ['Free disk at start', bytes(record.freeDisk)],
        ['Source', record.source && h('span', { class: 'mono' }, `sha256 ${record.source.sha256} · ${bytes(record.source.size)}`)],
        ['Artifact', record.artifact && h('span', {},
          safeHref(record.links.artifact || record.artifact.url)
            ? h('a', { href: safeHref(record.links.artifact || record.artifact.url), id: 'artifact', rel: 'noreferrer' }, record.artifact.file || 'download')
            : record.artifact.file || '',
          ` · ${bytes(record.artifact.size)}`)],
        ['sha256', record.artifact && h('span', { class: 'mono', id: 'sha256' }, record.artifact.sha256)],
        ['Error', record.error && h('span', { class: 'error' }, h('span', { class: 'mono' }, record.error.code), ` ${record.error.message}`)],
      ].filter(([, value]) => value !== undefined && value !== null && value !== '');
      meta.replaceChildren(...rows.flatMap(([name, value]) => [h('dt', {}, name), h('dd', {}, value)]));
      const known = new Set(record.steps.map((step) => step.name));
      // A build that ended never reaches the rest: only a live one lists them as pending.
      const pending = terminal(record.state) ? [] : STEP_ORDER.filter((name) => !known.has(name)).map((name) => ({ name, state: 'pending' }));
      steps.replaceChildren(...[...record.steps, ...pending].map((step) => h('tr', { 'data-step': step.name },
        h('td', {}, step.name), h('td', {}, badge(step.state)),
        h('td', { class: 'num' }, duration(step.durationMs !== undefined ? step.durationMs : step.startedAt ? Date.now() - Date.parse(step.startedAt) : undefined)))));
    };

    // Auto-scroll: follow the end until the reader scrolls up; scrolling back down (or the
    // button) resumes. Scrolls happen once per frame, never per line.
    let following = true;
    let lastTop = 0;
    let scheduled = false;
    let lines = 0;
    let trimmed = 0;
    const stick = () => {
      scheduled = false;
      if (!following) return;
      while (log.childElementCount > MAX_LINES) {
        log.firstElementChild.remove();
        trimmed += 1;
      }
      log.scrollTop = log.scrollHeight;
      lastTop = log.scrollTop;
    };
    const schedule = () => {
      if (!scheduled) {
        scheduled = true;
        requestAnimationFrame(stick);
      }
    };
    log.addEventListener('scroll', () => {
      const top = log.scrollTop;
      if (top >= log.scrollHeight - log.clientHeight - 4) following = true;
      else if (top < lastTop - 1) following = false;
      lastTop = top;
      follow.hidden = following;
    });
    follow.addEventListener('click', () => {
      following = true;
      follow.hidden = true;
      stick();
    });
    let lastSeq = 0;
    const append = (line) => {
      if (line.seq <= lastSeq) return;
      lastSeq = line.seq;
      lines += 1;
      if (line.data && line.data.event === 'runtime.chosen' && !chosen) {
        chosen = { version: line.data.version, abi: line.data.abi };
        if (record) render();
      }
      const time = line.time ? new Date(line.time) : undefined;
      log.append(h('span', { class: `line ${line.stream}`, 'data-seq': line.seq },
        h('span', { class: 't' }, time ? `${pad(time.getHours())}:${pad(time.getMinutes())}:${pad(time.getSeconds())}` : ''),
        h('span', { class: 's' }, line.step), ...ansi(line.message), '\n'));
      count.textContent = `${lines} line${lines === 1 ? '' : 's'}${trimmed ? ` (first ${trimmed} not shown)` : ''}`;
      schedule();
    };

    try {
      record = await api(`/v1/builds/${encodeURIComponent(id)}`);
    } catch (error) {
      title.textContent = 'Build not found';
      problem.textContent = error.message;
      return;
    }
    render();
    const ticker = setInterval(() => {
      if (terminal(record.state)) clearInterval(ticker);
      else render();
    }, 1000);

    cancel.addEventListener('click', async () => {
      if (!confirm(`Cancel ${pkg(record)} for ${target(record.target)}?`)) return;
      cancel.disabled = true;
      cancel.textContent = 'Cancelling…';
      try {
        record = await api(`/v1/builds/${encodeURIComponent(id)}`, { method: 'DELETE', headers: CSRF });
        render();
        problem.textContent = '';
      } catch (error) {
        problem.textContent = `Cancel failed: ${error.message}`;
      } finally {
        cancel.disabled = false;
        cancel.textContent = 'Cancel build';
      }
    });

    // Live: every log line (resumed with Last-Event-ID by EventSource itself), status, end.
    const events = new EventSource(`/v1/builds/${encodeURIComponent(id)}/events`);
    events.addEventListener('log', (event) => append(JSON.parse(event.data)));
    events.addEventListener('status', (event) => {
      record = JSON.parse(event.data);
      render();
    });
    events.addEventListener('end', (event) => {
      record = JSON.parse(event.data);
      render();
      events.close();
    });
    events.addEventListener('error', () => {
      // Closed for good (e.g. 401 after logout elsewhere): find out why through the API.
      if (events.readyState === EventSource.CLOSED && !terminal(record.state)) api(`/v1/builds/${encodeURIComponent(id)}`).then((next) => {
        record = next;
        render();
      }).catch((error) => {
        problem.textContent = error.message;
      });
    });
  };

  void showHealth();
  const match = /^\/builds\/([0-9a-z]{6,64})$/.exec(location.pathname);
  if (match) void showBuild(match[1]);
  else void showList();
  window.addEventListener('pageshow', (event) => {
    if (event.persisted) location.reload();
  });
})();
