// Tasks: a table, newest first, paged, filtered by state and name, kept current by events.
import {STATES, TERMINAL, bar, el, field, fmtDuration, fromTemplate, listTasks, matches,
  pctText, runtime, setState, updateBar} from './util.js';

const PAGE = 50;

export function renderTaskRow(tr, t) {
  tr.dataset.taskId = t.id;
  const link = field(tr, 'link');
  link.href = `#/tasks/${encodeURIComponent(t.id)}`;
  link.textContent = t.id;
  field(tr, 'name').textContent = t.name && t.name !== t.id ? t.name : '';
  setState(field(tr, 'state'), t.state);
  const cell = field(tr, 'progress');
  if (!cell.firstChild) cell.append(bar(0, `progress of task ${t.id}`), el('span', {class: 'pct'}));
  const shown = t.state === 'FINISHED' ? 1 : t.progress;
  updateBar(cell.firstChild, shown, t.state);
  cell.lastChild.textContent = pctText(shown);
  const slave = field(tr, 'slave');
  slave.replaceChildren(t.slave_id
    ? el('a', {href: `#/slaves/${encodeURIComponent(t.slave_id)}`, text: t.slave_id}) : '-');
  field(tr, 'duration').textContent = fmtDuration(runtime(t));
  field(tr, 'exit').textContent = t.exit_code === null || t.exit_code === undefined ? '-' : String(t.exit_code);
}

export function setRowProgress(tr, progress) {
  const cell = field(tr, 'progress');
  if (!cell.firstChild) return;
  updateBar(cell.firstChild, progress);
  cell.lastChild.textContent = pctText(progress);
}

// Applies an event's task to a known one only if it is not older (events and fetches race).
export const newer = (t, old) => !old || (t.updated_at || 0) >= (old.updated_at || 0);

