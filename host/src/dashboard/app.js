// wasmos dashboard: plain ES2020, no dependencies, no build step.
// Served by the master at `/`; talks to the JSON API under /api and the
// server-sent-events stream /api/events. All text from the API is inserted as
// DOM text nodes (never through innerHTML).
'use strict';

const STATES_ACTIVE = ['staging', 'starting', 'running', 'paused', 'killing'];
const STATES_ENDED = ['finished', 'failed', 'killed', 'lost', 'error', 'dropped', 'unreachable', 'gone'];
const STATES = [...STATES_ACTIVE, ...STATES_ENDED];
const RES_KINDS = ['total', 'allocated', 'offered', 'idle'];
const TASK_FILTERS = ['state', 'framework', 'role', 'agent', 'name'];
const PAGE_SIZE = 100;        // tasks per /api/tasks request
const MAX_ROWS = 500;         // task list never holds more rows than this
const OUT_CAP = 1 << 20;      // output pane keeps at most 1 MiB of text
const REFETCH_GAP_MS = 2000;  // list refetches on live events: at most this often
const OUTPUT_POLL_MS = 1000;

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
let main; // <main id="main">, set at boot

/* ------------------------------------------------------------------ */
/* DOM helpers                                                         */
/* ------------------------------------------------------------------ */

// h('tag', {attr: value, class: 'x', onclick: fn}, ...children)
// Children may be nodes, strings/numbers (become text nodes) or nested arrays.
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  addKids(el, kids);
  return el;
}

function addKids(el, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k == null || k === false) continue;
    el.append(k instanceof Node ? k : String(k));
  }
}

const txt = (s) => (s == null || s === '' ? '—' : String(s));
const mono = (s) => h('span', { class: 'mono' }, txt(s));
const cssName = (s) => String(s || '').toLowerCase().replace(/[^a-z0-9_-]/g, '');
const badge = (state, attrs) =>
  h('span', { class: 'badge s-' + cssName(state), ...attrs }, String(state ?? ''));

// A table inside a horizontally scrollable wrapper.
function table(cols, rows, attrs) {
  return h('div', { class: 'table-wrap' },
    h('table', attrs,
      h('thead', null, h('tr', null, cols.map((c) => h('th', null, c)))),
      h('tbody', null, rows)));
}

// A small horizontal bar showing a fraction in [0, 1].
function bar(frac, label) {
  const el = h('span', { class: 'bar' }, h('span'));
  setBar(el, frac, label);
  return el;
}

function setBar(el, frac, label) {
  const f = Number.isFinite(frac) ? Math.max(0, Math.min(1, frac)) : 0;
  el.firstChild.style.width = (f * 100).toFixed(1) + '%';
  el.classList.toggle('hot', f >= 0.9);
  el.title = (label ? label + ': ' : '') + (Number.isFinite(frac) ? pct(frac) : 'n/a');
}

// Briefly highlight an element that changed (CSS animation).
function flash(el) {
  el.classList.remove('flash');
  void el.offsetWidth; // restart the animation
  el.classList.add('flash');
}

function kv(label, value) {
  return [h('dt', null, label), h('dd', null, value)];
}

/* ------------------------------------------------------------------ */
/* Formatting (for people; test hooks keep plain values)               */
/* ------------------------------------------------------------------ */

const trimZeros = (s) => (s.includes('.') ? s.replace(/\.?0+$/, '') : s);
const pad = (n) => String(n).padStart(2, '0');
const ratio = (a, b) => (Number(b) > 0 ? Number(a || 0) / Number(b) : NaN);
const pct = (f) => (Number.isFinite(f) ? trimZeros((f * 100).toFixed(1)) + '%' : '—');
const fmtNum = (n) => (n == null || !Number.isFinite(Number(n)) ? '—' : Number(n).toLocaleString('en-US'));

