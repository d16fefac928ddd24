// Overview: slaves active and lost, cpus and memory used of offered, tasks by state, and
// the tasks that ended in each minute of the last hour.
import {STATES, TERMINAL, bar, el, fmtNum, getJSON, listTasks} from './util.js';

const MINUTES = 60;

function chart(buckets) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${MINUTES * 10} 106`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('class', 'chart');
  svg.setAttribute('role', 'img');
  const total = buckets.reduce((a, b) => a + b, 0);
  const peak = Math.max(1, ...buckets);
  svg.setAttribute('aria-label', `${total} tasks ended in the last hour; at most ${peak} in one minute`);
  buckets.forEach((n, i) => {
    const h = (n / peak) * 100;
    const r = document.createElementNS(ns, 'rect');
    r.setAttribute('x', String(i * 10 + 1)); r.setAttribute('width', '8');
    r.setAttribute('y', String(105 - h)); r.setAttribute('height', String(h));
    const tip = document.createElementNS(ns, 'title');
    tip.textContent = `${n} ended ${MINUTES - 1 - i} min ago`;
    r.append(tip);
    svg.append(r);
  });
  const axis = document.createElementNS(ns, 'line');
  axis.setAttribute('x1', '0'); axis.setAttribute('x2', String(MINUTES * 10));
  axis.setAttribute('y1', '105.5'); axis.setAttribute('y2', '105.5'); axis.setAttribute('class', 'axis');
  svg.append(axis);
  return svg;
}

function resourceRow(label, used, total, unit) {
  return el('div', {class: 'bar-row'}, el('span', {class: 'label', text: label}),
    bar(total > 0 ? used / total : 0, `${label} used of offered`),
    el('span', {class: 'value', text: `${fmtNum(used)} / ${fmtNum(total)}${unit}`}));
}

export function mount(root) {
  const errorBox = el('p', {class: 'error', role: 'alert'});
  const slavesCard = el('section', {class: 'card', id: 'ov-slaves', 'aria-labelledby': 'ov-slaves-h'});
  const resCard = el('section', {class: 'card', id: 'ov-resources', 'aria-labelledby': 'ov-res-h'});
  const tasksCard = el('section', {class: 'card', id: 'ov-tasks', 'aria-labelledby': 'ov-tasks-h'});
  const chartCard = el('section', {class: 'card', id: 'ov-chart', 'aria-labelledby': 'ov-chart-h'});
  root.append(el('h1', {text: 'Overview'}), errorBox,
    el('div', {class: 'grid'}, slavesCard, resCard, tasksCard), chartCard);
  let ended = new Map();  // task id -> finished_at, for the last hour
  let stateTimer = null;

  function renderState(st) {
    const sc = st.slave_counts || {};
    slavesCard.replaceChildren(el('h2', {id: 'ov-slaves-h'}, el('a', {href: '#/slaves', text: 'Slaves'})),
      el('p', {}, el('span', {class: 'big', 'data-f': 'active', text: String(sc.active || 0)}), ' active'),
      el('ul', {class: 'counts'}, ...['disconnected', 'lost', 'removed'].map((k) =>
        el('li', {}, el('span', {class: 'state', style: `--state-color: var(--state-${k})`, text: `${sc[k] || 0} ${k}`})))));
    const active = (st.slaves || []).filter((s) => s.state === 'active');
    const sum = (k) => active.reduce((a, s) => a + (Number(s[k]) || 0), 0);
    resCard.replaceChildren(el('h2', {id: 'ov-res-h', text: 'Resources of active slaves'}),
      resourceRow('cpus', sum('used_cpus'), sum('cpus'), ''),
      resourceRow('mem', sum('used_mem'), sum('mem'), ' MiB'));
    const tc = st.task_counts || {};
    const total = STATES.reduce((a, s) => a + (tc[s] || 0), 0);
    tasksCard.replaceChildren(el('h2', {id: 'ov-tasks-h'}, el('a', {href: '#/tasks', text: 'Tasks'})),
      el('p', {}, el('span', {class: 'big', text: String(total)}), ' in all'),
      el('ul', {class: 'counts', id: 'ov-task-counts'}, ...STATES.map((s) => el('li', {},
        el('a', {href: `#/tasks?state=${s}`, class: 'state', 'data-state': s,
          style: `--state-color: var(--state-${s})`, text: `${tc[s] || 0} ${s}`})))));
  }

  function renderChart() {
    const now = Date.now() / 1000;
    const buckets = new Array(MINUTES).fill(0);
    for (const [id, at] of ended) {
      const age = now - at;
      if (age > MINUTES * 60) { ended.delete(id); continue; }
      buckets[Math.min(MINUTES - 1, MINUTES - 1 - Math.floor(Math.max(0, age) / 60))] += 1;
    }
    chartCard.replaceChildren(el('h2', {id: 'ov-chart-h', text: 'Tasks ended per minute, last hour'}), chart(buckets),
      el('div', {class: 'chart-axis', 'aria-hidden': 'true'}, el('span', {text: '60 min ago'}), el('span', {text: 'now'})));
  }

  async function loadState() {
    try { renderState(await getJSON('/master/state')); errorBox.textContent = ''; }
    catch (err) { errorBox.textContent = `could not read /master/state: ${err.message}`; }
  }

  async function loadEnded() {
    const since = Date.now() / 1000 - MINUTES * 60;
    const fresh = new Map();
    try {
      // Newest first; stop at a page whose tasks all ended before the hour (bounded).
      for (let page = 0; page < 20; page++) {
        const got = await listTasks({limit: 500, offset: page * 500, state: [...TERMINAL].join(',')});
        let recent = 0;
        for (const t of got.tasks) if (t.finished_at && t.finished_at >= since) { fresh.set(String(t.id), t.finished_at); recent++; }
        if (!got.paged || !recent || (page + 1) * 500 >= got.total) break;
      }
      ended = fresh;
    } catch (_) { /* the counts card shows the error */ }
    renderChart();
  }

  const soon = () => { if (!stateTimer) stateTimer = setTimeout(() => { stateTimer = null; loadState(); }, 1000); };
  loadState();
  loadEnded();
  const minute = setInterval(renderChart, 30000);

  return {
    unmount() { clearTimeout(stateTimer); clearInterval(minute); },
    onEvent(ev) {
      if (ev.type === 'task') {
        if (TERMINAL.has(ev.task.state) && ev.task.finished_at) { ended.set(String(ev.task.id), ev.task.finished_at); renderChart(); }
        soon();
      } else if (ev.type === 'slave') soon();
      else if (ev.type === 'reset' || ev.type === 'poll') { loadState(); if (ev.type === 'reset') loadEnded(); }
    },
  };
}