export function mount(root, {params}) {
  let filter = {state: params.state || '', name: params.name || ''};
  let page = Math.max(0, Number(params.page || 0) | 0);
  let total = 0;
  let loading = 0;
  const rows = new Map();  // id -> {tr, task}

  const stateSelect = el('select', {id: 'filter-state', name: 'state'},
    el('option', {value: '', text: 'any state'}),
    ...STATES.map((s) => el('option', {value: s, text: s})));
  const nameInput = el('input', {id: 'filter-name', name: 'name', type: 'search',
    placeholder: 'name starts with', autocomplete: 'off'});
  const caption = el('caption', {'aria-live': 'polite'});
  const tbody = el('tbody');
  const older = el('button', {type: 'button', id: 'page-older', text: 'Older →'});
  const newerBtn = el('button', {type: 'button', id: 'page-newer', text: '← Newer'});
  const pageText = el('span', {class: 'muted'});
  const errorBox = el('p', {class: 'error', role: 'alert'});

  root.append(
    el('h1', {text: 'Tasks'}),
    el('form', {class: 'filters', role: 'search', onsubmit: (e) => e.preventDefault()},
      el('label', {for: 'filter-state'}, 'State', stateSelect),
      el('label', {for: 'filter-name'}, 'Name', nameInput)),
    errorBox,
    el('div', {class: 'table-wrap'}, el('table', {id: 'tasks-table'}, caption,
      el('thead', {}, el('tr', {},
        el('th', {scope: 'col', class: 'num', text: 'ID'}),
        el('th', {scope: 'col', text: 'Name'}),
        el('th', {scope: 'col', text: 'State'}),
        el('th', {scope: 'col', text: 'Progress'}),
        el('th', {scope: 'col', class: 'opt', text: 'Slave'}),
        el('th', {scope: 'col', class: 'num opt-narrow', text: 'Duration'}),
        el('th', {scope: 'col', class: 'num opt', text: 'Exit'}))),
      tbody)),
    el('div', {class: 'pager'}, newerBtn, pageText, older));

  function syncControls() {
    stateSelect.value = filter.state;
    if (document.activeElement !== nameInput) nameInput.value = filter.name;
  }

  function pushHash() {
    const q = new URLSearchParams();
    if (filter.state) q.set('state', filter.state);
    if (filter.name) q.set('name', filter.name);
    if (page) q.set('page', String(page));
    const hash = `#/tasks${q.toString() ? `?${q}` : ''}`;
    if (location.hash !== hash) history.replaceState(null, '', hash);
  }

  function renderCaption() {
    const first = total ? page * PAGE + 1 : 0;
    const last = Math.min(total, page * PAGE + rows.size);
    const what = [filter.state, filter.name && `named “${filter.name}”`].filter(Boolean).join(', ');
    caption.textContent = `${total} task${total === 1 ? '' : 's'}${what ? ` (${what})` : ''}, newest first`;
    pageText.textContent = total ? `${first}–${last} of ${total}` : '';
    newerBtn.disabled = page === 0;
    older.disabled = (page + 1) * PAGE >= total;
    tbody.dataset.count = String(rows.size);
  }

  function addRow(t, before = null) {
    const tr = fromTemplate('task-row');
    renderTaskRow(tr, t);
    rows.set(String(t.id), {tr, task: t});
    tbody.insertBefore(tr, before);
  }

  async function load() {
    const mine = ++loading;
    try {
      const got = await listTasks({limit: PAGE, offset: page * PAGE, ...filter});
      if (mine !== loading) return;  // a newer load started: its answer wins
      errorBox.textContent = '';
      total = got.total;
      rows.clear();
      tbody.replaceChildren();
      for (const t of got.tasks) addRow(t);
      if (!got.tasks.length) {
        tbody.append(el('tr', {class: 'empty'}, el('td', {colspan: '7', class: 'muted',
          text: total ? 'nothing on this page' : 'no tasks match'})));
      }
      renderCaption();
    } catch (err) {
      if (mine === loading) errorBox.textContent = `could not list tasks: ${err.message}`;
    }
  }

  function onTask(t) {
    const id = String(t.id);
    const row = rows.get(id);
    if (row) {
      if (!newer(t, row.task)) return;
      if (!matches(t, filter)) {  // it left the filter (e.g. RUNNING -> FINISHED)
        row.tr.remove(); rows.delete(id); total = Math.max(0, total - 1); renderCaption();
        return;
      }
      row.task = t; renderTaskRow(row.tr, t);
      return;
    }
    if (!matches(t, filter)) return;
    total += 1;
    if (page === 0) {
      tbody.querySelector('tr.empty')?.remove();
      // Newest first: before the first row with a smaller id.
      const n = Number(id);
      let before = null;
      for (const tr of tbody.children) { if (Number(tr.dataset.taskId) < n) { before = tr; break; } }
      addRow(t, before);
      while (rows.size > PAGE) {
        const lastId = tbody.lastElementChild.dataset.taskId;
        tbody.lastElementChild.remove(); rows.delete(lastId);
      }
    }
    renderCaption();
  }

  stateSelect.addEventListener('change', () => {
    filter = {...filter, state: stateSelect.value}; page = 0; pushHash(); load();
  });
  let typing = null;
  nameInput.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => { filter = {...filter, name: nameInput.value.trim()}; page = 0; pushHash(); load(); }, 300);
  });
  older.addEventListener('click', () => { page += 1; pushHash(); load(); });
  newerBtn.addEventListener('click', () => { page = Math.max(0, page - 1); pushHash(); load(); });

  syncControls();
  load();

  return {
    update(p) {
      filter = {state: p.state || '', name: p.name || ''};
      page = Math.max(0, Number(p.page || 0) | 0);
      syncControls(); load();
    },
    onEvent(ev) {
      if (ev.type === 'task') onTask(ev.task);
      else if (ev.type === 'progress') {
        for (const item of ev.tasks) {
          const row = rows.get(String(item.id));
          if (!row || TERMINAL.has(row.task.state) || !newer(item, row.task)) continue;
          row.task = {...row.task, progress: item.progress, updated_at: item.updated_at};
          setRowProgress(row.tr, item.progress);
        }
      } else if (ev.type === 'reset' || ev.type === 'poll') load();
    },
    tick() {
      for (const {tr, task} of rows.values()) {
        if (!TERMINAL.has(task.state) && task.started_at) field(tr, 'duration').textContent = fmtDuration(runtime(task));
      }
    },
  };
}