function fmtBytes(n) {
  if (n == null || !Number.isFinite(Number(n))) return '—';
  n = Number(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  const s = i === 0 ? String(n) : trimZeros(n.toFixed(n >= 100 ? 0 : n >= 10 ? 1 : 2));
  return s + ' ' + units[i];
}

function fmtDur(ms) {
  if (ms == null || !Number.isFinite(Number(ms))) return '—';
  ms = Math.max(0, Number(ms));
  if (ms < 1000) return trimZeros(ms.toFixed(ms < 10 ? 2 : ms < 100 ? 1 : 0)) + ' ms';
  const s = ms / 1000;
  if (s < 60) return trimZeros(s.toFixed(s < 10 ? 2 : 1)) + ' s';
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.floor(s % 60)}s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr}h ${m % 60}m`;
  return `${Math.floor(hr / 24)}d ${hr % 24}h`;
}

const validMs = (ms) => Number.isFinite(Number(ms)) && Number(ms) > 0 && Number(ms) < 8.64e15;

// "2026-12-02 07:30:12" in local time.
function fmtTime(ms) {
  if (!validMs(ms)) return '—';
  const d = new Date(Number(ms));
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function timeEl(ms) {
  if (!validMs(ms)) return '—';
  const d = new Date(Number(ms));
  return h('time', { datetime: d.toISOString(), title: fmtDur(Date.now() - d) + ' ago' }, fmtTime(ms));
}

/* ------------------------------------------------------------------ */
/* API                                                                 */
/* ------------------------------------------------------------------ */

class AuthError extends Error {}
class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

// GET (or other) a JSON endpoint. 401 switches to the login view and throws
// AuthError; other failures throw ApiError carrying the server's message.
async function api(path, opts) {
  let res;
  try {
    res = await fetch(path, { credentials: 'same-origin', ...opts });
  } catch (e) {
    throw new ApiError('cannot reach the master', 0);
  }
  if (res.status === 401) {
    showLogin();
    throw new AuthError('unauthenticated');
  }
  let text = '';
  try { text = await res.text(); } catch (e) { /* empty body */ }
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
  if (!res.ok) {
    const msg = body && typeof body.error === 'string' ? body.error : text.trim().slice(0, 300);
    throw new ApiError(msg || `http ${res.status}`, res.status);
  }
  if (text && body === null) throw new ApiError('unexpected response from ' + path, res.status);
  return body || {};
}

// Message text of a failed response: its JSON {"error"} or the raw body.
async function errorText(res) {
  let text = '';
  try { text = await res.text(); } catch (e) { /* ignore */ }
  try {
    const j = JSON.parse(text);
    if (j && typeof j.error === 'string') return j.error;
  } catch (e) { /* not JSON */ }
  return text.trim().slice(0, 300) || `http ${res.status}`;
}

/* ------------------------------------------------------------------ */
/* Error banner                                                        */
/* ------------------------------------------------------------------ */

function showError(msg) {
  const el = $('error');
  el.textContent = String(msg || 'unknown error');
  el.hidden = false;
}

function hideError() {
  const el = $('error');
  el.hidden = true;
  el.textContent = '';
}

// Report an error from background work unless it is stale or auth-related.
function handleErr(ctx, e) {
  if (e instanceof AuthError || (ctx && !ctx.alive)) return;
  if (!(e instanceof ApiError)) console.error(e);
  showError(e && e.message ? e.message : String(e));
}

/* ------------------------------------------------------------------ */
/* Views and routing                                                   */
/* ------------------------------------------------------------------ */

// One View object per rendered page. Everything async checks `alive` before
// touching the DOM; timers go through later() so leaving the page stops them.
class View {
  constructor(name) {
    this.name = name;
    this.alive = true;
    this.timers = new Set();
    this.handlers = Object.create(null); // live event type -> fn(data)
  }
  later(fn, ms) {
    const id = setTimeout(() => { this.timers.delete(id); if (this.alive) fn(); }, ms);
    this.timers.add(id);
    return id;
  }
  loaded() { if (this.alive) document.body.dataset.loaded = '1'; }
  stop() {
    this.alive = false;
    for (const id of this.timers) clearTimeout(id);
    this.timers.clear();
    this.handlers = Object.create(null);
  }
}

let view = null;
let loggedIn = false;

function stopView() {
  if (view) view.stop();
  view = null;
}

function setViewName(name) {
  document.body.dataset.view = name;
  const navName = name === 'task' ? 'tasks' : name;
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('active', a.dataset.nav === navName);
  }
  document.title = name && name !== 'overview' ? `${name} · wasmos` : 'wasmos';
}

// Returns a throttled trigger: calling it schedules fn, at most once per gap.
function throttled(ctx, fn, gap = REFETCH_GAP_MS) {
  let last = Date.now();
  let armed = false;
  return () => {
    if (armed) return;
    armed = true;
    ctx.later(async () => {
      armed = false;
      last = Date.now();
      try { await fn(); } catch (e) { handleErr(ctx, e); }
    }, Math.max(0, last + gap - Date.now()));
  };
}

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const qi = raw.indexOf('?');
  const path = qi < 0 ? raw : raw.slice(0, qi);
  const query = new URLSearchParams(qi < 0 ? '' : raw.slice(qi + 1));
  return { path: path.replace(/\/+$/, '') || '/', query };
}

function route() {
  if (!loggedIn) return;
  const { path, query } = parseHash();
  let name;
  let fn;
  if (path === '/') [name, fn] = ['overview', viewOverview];
  else if (path === '/agents') [name, fn] = ['agents', viewAgents];
  else if (path === '/frameworks') [name, fn] = ['frameworks', viewFrameworks];
  else if (path === '/roles') [name, fn] = ['roles', viewRoles];
  else if (path === '/tasks') [name, fn] = ['tasks', viewTasks];
  else if (path.startsWith('/tasks/')) {
    let id = path.slice('/tasks/'.length);
    try { id = decodeURIComponent(id); } catch (e) { /* keep raw */ }
    name = 'task';
    fn = (ctx) => viewTask(ctx, id);
  } else {
    name = 'notfound';
    fn = async (ctx) => {
      main.replaceChildren(h('p', { class: 'empty' }, 'no such page. ', h('a', { href: '#/' }, 'back to the overview')));
      ctx.loaded();
    };
  }

  stopView();
  const ctx = (view = new View(name));
  setViewName(name);
  document.body.dataset.loaded = '0';
  hideError();
  main.replaceChildren(h('p', { class: 'loading' }, 'loading…'));
  Promise.resolve()
    .then(() => fn(ctx, query))
    .catch((e) => {
      if (e instanceof AuthError || !ctx.alive) return;
      handleErr(ctx, e);
      main.replaceChildren(h('p', { class: 'empty' }, 'could not load this page.'));
      ctx.loaded();
    });
}

function dispatch(type, data) {
  if (type === 'overview' && data) showCluster(data);
  const fn = view && view.alive ? view.handlers[type] : null;
  if (!fn) return;
  try { fn(data); } catch (e) { console.error(e); }
}

function showCluster(o) {
  const el = $('cluster');
  el.textContent = o && o.cluster ? String(o.cluster) : '';
  el.title = o && o.version ? 'version ' + o.version : '';
}

/* ------------------------------------------------------------------ */
/* Overview                                                            */
/* ------------------------------------------------------------------ */

// Placeholders filled (and refilled from live events) by fillOverview():
// data-metric = plain value (test hook), data-display = formatted text,
// data-bar = utilisation bar.
const metric = (key) => h('span', { 'data-metric': key }, '');
const display = (key) => h('span', { 'data-display': key }, '');
function barSlot(key) {
  const b = bar(NaN);
  b.dataset.bar = key;
  return b;
}

function card(title, href, big, sub) {
  return h(href ? 'a' : 'div', { class: 'card', href },
    h('div', { class: 'card-title' }, title),
    h('div', { class: 'card-big' }, big),
    h('div', { class: 'card-sub' }, sub));
}

function overviewSkeleton() {
  const stateRow = (s) => h('tr', { 'data-state': s },
    h('td', null, h('a', { href: '#/tasks?state=' + s }, badge(s))),
    h('td', { class: 'n' }, metric('tasks-' + s)));
  const resRow = (k) => h('tr', { 'data-resource': k },
    h('th', null, k),
    h('td', { class: 'n' }, metric(`resources-${k}-cpus`)),
    h('td', { class: 'n' }, display(`resources-${k}-mem`)),
    h('td', { class: 'small mono' }, metric('resources-' + k)));

  return h('div', { class: 'overview' },
    h('section', { class: 'cards' },
      card('agents', '#/agents',
        [metric('agents-active'), h('span', { class: 'of' }, ' / '), metric('agents-total')],
        ['active / total · ', metric('agents-disconnected'), ' disconnected · ',
          metric('agents-draining'), ' draining']),
      card('frameworks', '#/frameworks', metric('frameworks'), 'registered'),
      card('active tasks', '#/tasks', metric('tasks-active'), 'staging, starting, running, paused, killing'),
      card('allocator', null, metric('allocation-cycles'),
        ['cycles · last ', display('allocation-last'), ' · mean ', display('allocation-mean')])),
    h('div', { class: 'cols' },
      h('section', { class: 'panel' },
        h('h2', null, 'resources'),
        table(['', 'cpus', 'mem', 'all'], RES_KINDS.map(resRow), { id: 'resources' }),
        h('div', { class: 'util' },
          h('div', null, h('span', null, 'cpus allocated'), display('util-cpus'), barSlot('util-cpus')),
          h('div', null, h('span', null, 'mem allocated'), display('util-mem'), barSlot('util-mem')))),
      h('section', { class: 'panel' },
        h('h2', null, 'tasks'),
        h('div', { class: 'cols2' },
          table(['active', ''], STATES_ACTIVE.map(stateRow), { id: 'tasks-active' }),
          table(['ended', ''], STATES_ENDED.map(stateRow), { id: 'tasks-ended' })),
        h('p', { class: 'note' }, 'ended tasks: those the master still holds; older ones are in the history'))),
    h('section', { class: 'panel' },
      h('h2', null, 'cluster'),
      h('dl', { class: 'kv' },
        kv('name', display('cluster')),
        kv('version', display('version')),
        kv('master', display('master-url')),
        kv('watch seq', metric('watch-seq')))));
}

function fillOverview(o) {
  if (!o || typeof o !== 'object') return;
  const a = o.agents || {};
  const t = o.tasks || {};
  const r = o.resources || {};
  const al = o.allocation || {};
  const m = {
    'agents-active': a.active ?? 0,
    'agents-disconnected': a.disconnected ?? 0,
    'agents-draining': a.draining ?? 0,
    'agents-total': a.total ?? 0,
    frameworks: o.frameworks ?? 0,
    'tasks-active': STATES_ACTIVE.reduce((n, s) => n + (Number(t[s]) || 0), 0),
    'allocation-cycles': al.cycles ?? 0,
    'watch-seq': o.watch_seq ?? 0,
  };
  const d = {
    'allocation-last': fmtDur(al.last_cycle_ms),
    'allocation-mean': fmtDur(al.mean_cycle_ms),
    cluster: txt(o.cluster),
    version: txt(o.version),
    'master-url': txt(o.master_url),
  };
  for (const s of STATES) m['tasks-' + s] = t[s] ?? 0;
  for (const k of RES_KINDS) {
    const res = r[k] || {};
    m[`resources-${k}-cpus`] = res.cpus ?? 0;
    m['resources-' + k] = r[k + '_text'] ?? '';
    d[`resources-${k}-mem`] = fmtBytes(res.mem ?? 0);
  }
  const tot = r.total || {};
  const alloc = r.allocated || {};
  const bars = { 'util-cpus': ratio(alloc.cpus, tot.cpus), 'util-mem': ratio(alloc.mem, tot.mem) };
  d['util-cpus'] = pct(bars['util-cpus']);
  d['util-mem'] = pct(bars['util-mem']);

  const put = (el, s) => {
    if (el.textContent === s) return;
    const changed = el.textContent !== '';
    el.textContent = s;
    if (changed) flash(el);
  };
  for (const el of main.querySelectorAll('[data-metric]')) {
    if (el.dataset.metric in m) put(el, String(m[el.dataset.metric]));
  }
  for (const el of main.querySelectorAll('[data-display]')) {
    if (el.dataset.display in d) put(el, d[el.dataset.display]);
  }
  for (const el of main.querySelectorAll('[data-bar]')) setBar(el, bars[el.dataset.bar], 'allocated');
  showCluster(o);
}

async function viewOverview(ctx) {
  const o = await api('/api/overview');
  if (!ctx.alive) return;
  main.replaceChildren(overviewSkeleton());
  fillOverview(o);
  ctx.handlers.overview = fillOverview;
  ctx.handlers.resync = () => api('/api/overview').then((x) => ctx.alive && fillOverview(x)).catch((e) => handleErr(ctx, e));
  ctx.loaded();
}

/* ------------------------------------------------------------------ */
/* Agents, frameworks, roles (simple lists refetched on live events)   */
/* ------------------------------------------------------------------ */

// Shared shape: heading + box re-rendered by load(); live events of the
// given types trigger a throttled refetch.
async function listView(ctx, title, url, render, eventTypes) {
  const summary = h('span', { class: 'muted' });
  const box = h('div');
  main.replaceChildren(h('div', { class: 'head' }, h('h1', null, title), summary), box);
  const load = async () => {
    const data = await api(url);
    if (!ctx.alive) return;
    box.replaceChildren(render(data, summary));
  };
  await load();
  ctx.loaded();
  const refetch = throttled(ctx, load);
  for (const t of eventTypes) ctx.handlers[t] = refetch;
  ctx.handlers.resync = refetch;
  return box;
}

const filterLink = (key, value, cls) =>
  value ? h('a', { class: cls || null, href: `#/tasks?${key}=${enc(value)}` }, String(value)) : '—';

