// Task: every field, attempts and usage when the master has them, a live log tail with
// follow, and a kill button (asking for the secret only when the master wants one).
import {ApiError, TERMINAL, bar, el, fmtDuration, fmtNum, fmtTime, getJSON, pctText, request,
  runtime, secret, setSecret, stateBadge, updateBar} from './util.js';
import {newer} from './tasks.js';

const LOG_CHUNK = 65536;
const LOG_KEEP = 1 << 20;  // characters of log kept on the page (the start is trimmed)
const TIME_FIELDS = new Set(['submitted_at', 'started_at', 'finished_at', 'updated_at',
  'launched_at', 'retry_at', 'timestamp']);

function value(key, v, t) {
  if (v === null || v === undefined || v === '') return '-';
  if (key === 'state') return stateBadge(v);
  if (key === 'progress') {
    const shown = t.state === 'FINISHED' ? 1 : v;
    return el('span', {class: 'progress-cell'}, bar(shown, 'progress', t.state),
      el('span', {class: 'pct', 'data-f': 'pct', text: pctText(shown)}));
  }
  if (key === 'slave_id') return el('a', {href: `#/slaves/${encodeURIComponent(v)}`, text: v});
  if (key === 'command') return el('code', {text: v});
  if (TIME_FIELDS.has(key)) return el('time', {datetime: new Date(v * 1000).toISOString(), text: fmtTime(v)});
  if (key === 'mem') return `${fmtNum(v)} MiB`;
  if (key === 'timeout' || key === 'retry_delay') return fmtDuration(v);
  if (typeof v === 'object') return el('code', {text: JSON.stringify(v)});
  return String(v);
}

function usageTable(usage) {
  const rows = Object.entries(usage).map(([k, v]) => el('tr', {},
    el('th', {scope: 'row', text: k.replace(/_/g, ' ')}),
    el('td', {class: 'num', text: v === null || v === undefined ? '-'
      : TIME_FIELDS.has(k) && typeof v === 'number' ? fmtTime(v)
        : typeof v === 'number' ? fmtNum(v) : String(v)})));
  return el('table', {class: 'usage', id: 'task-usage'}, el('tbody', {}, ...rows));
}

// One usage object (cpu_seconds, mem_mib, mem_peak_mib, source) in a few words.
function usageText(u) {
  if (!u || typeof u !== 'object') return '-';
  return `${fmtNum(u.cpu_seconds ?? 0)} cpu-s, peak ${fmtNum(u.mem_peak_mib ?? 0)} MiB (${u.source ?? '?'})`;
}

// GET /master/tasks/<id>'s `attempts`: [{attempt, slave_id, state, launched_at, started_at,
// finished_at, exit_code, message, usage}], each with a link to its own output.
function attemptsTable(id, attempts) {
  const keys = [...new Set(attempts.flatMap((a) => Object.keys(a)))];
  return el('div', {class: 'table-wrap'}, el('table', {id: 'task-attempts'},
    el('caption', {text: `${attempts.length} attempt${attempts.length === 1 ? '' : 's'}`}),
    el('thead', {}, el('tr', {}, ...keys.map((k) => el('th', {scope: 'col', text: k.replace(/_/g, ' ')})),
      el('th', {scope: 'col', text: 'output'}))),
    el('tbody', {}, ...attempts.map((a) => el('tr', {}, ...keys.map((k) => {
      const v = a[k];
      if (k === 'state' && v) return el('td', {}, stateBadge(v));
      if (k === 'slave_id' && v) return el('td', {}, el('a', {href: `#/slaves/${encodeURIComponent(v)}`, text: v}));
      if (k === 'usage') return el('td', {text: usageText(v)});
      if (TIME_FIELDS.has(k) && typeof v === 'number') return el('td', {text: fmtTime(v)});
      return el('td', {text: v === null || v === undefined || v === '' ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v)});
    }), el('td', {}, el('a', {href: `/master/tasks/${encodeURIComponent(id)}/logs?attempt=${encodeURIComponent(a.attempt)}`, text: 'stdout'}),
      ' ', el('a', {href: `/master/tasks/${encodeURIComponent(id)}/logs?stream=stderr&attempt=${encodeURIComponent(a.attempt)}`, text: 'stderr'})))))));
}

