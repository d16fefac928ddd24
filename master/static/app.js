// The dashboard's shell: a hash router (#/, #/tasks, #/tasks/<id>, #/slaves, #/slaves/<id>),
// the live event stream shared by every page, and the header's live indicator.
import {Live} from './util.js';
import * as overview from './overview.js';
import * as tasks from './tasks.js';
import * as task from './task.js';
import * as slaves from './slaves.js';

const view = document.getElementById('view');
let current = null;  // {page, handle}: the mounted page and what mount() returned

function parseHash() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query = ''] = hash.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const params = Object.fromEntries(new URLSearchParams(query));
  if (parts[0] === 'tasks' && parts[1] !== undefined) return {page: task, name: 'tasks', id: parts[1], params};
  if (parts[0] === 'tasks') return {page: tasks, name: 'tasks', params};
  if (parts[0] === 'slaves') return {page: slaves, name: 'slaves', id: parts[1], params};
  return {page: overview, name: 'overview', params};
}

function route() {
  const where = parseHash();
  for (const a of document.querySelectorAll('.top nav a')) {
    if (a.dataset.page === where.name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  // Same page, other query (a filter changed): let the page update itself in place.
  if (current && current.page === where.page && current.id === where.id && current.handle.update) {
    current.handle.update(where.params);
    return;
  }
  if (current && current.handle.unmount) current.handle.unmount();
  view.replaceChildren();
  current = {page: where.page, id: where.id, handle: where.page.mount(view, where) || {}};
}

const liveBox = document.getElementById('live');
const liveText = document.getElementById('live-text');
const MODES = {live: 'live', reconnecting: 'reconnecting…', polling: 'polling', closed: 'disconnected'};

const live = new Live(
  (ev) => { if (current && current.handle.onEvent) current.handle.onEvent(ev); },
  (mode, why) => {
    liveBox.dataset.mode = mode;
    liveText.textContent = MODES[mode] || mode;
    liveBox.title = why || (mode === 'live' ? 'updates arrive from /master/events' : '');
  },
);

window.addEventListener('hashchange', route);
route();
live.start();
// Clocks (durations, "last contact") move on their own.
setInterval(() => { if (current && current.handle.tick) current.handle.tick(); }, 1000);