function attrChips(attrs) {
  const entries = attrs && typeof attrs === 'object' ? Object.entries(attrs) : [];
  if (!entries.length) return '—';
  return entries.map(([k, v]) => h('span', { class: 'chip mono' }, `${k}=${v}`));
}

async function viewAgents(ctx, query) {
  const focus = query.get('agent');
  const render = (d, summary) => {
    const list = Array.isArray(d.agents) ? d.agents : [];
    const count = (s) => list.filter((a) => a.status === s).length;
    summary.textContent = `${list.length} total · ${count('active')} active · ${count('draining')} draining · ${count('drained')} drained · ${count('ineligible')} ineligible · ${count('disconnected')} disconnected`;
    if (!list.length) return h('p', { class: 'empty' }, 'no agents registered');
    const rows = list.map((a) => h('tr', { 'data-agent-id': a.agent_id, class: a.agent_id === focus ? 'focus' : null },
      h('td', null, mono(a.agent_id)),
      h('td', null, txt(a.hostname)),
      h('td', { 'data-field': 'status' }, badge(a.status)),
      h('td', { class: 'n' }, a.agent_id ? h('a', { href: '#/tasks?agent=' + enc(a.agent_id) }, String(a.tasks ?? 0)) : String(a.tasks ?? 0)),
      h('td', { class: 'small' }, txt(a.resources_text)),
      h('td', { class: 'small' }, txt(a.allocated_text),
        bar(Math.max(ratio(a.allocated?.cpus, a.resources?.cpus) || 0, ratio(a.allocated?.mem, a.resources?.mem) || 0), 'dominant allocation')),
      h('td', { class: 'small' }, txt(a.used_text)),
      h('td', null, attrChips(a.attributes)),
      h('td', null, timeEl(a.registered_at_ms)),
      h('td', { class: 'small mono' }, txt(a.target)),
      h('td', { class: 'small mono' }, txt(a.wasmtime))));
    return table(['agent', 'hostname', 'status', 'tasks', 'resources', 'allocated', 'used', 'attributes', 'registered', 'target', 'wasmtime'],
      rows, { class: 'list', id: 'agents' });
  };
  const box = await listView(ctx, 'agents', '/api/agents', render, ['agent']);
  const row = focus && box.querySelector('tr.focus');
  if (row) row.scrollIntoView({ block: 'center' });
}