// Asks for the secret in the page's <dialog>; resolves to it, or '' when cancelled.
function askSecret(message) {
  const dialog = document.getElementById('secret-dialog');
  const input = document.getElementById('secret-input');
  document.getElementById('secret-error').textContent = message || '';
  input.value = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok' ? input.value : ''), {once: true});
    dialog.showModal();
    input.focus();
  });
}

export function mount(root, {id}) {
  let task = null;
  let stream = 'stdout';
  let offset = 0;
  let eof = false;
  let logTimer = null;
  let logBusy = false;
  let gone = false;
  let decoder = new TextDecoder();  // per stream: a character split across reads stays whole

  const title = el('h1', {}, `Task ${id}`);
  const errorBox = el('p', {class: 'error', role: 'alert'});
  const facts = el('dl', {class: 'facts', id: 'task-facts'});
  const extra = el('div');
  const killBtn = el('button', {type: 'button', class: 'danger', id: 'kill', text: 'Kill task', hidden: true});
  const killNote = el('p', {class: 'muted', role: 'status', id: 'kill-status'});
  const pre = el('pre', {class: 'log', id: 'log', tabindex: '0', 'aria-label': 'task output'});
  const follow = el('input', {type: 'checkbox', id: 'log-follow', checked: true});
  const logNote = el('span', {class: 'muted', id: 'log-note', role: 'status'});
  const radios = ['stdout', 'stderr'].map((s) => el('label', {},
    el('input', {type: 'radio', name: 'log-stream', value: s, id: `log-${s}`, checked: s === stream}), ` ${s}`));

  root.append(
    el('p', {}, el('a', {href: '#/tasks', text: '← all tasks'})),
    title, errorBox,
    el('div', {class: 'grid'},
      el('section', {class: 'card', 'aria-labelledby': 'fields-h'},
        el('h2', {id: 'fields-h', text: 'Fields'}), facts,
        el('p', {}, killBtn), killNote),
      el('section', {class: 'card', 'aria-labelledby': 'extra-h'},
        el('h2', {id: 'extra-h', text: 'Attempts and usage'}), extra)),
    el('section', {'aria-labelledby': 'log-h'},
      el('h2', {id: 'log-h', text: 'Output'}),
      el('div', {class: 'log-controls'},
        el('fieldset', {}, el('legend', {class: 'muted', text: 'stream'}), ...radios),
        el('label', {for: 'log-follow'}, follow, ' follow'),
        el('a', {id: 'log-raw', text: 'raw'}),
        logNote),
      pre));

  function renderFacts() {
    facts.replaceChildren();
    for (const [k, v] of Object.entries(task)) {
      if (k === 'usage' || (k === 'attempts' && Array.isArray(v))) continue;
      facts.append(el('dt', {text: k.replace(/_/g, ' ')}), el('dd', {'data-key': k}, value(k, v, task)));
    }
    facts.append(el('dt', {text: 'runtime'}), el('dd', {'data-key': 'runtime', text: fmtDuration(runtime(task))}));
    killBtn.hidden = TERMINAL.has(task.state);
    extra.replaceChildren();
    if (task.pending_reason) extra.append(el('p', {class: 'muted', id: 'retry-note', role: 'status', text: task.pending_reason}));
    if (task.usage && typeof task.usage === 'object') extra.append(el('h3', {text: 'usage'}), usageTable(task.usage));
    if (Array.isArray(task.attempts) && task.attempts.length) extra.append(attemptsTable(task.id, task.attempts));
    if (!extra.childElementCount) {
      const count = task.attempt ?? (Array.isArray(task.attempts) ? task.attempts.length : task.attempts ?? 0);
      extra.append(el('p', {class: 'muted', text: `attempts: ${count} (retries allowed: ${task.retries ?? 0}); the master reports no resource usage for this task`}));
    }
    document.getElementById('log-raw').href = `/master/tasks/${encodeURIComponent(id)}/logs?stream=${stream}`;
  }

  async function load() {
    try {
      const t = await getJSON(`/master/tasks/${encodeURIComponent(id)}`);
      if (!newer(t, task)) return;
      task = t; errorBox.textContent = ''; renderFacts();
      title.textContent = `Task ${t.id}${t.name && t.name !== t.id ? ` — ${t.name}` : ''}`;
      document.title = `task ${t.id} · cluster`;
    } catch (err) {
      errorBox.textContent = err.status === 404 ? `no task with id ${id}` : `could not load the task: ${err.message}`;
    }
  }

  function appendLog(text) {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    let all = pre.textContent + text;
    if (all.length > LOG_KEEP) all = all.slice(all.length - LOG_KEEP);
    pre.textContent = all;
    if (follow.checked && atBottom) pre.scrollTop = pre.scrollHeight;
  }

  async function pullLog() {
    if (logBusy || gone) return;
    logBusy = true;
    try {
      for (let rounds = 0; rounds < 32 && !gone; rounds++) {
        const q = new URLSearchParams({stream, offset: String(offset), limit: String(LOG_CHUNK)});
        const mine = stream;
        const resp = await request(`/master/tasks/${encodeURIComponent(id)}/logs?${q}`, {raw: true});
        const text = decoder.decode(await resp.arrayBuffer(), {stream: true});
        if (mine !== stream) return;  // switched streams meanwhile
        const next = Number(resp.headers.get('X-Log-Offset'));
        offset = Number.isFinite(next) ? next : offset + text.length;
        eof = resp.headers.get('X-Log-Eof') === '1';
        if (text) appendLog(text);
        logNote.textContent = eof ? `end of ${stream}` : (follow.checked ? `following ${stream}…` : '');
        if (eof || !text) break;
      }
    } catch (err) {
      logNote.textContent = err instanceof ApiError && err.status === 404
        ? `no ${stream} yet${task ? ` (task is ${task.state})` : ''}` : `could not read ${stream}: ${err.message}`;
      if (task && TERMINAL.has(task.state) && err.status === 404) eof = true;
    } finally {
      logBusy = false;
    }
  }

  function schedule() {
    clearInterval(logTimer);
    logTimer = setInterval(() => { if (follow.checked && !eof) pullLog(); }, 1000);
  }

  for (const r of root.querySelectorAll('input[name="log-stream"]')) {
    r.addEventListener('change', () => {
      stream = r.value; offset = 0; eof = false; pre.textContent = ''; decoder = new TextDecoder();
      if (task) renderFacts();
      pullLog();
    });
  }
  follow.addEventListener('change', () => { if (follow.checked) { pre.scrollTop = pre.scrollHeight; pullLog(); } });

  killBtn.addEventListener('click', async () => {
    killBtn.disabled = true;
    killNote.textContent = 'killing…';
    try {
      for (let tries = 0; tries < 3; tries++) {
        try {
          const answer = await request(`/master/tasks/${encodeURIComponent(id)}/kill`, {method: 'POST', body: {}});
          killNote.textContent = answer.state === 'KILLED' ? 'killed' : 'kill sent to its slave';
          return;
        } catch (err) {
          if (err.status !== 401) throw err;
          const given = await askSecret(secret() ? 'that secret was refused' : '');
          if (!given) { killNote.textContent = 'not killed: the master needs its secret'; return; }
          setSecret(given);
        }
      }
      killNote.textContent = 'not killed: the secret was refused';
    } catch (err) {
      killNote.textContent = `could not kill: ${err.message}`;
    } finally {
      killBtn.disabled = false;
    }
  });

  load().then(() => pullLog());
  schedule();

  return {
    unmount() { gone = true; clearInterval(logTimer); },
    onEvent(ev) {
      if (ev.type === 'task' && String(ev.task.id) === String(id)) {
        // An event carries the record only (`attempts` is a count there): fetch the page's
        // whole task again, with its attempts and usage.
        if (!newer(ev.task, task)) return;
        load();
        if (!eof) pullLog();
      } else if (ev.type === 'progress' && task && !TERMINAL.has(task.state)) {
        const item = ev.tasks.find((x) => String(x.id) === String(id));
        if (!item || !newer(item, task)) return;
        task = {...task, progress: item.progress, updated_at: item.updated_at};
        const dd = facts.querySelector('[data-key="progress"]');
        if (dd) { updateBar(dd.querySelector('.bar'), item.progress); dd.querySelector('.pct').textContent = pctText(item.progress); }
      } else if (ev.type === 'reset' || ev.type === 'poll') {
        load();
      }
    },
    tick() {
      if (task && !TERMINAL.has(task.state)) {
        const dd = facts.querySelector('[data-key="runtime"]');
        if (dd) dd.textContent = fmtDuration(runtime(task));
      }
    },
  };
}
