// Shared helpers of the dashboard pages: JSON calls, formatting, DOM building, the live
// event stream. No framework: every text goes in through textContent, never as markup.

export const STATES = ['PENDING', 'STAGING', 'RUNNING', 'FINISHED', 'FAILED', 'KILLED', 'LOST'];
export const TERMINAL = new Set(['FINISHED', 'FAILED', 'KILLED', 'LOST']);

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

const SECRET_KEY = 'cluster-secret';  // sessionStorage: this tab only, never localStorage

export function secret() { return sessionStorage.getItem(SECRET_KEY) || ''; }
export function setSecret(value) {
  if (value) sessionStorage.setItem(SECRET_KEY, value); else sessionStorage.removeItem(SECRET_KEY);
}

// fetch() with the master's error shape ({"error": ...}) turned into ApiError.
export async function request(path, {method = 'GET', body, raw = false} = {}) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const s = secret();
  if (s && method !== 'GET') headers.Authorization = `Bearer ${s}`;
  let resp;
  try {
    resp = await fetch(path, {method, headers, cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (err) {
    throw new ApiError(0, `cannot reach the master (${err.message})`);
  }
  if (!resp.ok) {
    let message = `HTTP ${resp.status}`;
    try { const j = await resp.json(); if (j && typeof j.error === 'string') message = j.error; } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, message);
  }
  return raw ? resp : resp.json();
}

export const getJSON = (path) => request(path);

function byIdDesc(a, b) {
  const x = Number(a.id), y = Number(b.id);
  if (Number.isFinite(x) && Number.isFinite(y) && x !== y) return y - x;
  return String(b.id).localeCompare(String(a.id));
}

// GET /master/tasks in either shape: today's {"tasks": [...]} (every task, oldest first,
// only ?state filtered) or the paged {"tasks", "total", "next"} with limit/offset/state/name.
// Answers one page, newest first: {tasks, total, paged}.
export async function listTasks({limit = 50, offset = 0, state = '', name = ''} = {}) {
  const q = new URLSearchParams({limit: String(limit), offset: String(offset), order: 'desc'});
  if (state) q.set('state', state);
  if (name) q.set('name', name);
  const data = await getJSON(`/master/tasks?${q}`);
  const tasks = Array.isArray(data.tasks) ? data.tasks : [];
  if (typeof data.total === 'number') return {tasks, total: data.total, paged: true};
  const needle = name.toLowerCase();
  const all = tasks.filter((t) => !needle || String(t.name || '').toLowerCase().includes(needle)
    || String(t.id).toLowerCase() === needle).sort(byIdDesc);
  return {tasks: all.slice(offset, offset + limit), total: all.length, paged: false};
}

// As the master's ?name= filter: the name starts with it (a task's name defaults to its id).
export function matches(task, {state = '', name = ''}) {
  if (state && !state.split(',').includes(task.state)) return false;
  return !name || String(task.name || task.id).startsWith(name);
}

// -- formatting ------------------------------------------------------------------------------

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return '-';
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const s = Math.floor(seconds), m = Math.floor(s / 60), h = Math.floor(m / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  if (h < 48) return `${h}h${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, '0')}h`;
}

export function fmtTime(epoch) {
  if (epoch === null || epoch === undefined) return '-';
  return new Date(epoch * 1000).toLocaleString();
}

export function fmtAgo(epoch) {
  if (epoch === null || epoch === undefined) return '-';
  return `${fmtDuration(Math.max(0, Date.now() / 1000 - epoch))} ago`;
}

export function runtime(task) {
  if (task.started_at === null || task.started_at === undefined) return null;
  const end = task.finished_at || Date.now() / 1000;
  return end - task.started_at;
}

export const fmtNum = (x) => (Number.isInteger(x) ? String(x) : Number(x).toFixed(2).replace(/\.?0+$/, ''));

// -- DOM -------------------------------------------------------------------------------------

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k === 'style') node.style.cssText = v;  // CSSOM: allowed by the page's CSP
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

export function fromTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

export function field(root, name) { return root.querySelector(`[data-f="${name}"]`); }

export function setState(node, state) {
  node.textContent = state;
  node.dataset.state = state;
  node.style.setProperty('--state-color', `var(--state-${state})`);
}

export function stateBadge(state) {
  const span = el('span', {class: 'state'});
  setState(span, state);
  return span;
}

// A bar: role=progressbar, fraction 0..1, coloured by `state` (a --state-* name) if given.
export function bar(fraction, label, state) {
  const fill = el('span', {class: 'fill'});
  const node = el('span', {class: 'bar', role: 'progressbar', 'aria-label': label,
    'aria-valuemin': '0', 'aria-valuemax': '100'}, fill);
  updateBar(node, fraction, state);
  return node;
}

export function updateBar(node, fraction, state) {
  const pct = Math.round(Math.max(0, Math.min(1, Number(fraction) || 0)) * 1000) / 10;
  node.firstElementChild.style.width = `${pct}%`;
  node.setAttribute('aria-valuenow', String(pct));
  if (state) node.style.setProperty('--bar-color', `var(--state-${state})`);
}

export const pctText = (fraction) => `${Math.round((Number(fraction) || 0) * 100)}%`;

// -- the live stream -------------------------------------------------------------------------

// GET /master/events through EventSource (which resends Last-Event-ID by itself on a
// reconnect). Where the master has no event stream (404, or errors before any event),
// falls back to {type: "poll"} ticks every `pollMs`, on which pages fetch again.
export class Live {
  constructor(onEvent, onMode, {url = '/master/events', pollMs = 2000} = {}) {
    this.onEvent = onEvent; this.onMode = onMode; this.url = url; this.pollMs = pollMs;
    this.es = null; this.timer = null; this.opened = false; this.failures = 0;
  }

  start() {
    if (typeof EventSource === 'undefined') { this.poll('no EventSource in this browser'); return; }
    this.es = new EventSource(this.url);
    this.es.onopen = () => { this.opened = true; this.failures = 0; this.onMode('live'); };
    this.es.onmessage = (e) => {
      let ev;
      try { ev = JSON.parse(e.data); } catch (_) { return; }
      this.onEvent(ev);
    };
    this.es.onerror = () => {
      this.failures += 1;
      if (!this.opened && this.failures >= 3) { this.es.close(); this.poll('no event stream'); return; }
      this.onMode(this.es.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
      if (this.es.readyState === EventSource.CLOSED) {  // e.g. a 503: try again later
        this.es = null;
        setTimeout(() => this.start(), 5000);
      }
    };
  }

  poll(why) {
    this.onMode('polling', why);
    this.timer = setInterval(() => this.onEvent({type: 'poll'}), this.pollMs);
  }
}