async function viewFrameworks(ctx) {
  const render = (d, summary) => {
    const list = Array.isArray(d.frameworks) ? d.frameworks : [];
    summary.textContent = `${list.length} total · ${list.filter((f) => f.active).length} active`;
    if (!list.length) return h('p', { class: 'empty' }, 'no frameworks registered');
    const rows = list.map((f) => h('tr', { 'data-framework-id': f.framework_id },
      h('td', null, mono(f.framework_id)),
      h('td', null, f.framework_id
        ? h('a', { href: '#/tasks?framework=' + enc(f.framework_id) }, txt(f.name)) : txt(f.name)),
      h('td', null, filterLink('role', f.role)),
      h('td', null, txt(f.kind)),
      h('td', { 'data-field': 'status' }, badge(f.active ? 'active' : 'inactive'),
        f.hosted_status ? h('span', { class: 'small muted' }, ' hosted: ' + f.hosted_status) : null),
      h('td', { class: 'n' }, String(f.tasks ?? 0)),
      h('td', { class: 'small' }, txt(f.allocated_text)),
      h('td', { class: 'n nowrap' }, pct(Number(f.share)), ' ', bar(Number(f.share), 'share')),
      h('td', { class: 'small msg' + (f.last_error ? ' bad' : '') }, txt(f.last_error))));
    return table(['framework', 'name', 'role', 'kind', 'status', 'tasks', 'allocated', 'share', 'last error'],
      rows, { class: 'list', id: 'frameworks' });
  };
  await listView(ctx, 'frameworks', '/api/frameworks', render, ['framework']);
}

async function viewRoles(ctx) {
  const render = (d, summary) => {
    const list = Array.isArray(d.roles) ? d.roles : [];
    summary.textContent = `${list.length} roles`;
    if (!list.length) return h('p', { class: 'empty' }, 'no roles');
    const rows = list.map((r) => h('tr', { 'data-role': r.role },
      h('td', null, filterLink('role', r.role, 'mono')),
      h('td', { class: 'n' }, txt(r.weight)),
      h('td', null, Array.isArray(r.frameworks) && r.frameworks.length
        ? r.frameworks.map((f) => h('span', { class: 'chip' }, filterLink('framework', f, 'mono'))) : '—'),
      h('td', { class: 'small' }, txt(r.allocated_text)),
      h('td', { class: 'small' }, txt(r.reserved_text)),
      h('td', { class: 'small' }, txt(r.guarantee_text)),
      h('td', { class: 'small' }, txt(r.limit_text)),
      h('td', { class: 'n nowrap' }, pct(Number(r.dominant_share)), ' ', bar(Number(r.dominant_share), 'dominant share')),
      h('td', { class: 'n' }, String(r.signers ?? 0))));
    return table(['role', 'weight', 'frameworks', 'allocated', 'reserved', 'guarantee', 'limit', 'dominant share', 'signers'],
      rows, { class: 'list', id: 'roles' });
  };
  await listView(ctx, 'roles', '/api/roles', render, ['framework']);
}

/* ------------------------------------------------------------------ */
/* Task list                                                           */
/* ------------------------------------------------------------------ */

const TASK_COLS = ['task', 'name', 'state', 'framework', 'role', 'agent', 'attempt', 'submitted', 'duration', 'resources', 'result'];
const taskHref = (id) => '#/tasks/' + enc(id);
const isEnded = (s) => STATES_ENDED.includes(s);

function taskDuration(t) {
  if (t.outcome && Number.isFinite(Number(t.outcome.wall_ms))) return fmtDur(t.outcome.wall_ms);
  if (!validMs(t.started_at_ms)) return '—';
  const end = validMs(t.finished_at_ms) ? Number(t.finished_at_ms) : Date.now();
  return fmtDur(end - Number(t.started_at_ms));
}

function resultText(t) {
  const o = t.outcome;
  const parts = [];
  if (o && o.kind) parts.push(o.kind + (o.exit_code != null ? ` (exit ${o.exit_code})` : ''));
  if (t.message) parts.push(String(t.message));
  return parts.join(' — ') || '—';
}

