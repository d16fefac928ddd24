// Slaves: resources used of offered as bars, state, last contact, the tasks on each.
import {bar, el, field, fmtAgo, fmtNum, fromTemplate, getJSON, setState, updateBar} from './util.js';

function resource(used, total, unit, label, state) {
  const fraction = total > 0 ? used / total : 0;
  return el('div', {class: 'bar-row'}, el('span', {class: 'label', text: label}),
    bar(fraction, `${label} used of offered`, state === 'active' ? null : state),
    el('span', {class: 'value', text: `${fmtNum(used)} / ${fmtNum(total)}${unit}`}));
}

function renderCard(card, s, highlight) {
  card.dataset.slaveId = s.id;
  card.id = `slave-${s.id}`;
  card.classList.toggle('highlight', highlight);
  const link = field(card, 'link');
  link.href = `#/slaves/${encodeURIComponent(s.id)}`;
  link.textContent = s.id;
  setState(field(card, 'state'), s.state);
  field(card, 'hostname').textContent = s.hostname || '-';
  field(card, 'pid').replaceChildren(el('code', {text: s.pid || '-'}));
  field(card, 'contact').textContent = fmtAgo(s.last_contact);
  field(card, 'contact').dataset.epoch = String(s.last_contact ?? '');
  field(card, 'isolation').textContent = [s.isolation, s.cgroup_version].filter(Boolean).join(' ') || '-';
  field(card, 'resources').replaceChildren(
    resource(s.used_cpus || 0, s.cpus || 0, '', 'cpus', s.state),
    resource(s.used_mem || 0, s.mem || 0, ' MiB', 'mem', s.state));
  const tasks = s.tasks || [];
  field(card, 'tasks').replaceChildren(tasks.length
    ? el('span', {class: 'task-links'}, ...tasks.slice(0, 100).map((id) => el('a', {href: `#/tasks/${encodeURIComponent(id)}`, text: id})),
      tasks.length > 100 ? el('span', {class: 'muted', text: `+${tasks.length - 100} more`}) : null)
    : el('span', {class: 'muted', text: 'none running'}));
}

export function mount(root, {id}) {
  const cards = new Map();
  const list = el('div', {class: 'grid', id: 'slaves'});
  const errorBox = el('p', {class: 'error', role: 'alert'});
  const summary = el('p', {class: 'muted', 'aria-live': 'polite'});
  root.append(el('h1', {text: 'Slaves'}), summary, errorBox, list);
  let focus = id || '';

  function upsert(s) {
    let card = cards.get(s.id);
    if (!card) { card = fromTemplate('slave-card'); cards.set(s.id, card); list.append(card); }
    renderCard(card, s, s.id === focus);
  }

  function renderSummary() {
    const by = {};
    for (const c of cards.values()) { const st = field(c, 'state').dataset.state; by[st] = (by[st] || 0) + 1; }
    summary.textContent = cards.size
      ? `${cards.size} slave${cards.size === 1 ? '' : 's'}: ${Object.entries(by).map(([k, n]) => `${n} ${k}`).join(', ')}`
      : 'no slaves registered; start one with: cluster slave --master HOST:PORT';
  }

  async function load() {
    try {
      const data = await getJSON('/master/slaves');
      errorBox.textContent = '';
      for (const s of data.slaves || []) upsert(s);
      renderSummary();
      if (focus && cards.has(focus)) cards.get(focus).scrollIntoView({block: 'nearest'});
      else if (focus) errorBox.textContent = `no slave with id ${focus}`;
    } catch (err) {
      errorBox.textContent = `could not list slaves: ${err.message}`;
    }
  }
  load();
  // Used resources change with every launch and end: refresh them at most every 2 s.
  let refresh = null;
  const soon = () => { if (!refresh) refresh = setTimeout(() => { refresh = null; load(); }, 2000); };

  return {
    update() {},
    unmount() { clearTimeout(refresh); },
    onEvent(ev) {
      if (ev.type === 'slave') { upsert(ev.slave); renderSummary(); }
      else if (ev.type === 'task') soon();
      else if (ev.type === 'reset' || ev.type === 'poll') load();
    },
    tick() {
      for (const c of cards.values()) {
        const dd = field(c, 'contact');
        if (dd.dataset.epoch) dd.textContent = fmtAgo(Number(dd.dataset.epoch));
      }
    },
  };
}