// A task list row; also used for partial rows built from live events.
function taskRow(t) {
  return h('tr', { 'data-task-id': t.task_id },
    h('td', null, h('a', { class: 'mono', href: taskHref(t.task_id) }, String(t.task_id))),
    h('td', { 'data-field': 'name' }, txt(t.name)),
    h('td', { 'data-field': 'state' }, badge(t.state)),
    h('td', null, filterLink('framework', t.framework_id, 'mono')),
    h('td', null, filterLink('role', t.role)),
    h('td', null, filterLink('agent', t.agent_id, 'mono')),
    h('td', { class: 'n' }, t.attempt == null ? '—' : String(t.attempt)),
    h('td', { class: 'nowrap' }, timeEl(t.submitted_at_ms)),
    h('td', { class: 'n nowrap' }, taskDuration(t)),
    h('td', { class: 'small' }, txt(t.resources_text)),
    h('td', { 'data-field': 'message', class: 'small msg' }, resultText(t)));
}

function filterForm(f) {
  const field = (name, label, placeholder) => h('label', null, h('span', null, label),
    h('input', { name, id: 'filter-' + name, value: f[name] || '', placeholder, autocomplete: 'off', spellcheck: 'false' }));
  const state = h('select', { name: 'state', id: 'filter-state' },
    h('option', { value: '' }, 'any'),
    STATES.map((s) => h('option', { value: s, selected: f.state === s }, s)));
  const form = h('form', { class: 'filters', id: 'task-filters' },
    h('label', null, h('span', null, 'state'), state),
    field('framework', 'framework', 'framework id'),
    field('role', 'role', 'role'),
    field('agent', 'agent', 'agent id'),
    field('name', 'name', 'prefix'),
    h('div', { class: 'actions' },
      h('button', { type: 'submit', id: 'filter-apply' }, 'apply'),
      h('a', { href: '#/tasks', class: 'button-link' }, 'clear')));
  // Filters live in the hash, so filtered lists can be linked and bookmarked.
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim()) p.set(k, String(v).trim());
    const hash = '#/tasks' + (p.toString() ? '?' + p : '');
    if (location.hash === hash) route(); else location.hash = hash;
  });
  state.addEventListener('change', () => form.requestSubmit());
  return form;
}

// Does a live task event match the list's filters? (The name prefix is not
// in the event; it is checked once the task's details are fetched.)
function eventMatches(f, d) {
  return (!f.state || d.state === f.state) &&
    (!f.framework || d.framework_id === f.framework) &&
    (!f.role || d.role === f.role) &&
    (!f.agent || d.agent_id === f.agent);
}

async function viewTasks(ctx, query) {
  const f = {};
  for (const k of TASK_FILTERS) {
    const v = (query.get(k) || '').trim();
    if (v) f[k] = v;
  }
  const tbody = h('tbody');
  const count = h('span', { class: 'muted', id: 'task-count' });
  const empty = h('p', { class: 'empty', hidden: true }, 'no tasks match these filters');
  const more = h('button', { type: 'button', id: 'more', hidden: true }, 'more');
  const note = h('span', { class: 'note' });
  main.replaceChildren(
    h('div', { class: 'head' }, h('h1', null, 'tasks'), count),
    filterForm(f),
    h('div', { class: 'table-wrap' },
      h('table', { class: 'list', id: 'tasks' },
        h('thead', null, h('tr', null, TASK_COLS.map((c) => h('th', null, c)))), tbody)),
    empty,
    h('div', { class: 'foot' }, more, note));

  const byId = new Map(); // task_id -> <tr>
  let token = '';
  let trimmed = false; // rows were dropped from the bottom: page token is stale

  const sync = () => {
    const n = tbody.rows.length;
    empty.hidden = n > 0;
    count.textContent = `${n} shown` + (Object.keys(f).length ? ' · filtered' : '');
    more.hidden = !token || trimmed || n >= MAX_ROWS;
    note.replaceChildren();
    if (trimmed || (token && n >= MAX_ROWS)) {
      note.append(`showing the newest ${MAX_ROWS}; `,
        h('a', { href: '#', onclick: (e) => { e.preventDefault(); route(); } }, 'reload'),
        ' or narrow the filters for older tasks');
    }
  };

  const put = (tr) => { byId.set(tr.dataset.taskId, tr); return tr; };

  const insertTop = (tr) => {
    tbody.prepend(put(tr));
    flash(tr);
    while (tbody.rows.length > MAX_ROWS) {
      const last = tbody.lastElementChild;
      byId.delete(last.dataset.taskId);
      last.remove();
      trimmed = true;
    }
    sync();
  };

  async function loadPage(first) {
    const p = new URLSearchParams(f);
    p.set('limit', String(Math.max(1, Math.min(PAGE_SIZE, MAX_ROWS - tbody.rows.length))));
    if (!first && token) p.set('page_token', token);
    more.disabled = true;
    try {
      const d = await api('/api/tasks?' + p);
      if (!ctx.alive) return;
      for (const t of Array.isArray(d.tasks) ? d.tasks : []) {
        if (!byId.has(t.task_id)) tbody.append(put(taskRow(t)));
      }
      token = d.next_page_token || '';
    } finally {
      more.disabled = false;
      sync();
    }
  }
  more.addEventListener('click', () => loadPage(false).catch((e) => handleErr(ctx, e)));

  await loadPage(true);
  ctx.loaded();

  // Full details for rows created from events (and for rows that just ended),
  // fetched with bounded concurrency and a bounded queue.
  const queue = [];
  const queued = new Set();
  let inflight = 0;
  const onDetail = (t) => {
    const old = byId.get(t.task_id);
    if (old) {
      const tr = put(taskRow(t));
      old.replaceWith(tr);
      flash(tr);
    } else if (f.name && String(t.name || '').startsWith(f.name) && eventMatches(f, t)) {
      insertTop(taskRow(t));
    }
  };
  const pump = () => {
    while (inflight < 2 && queue.length && ctx.alive) {
      const id = queue.shift();
      queued.delete(id);
      inflight++;
      api('/api/tasks/' + enc(id))
        .then((t) => { if (ctx.alive && t && t.task_id) onDetail(t); })
        .catch(() => { /* task may be gone; the row keeps what it has */ })
        .finally(() => { inflight--; pump(); });
    }
  };
  const fetchDetail = (id) => {
    if (queued.has(id) || queue.length >= 50) return;
    queued.add(id);
    queue.push(id);
    pump();
  };

  ctx.handlers.task = (d) => {
    if (!d || !d.task_id) return;
    const tr = byId.get(d.task_id);
    if (tr) {
      // Visible row: update its state in place.
      tr.querySelector('td[data-field="state"]').replaceChildren(badge(d.state));
      const msg = [d.reason, d.message].filter(Boolean).join(': ');
      if (msg) tr.querySelector('td[data-field="message"]').textContent = msg;
      flash(tr);
      if (isEnded(d.state)) fetchDetail(d.task_id); // pick up outcome / times
      return;
    }
    if (!eventMatches(f, d)) return;
    if (!f.name) insertTop(taskRow({ ...d, name: '…' }));
    fetchDetail(d.task_id);
  };
}

/* ------------------------------------------------------------------ */
/* Task page                                                           */
/* ------------------------------------------------------------------ */

function limitsTable(t, outUsed) {
  const lim = (t.spec && t.spec.limits) || {};
  const o = t.outcome || null;
  // While it runs: its agent's latest report (live_*), else nothing yet.
  const live = !o && t.live_cpu_ms != null && Number(t.live_cpu_ms) > 0;
  const liveFuel = !o && t.live_fuel != null && Number(t.live_fuel) > 0;
  const metered = o ? Boolean(o.fuel_metered) : (lim.fuel > 0 || Boolean(lim.meter_fuel) || liveFuel);
  const fuel = o && o.fuel_consumed != null ? Number(o.fuel_consumed) : (liveFuel ? Number(t.live_fuel) : null);
  const cpu = o && o.cpu_ms != null ? Number(o.cpu_ms) : (live ? Number(t.live_cpu_ms) : null);
  const cpus = t.resources && t.resources.cpus != null ? Number(t.resources.cpus) : null;
  const peak = o && o.peak_memory_bytes != null ? Number(o.peak_memory_bytes)
    : (live ? Number(t.live_mem_bytes) : null);
  let wall = o && o.wall_ms != null ? Number(o.wall_ms) : null;
  if (wall == null && validMs(t.started_at_ms)) {
    wall = (validMs(t.finished_at_ms) ? Number(t.finished_at_ms) : Date.now()) - Number(t.started_at_ms);
  }
  const meter = (used, limit, label) => (limit > 0 && used != null
    ? [bar(used / limit, label), ' ', h('span', { class: 'small muted' }, pct(used / limit))] : '');
  const rows = [
    h('tr', { 'data-limit': 'cpu' }, h('th', null, 'cpu time'),
      h('td', { class: 'n' }, h('span', { id: 'cpu-used', class: 'mono' }, cpu == null ? '' : fmtDur(cpu)),
        cpu == null ? h('span', { class: 'muted' }, 'not yet known') : null,
        live ? h('span', { class: 'small muted' }, ' so far (' + Math.round((Number(t.cpu_cores) || 0) * 100) + '% of a core)') : null),
      h('td', { class: 'n' }, cpus == null ? '—' : String(cpus) + ' cpus'),
      h('td', { class: 'small muted' }, 'a share, not a cap (unless the agent runs --cpu-limit hard)')),
    h('tr', { 'data-limit': 'fuel' }, h('th', null, 'fuel'),
      h('td', { class: 'n' }, h('span', { id: 'fuel-used', class: 'mono' }, fuel == null ? '' : String(fuel)),
        fuel == null ? h('span', { class: 'muted' }, metered ? 'not yet known' : 'not counted') : null,
        liveFuel ? h('span', { class: 'small muted' }, ' so far (' + fmtNum(Math.round(Number(t.fuel_per_sec) || 0)) + '/s)') : null),
      h('td', { class: 'n' }, lim.fuel > 0 ? fmtNum(lim.fuel) : 'unlimited'),
      h('td', null, meter(fuel, Number(lim.fuel), 'fuel'))),
    h('tr', { 'data-limit': 'memory' }, h('th', null, live ? 'memory now' : 'peak memory'),
      h('td', { class: 'n' }, peak == null ? '—' : fmtBytes(peak)),
      h('td', { class: 'n' }, lim.mem_bytes > 0 ? fmtBytes(lim.mem_bytes) : 'none'),
      h('td', null, meter(peak, Number(lim.mem_bytes), 'memory'))),
    h('tr', { 'data-limit': 'wall' }, h('th', null, 'wall time'),
      h('td', { class: 'n' }, fmtDur(wall), o ? null : h('span', { class: 'small muted' }, ' so far')),
      h('td', { class: 'n' }, lim.timeout_ms > 0 ? fmtDur(lim.timeout_ms) : 'none'),
      h('td', null, meter(wall, Number(lim.timeout_ms), 'timeout'))),
    h('tr', { 'data-limit': 'output' }, h('th', null, 'output'),
      h('td', { class: 'n' }, h('span', { id: 'output-used' }, fmtBytes(outUsed))),
      h('td', { class: 'n' }, lim.max_output_bytes > 0 ? fmtBytes(lim.max_output_bytes) : 'none'),
      h('td', { class: 'small muted' }, 'read so far')),
  ];
  return table(['', 'used', 'limit', ''], rows, { id: 'limits' });
}

function outcomeBlock(t) {
  const o = t.outcome;
  if (!o) return h('p', { class: 'muted' }, isEnded(t.state) ? 'no outcome recorded' : 'no outcome yet: the task has not ended');
  return h('dl', { class: 'kv', id: 'outcome' },
    kv('kind', badge(o.kind, { id: 'outcome-kind' })),
    kv('exit code', o.exit_code == null ? '—' : h('span', { class: 'mono' }, String(o.exit_code))),
    kv('cpu time', fmtDur(o.cpu_ms)),
    kv('fuel consumed', o.fuel_consumed == null ? 'not counted' : fmtNum(o.fuel_consumed)),
    kv('peak memory', fmtBytes(o.peak_memory_bytes)),
    kv('wall time', fmtDur(o.wall_ms)));
}

function eventsTable(events) {
  const list = Array.isArray(events) ? events : [];
  const t0 = list.length ? Number(list[0].at_ms) : 0;
  const rows = list.map((ev) => h('tr', null,
    h('td', { class: 'nowrap' }, timeEl(ev.at_ms)),
    h('td', { class: 'n nowrap muted' }, validMs(ev.at_ms) && t0 ? '+' + fmtDur(Number(ev.at_ms) - t0) : ''),
    h('td', { 'data-field': 'state' }, badge(ev.state)),
    h('td', { class: 'small' }, txt(ev.reason)),
    h('td', { class: 'small msg' }, txt(ev.message))));
  return [
    table(['time', 'since first', 'state', 'reason', 'message'], rows, { id: 'events', class: 'list' }),
    list.length ? null : h('p', { class: 'empty' }, 'no events recorded'),
  ];
}

function specBlock(spec) {
  const s = spec || {};
  const chips = (xs) => (Array.isArray(xs) && xs.length ? xs.map((x) => h('code', { class: 'chip' }, String(x))) : '—');
  return h('dl', { class: 'kv' },
    kv('module sha256', h('span', { class: 'mono break' }, txt(s.module_sha256))),
    kv('args', chips(s.args)),
    kv('env keys', chips(s.env_keys)));
}

function taskDetail(t, outUsed) {
  return [
    h('section', { class: 'panel task-head' },
      h('div', { class: 'title' },
        h('h1', null, h('span', { id: 'task-id', class: 'mono break' }, String(t.task_id))),
        badge(t.state, { id: 'task-state' })),
      h('dl', { class: 'kv' },
        kv('name', txt(t.name)),
        kv('framework', filterLink('framework', t.framework_id, 'mono')),
        kv('role', filterLink('role', t.role)),
        kv('agent', t.agent_id ? h('a', { class: 'mono', href: '#/agents?agent=' + enc(t.agent_id) }, String(t.agent_id)) : '—'),
        kv('attempt', txt(t.attempt)),
        kv('resources', txt(t.resources_text)),
        kv('submitted', timeEl(t.submitted_at_ms)),
        kv('started', timeEl(t.started_at_ms)),
        kv('finished', timeEl(t.finished_at_ms)),
        kv('message', txt(t.message)),
        t.health_checked ? kv('health', h('span', { id: 'task-health' },
          t.healthy == null ? 'not checked yet' : (t.healthy ? 'healthy' : 'unhealthy'),
          t.health_message ? ' — ' + String(t.health_message) : '')) : null)),
    h('div', { class: 'cols' },
      h('section', { class: 'panel' }, h('h2', null, 'limits vs use'), limitsTable(t, outUsed)),
      h('section', { class: 'panel' }, h('h2', null, 'outcome'), outcomeBlock(t))),
    h('section', { class: 'panel' }, h('h2', null, 'events'), eventsTable(t.events)),
    h('section', { class: 'panel' }, h('h2', null, 'spec'), specBlock(t.spec)),
  ];
}

function outputPane(stream) {
  const pre = h('pre', { id: stream, class: 'out', tabindex: '0' });
  const status = h('span', { class: 'small muted' }, 'loading…');
  const note = h('span', { class: 'small muted', hidden: true }, ' · oldest output dropped (pane keeps the last 1 MiB)');
  return { pre, status, note, el: h('section', { class: 'panel pane' }, h('div', { class: 'pane-head' }, h('h2', null, stream), status, note), pre) };
}

// Poll /output for one stream: append new text; keep polling every second
// while the server says the task is running; stop when it is not, or when
// the view is left (ctx timers are cleared).
function followOutput(ctx, id, stream, pane, onProgress) {
  const st = { offset: 0, buf: '', busy: false };
  const append = (data) => {
    const pre = pane.pre;
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 16;
    st.buf += data;
    if (st.buf.length > OUT_CAP) {
      let cut = st.buf.length - OUT_CAP;
      const nl = st.buf.indexOf('\n', cut); // prefer to cut at a line start
      if (nl >= 0 && nl - cut < 4096) cut = nl + 1;
      st.buf = st.buf.slice(cut);
      pane.note.hidden = false;
    }
    pre.textContent = st.buf;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  };
  const tick = async () => {
    if (!ctx.alive) return;
    st.busy = true;
    let r;
    try {
      r = await api(`/api/tasks/${enc(id)}/output?stream=${stream}&offset=${st.offset}`);
    } catch (e) {
      // The task's agent is slow or away (503): ask again, as `logs --follow` does.
      if (ctx.alive && e instanceof ApiError && e.status === 503) {
        pane.status.textContent = 'waiting for its agent';
        ctx.later(tick, OUTPUT_POLL_MS);
        return;
      }
      st.busy = false;
      if (ctx.alive) pane.status.textContent = 'unavailable';
      handleErr(ctx, e instanceof ApiError ? new ApiError(`${stream}: ${e.message}`, e.status) : e);
      return;
    }
    if (!ctx.alive) return;
    const data = typeof r.data === 'string' ? r.data : '';
    if (data) append(data);
    st.offset = Number.isFinite(r.next_offset) ? r.next_offset : st.offset + new TextEncoder().encode(data).length;
    onProgress();
    if (r.running) {
      pane.status.textContent = 'streaming';
      ctx.later(tick, OUTPUT_POLL_MS); // busy stays true until polling ends
    } else {
      st.busy = false;
      pane.status.textContent = st.buf ? 'complete' : 'no output';
    }
  };
  st.resume = () => { if (!st.busy) tick(); };
  tick();
  return st;
}

async function viewTask(ctx, id) {
  const detail = h('div', { class: 'task' });
  const panes = { stdout: outputPane('stdout'), stderr: outputPane('stderr') };
  main.replaceChildren(
    h('p', { class: 'crumbs' }, h('a', { href: '#/tasks' }, '← tasks')),
    detail,
    h('div', { class: 'outputs' }, panes.stdout.el, panes.stderr.el));

  const followers = {};
  const outUsed = () => (followers.stdout ? followers.stdout.offset : 0) + (followers.stderr ? followers.stderr.offset : 0);
  const load = async () => {
    const t = await api('/api/tasks/' + enc(id));
    if (!ctx.alive) return;
    detail.replaceChildren(...taskDetail(t, outUsed()));
    document.title = `${t.task_id} · wasmos`;
  };
  await load();
  ctx.loaded();

  const progress = () => {
    const el = $('output-used');
    if (el) el.textContent = fmtBytes(outUsed());
  };
  for (const s of ['stdout', 'stderr']) followers[s] = followOutput(ctx, id, s, panes[s], progress);

  // Live: refresh when an event for this task arrives (coalesced), and
  // resume output polling in case the task (re)started producing output.
  let pending = false;
  const refresh = () => {
    if (pending) return;
    pending = true;
    ctx.later(() => {
      pending = false;
      load().then(() => { for (const f of Object.values(followers)) f.resume(); })
        .catch((e) => handleErr(ctx, e));
    }, 250);
  };
  ctx.handlers.task = (d) => { if (d && d.task_id === id) refresh(); };
  ctx.handlers.resync = refresh;
}

/* ------------------------------------------------------------------ */
/* Live updates (server-sent events)                                   */
/* ------------------------------------------------------------------ */

let es = null;
let esTimer = null;
let esWasDown = false;
let probeAt = 0;

function setLive(on) {
  const el = $('live');
  el.textContent = on ? 'live' : 'reconnecting';
  el.classList.toggle('on', on);
}

function startEvents() {
  stopEvents();
  if (typeof EventSource === 'undefined') return;
  const src = (es = new EventSource('/api/events'));
  src.onopen = () => {
    if (src !== es) return;
    setLive(true);
    // After an outage we may have missed events: let the view catch up.
    if (esWasDown) { esWasDown = false; dispatch('resync', null); }
  };
  src.onerror = () => {
    if (src !== es) return;
    setLive(false);
    esWasDown = true;
    probeAuth();
    // The browser retries by itself unless the connection was refused
    // outright (e.g. an HTTP error status); then retry by hand.
    if (src.readyState === EventSource.CLOSED) {
      clearTimeout(esTimer);
      esTimer = setTimeout(() => { if (loggedIn && es === src) startEvents(); }, 5000);
    }
  };
  for (const type of ['task', 'agent', 'framework', 'overview']) {
    src.addEventListener(type, (ev) => {
      if (src !== es) return;
      let data;
      try { data = JSON.parse(ev.data); } catch (e) { return; }
      dispatch(type, data);
    });
  }
}

function stopEvents() {
  clearTimeout(esTimer);
  esTimer = null;
  if (es) es.close();
  es = null;
  setLive(false);
}

// On stream errors, check (at most every 5 s) whether the session expired.
async function probeAuth() {
  const now = Date.now();
  if (now - probeAt < 5000) return;
  probeAt = now;
  try {
    const res = await fetch('/api/whoami', { credentials: 'same-origin' });
    if (res.status === 401 && loggedIn) showLogin();
  } catch (e) { /* master unreachable: keep reconnecting */ }
}

/* ------------------------------------------------------------------ */
/* Login / logout / session                                            */
/* ------------------------------------------------------------------ */

function showWho(me) {
  const el = $('whoami');
  el.textContent = me && me.name ? String(me.name) : '';
  el.title = me && Array.isArray(me.grants) ? 'grants: ' + me.grants.join(', ') : '';
}

function showLogin(message) {
  const wasIn = loggedIn;
  loggedIn = false;
  stopView();
  stopEvents();
  hideError();
  showWho(null);
  document.body.classList.add('logged-out');
  main.hidden = true;
  main.replaceChildren();
  $('login').hidden = false;
  if (wasIn || message) $('login-error').textContent = message || '';
  setViewName('login');
  document.body.dataset.loaded = '1';
  $('token-input').focus();
}

// Enter the logged-in state: who am I, live stream, current view.
async function enter() {
  try {
    showWho(await api('/api/whoami'));
  } catch (e) {
    if (e instanceof AuthError) return; // showLogin() already ran
    showWho(null); // whoami unavailable: carry on, views will report errors
  }
  loggedIn = true;
  document.body.classList.remove('logged-out');
  $('login').hidden = true;
  main.hidden = false;
  startEvents();
  route();
}

async function doLogin(e) {
  e.preventDefault();
  const input = $('token-input');
  const button = $('login-button');
  const errEl = $('login-error');
  const token = input.value.trim();
  if (!token) { errEl.textContent = 'enter a token'; return; }
  errEl.textContent = '';
  button.disabled = true;
  try {
    const res = await fetch('/api/login', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token }),
    });
    if (res.ok) {
      input.value = '';
      await enter();
    } else {
      errEl.textContent = await errorText(res);
    }
  } catch (err) {
    errEl.textContent = 'cannot reach the master';
  } finally {
    button.disabled = false;
  }
}

async function doLogout() {
  try {
    await fetch('/api/logout', { method: 'POST', credentials: 'same-origin' });
  } catch (e) { /* show the login view anyway */ }
  showLogin();
}

/* ------------------------------------------------------------------ */
/* Boot                                                                */
/* ------------------------------------------------------------------ */

function boot() {
  main = $('main');
  $('login-form').addEventListener('submit', doLogin);
  $('logout-button').addEventListener('click', doLogout);
  $('error').addEventListener('click', hideError);
  window.addEventListener('hashchange', route);
  // Clicking the link of the current view reloads it.
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.addEventListener('click', () => {
      if (a.getAttribute('href') === (location.hash || '#/')) route();
    });
  }
  setLive(false);
  enter();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
else boot();
