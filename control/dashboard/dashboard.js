// Tide dashboard: the page's entry point. Every 2 s (paused while the tab is hidden, or by the
// Pause button) it asks GET /v1/dashboard for what changed since the last sample it has, keeps
// the series for the chosen range, and redraws: the functions table (traffic split, instances,
// requests/s, error rate, p50/p99 of the last interval), the selected function's charts,
// revisions and autoscaler decisions; and the traces list (traces.js).
//
// Served under a content security policy that allows only this origin's scripts and styles,
// and nothing inline: no inline handlers, no style attributes; text is only ever set as text.

import { lineChart } from './charts.js';
import { ApiError, api, el, fmtAge, fmtClock, fmtCount, fmtMs, fmtPct, fmtRps, link, setToken } from './core.js';
import { createTraces } from './traces.js';

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);

const state = {
  /** The last /v1/dashboard answer. */
  data: null,
  /** Samples kept here, oldest first (the API sends only the ones after `lastAt`). */
  samples: [],
  lastAt: 0,
  keepMs: 15 * 60_000,
  intervalMs: POLL_MS,
  selected: null,
  paused: false,
  waitingForToken: false,
  timer: undefined,
  busy: false,
};

const traces = createTraces();

function setLive(kind, text) {
  const live = $('live');
  live.dataset.state = kind;
  live.textContent = text;
}

async function tick() {
  clearTimeout(state.timer);
  state.timer = undefined;
  if (state.paused || document.hidden || state.waitingForToken || state.busy) return;
  state.busy = true;
  try {
    const [dash, tr] = await Promise.allSettled([loadDashboard(), traces.refresh()]);
    const failed = [dash, tr].find((r) => r.status === 'rejected');
    if (failed) {
      const err = failed.reason;
      if (!(err instanceof ApiError && err.status === 401)) setLive('error', `error: ${err.message ?? err}`);
    } else {
      setLive('live', 'live');
      $('updated').textContent = `updated ${fmtClock(Date.now())}`;
    }
  } finally {
    state.busy = false;
    schedule();
  }
}

function schedule() {
  clearTimeout(state.timer);
  if (!state.paused && !document.hidden && !state.waitingForToken) state.timer = setTimeout(tick, POLL_MS);
}

async function loadDashboard() {
  const data = await api(`/v1/dashboard?since=${state.lastAt}`);
  // Tide restarted (its clock of samples went back): start the series again.
  if (data.now < state.lastAt) {
    state.samples = [];
    state.lastAt = 0;
  }
  for (const s of data.series ?? []) if (s.at > state.lastAt) state.samples.push(s);
  if (state.samples.length > 0) state.lastAt = state.samples[state.samples.length - 1].at;
  state.keepMs = data.keepMs ?? state.keepMs;
  state.intervalMs = data.intervalMs ?? state.intervalMs;
  const oldest = data.now - state.keepMs;
  while (state.samples.length > 0 && state.samples[0].at < oldest) state.samples.shift();
  state.data = data;
  render();
}

/** The newest sample, unless it is too old to say anything about now. */
function latest() {
  const s = state.samples[state.samples.length - 1];
  return s && state.data && state.data.now - s.at <= 3 * state.intervalMs ? s : undefined;
}

function render() {
  const data = state.data;
  if (!data) return;
  $('interval').textContent = `${(state.intervalMs / 1000).toLocaleString('en-US')} s`;
  const names = data.functions.map((f) => f.name);
  if (state.selected && !names.includes(state.selected)) state.selected = null;
  if (!state.selected && names.length > 0) state.selected = names[0];
  renderFunctions(data.functions);
  renderDetail();
  traces.setFunctions(names);
}

function splitBar(split) {
  const bar = el('div', { class: 'split', title: split.map((s) => `${s.revision}: ${s.weight} %`).join(', ') });
  split.forEach((s, i) => {
    const part = el('span');
    part.style.width = `${s.weight}%`;
    part.style.backgroundColor = i % 2 === 0 ? 'var(--c0)' : 'var(--c1)';
    bar.append(part);
  });
  return el('div', {}, bar, el('div', { class: 'split-text', text: split.map((s) => `${s.revision} ${s.weight} %`).join(' · ') }));
}

function renderFunctions(functions) {
  const now = latest();
  const rows = functions.map((f) => {
    const m = now?.functions[f.name];
    const tr = el(
      'tr',
      { 'data-function': f.name, tabindex: 0, class: f.name === state.selected ? 'selected' : '' },
      el('td', {}, el('strong', { text: f.name }), el('br'), el('span', { class: 'muted' }, link(f.url))),
      el('td', { class: `phase-${f.phase}`, title: f.lastError ?? f.pending ?? '', text: f.phase }),
      el('td', {}, splitBar(f.split)),
      el('td', { class: 'num', 'data-col': 'instances', text: `${f.readyInstances} / ${f.desiredInstances}` }),
      el('td', { class: 'num', 'data-col': 'rps', text: fmtRps(m ? m.rps : 0) }),
      el('td', {
        class: 'num',
        'data-col': 'errors',
        title: m ? `${fmtCount(m.errors, '5xx')} of ${fmtCount(m.requests, 'requests')}` : '',
        text: fmtPct(m?.errorRate),
      }),
      el('td', { class: 'num', 'data-col': 'p50', text: fmtMs(m?.p50Ms) }),
      el('td', { class: 'num', 'data-col': 'p99', text: fmtMs(m?.p99Ms) }),
    );
    const pick = () => {
      state.selected = f.name;
      render();
    };
    tr.addEventListener('click', (e) => {
      if (!(e.target instanceof HTMLAnchorElement)) pick();
    });
    tr.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') pick();
    });
    return tr;
  });
  $('functions').tBodies[0].replaceChildren(...rows);
  $('functions-empty').hidden = functions.length > 0;
}

function renderDetail() {
  const f = state.data.functions.find((x) => x.name === state.selected);
  $('detail').hidden = !f;
  if (!f) return;
  $('detail-title').textContent = `Function ${f.name}`;
  const to = state.data.now;
  const from = to - Number($('range').value);
  const samples = state.samples.filter((s) => s.at >= from);
  const pts = (fn) => samples.map((s) => [s.at, fn(s)]);
  const own = (s) => s.functions[f.name];
  const gapMs = 2.5 * state.intervalMs;
  const common = { from, to, gapMs };
  lineChart($('chart-rps'), { ...common, lines: [{ name: 'rps', points: pts((s) => own(s)?.rps ?? 0) }], format: (v) => fmtRps(v) });
  lineChart($('chart-errors'), {
    ...common,
    lines: [{ name: 'errors', points: pts((s) => (own(s)?.errorRate == null ? null : own(s).errorRate * 100)) }],
    format: (v) => `${v.toLocaleString('en-US', { maximumFractionDigits: 2 })} %`,
  });
  lineChart($('chart-latency'), {
    ...common,
    lines: [
      { name: 'p50', points: pts((s) => own(s)?.p50Ms ?? null) },
      { name: 'p99', points: pts((s) => own(s)?.p99Ms ?? null) },
    ],
    format: (v) => fmtMs(v),
  });
  const instances = (key) => (s) => Object.values(s.revisions).reduce((a, r) => a + (r.function === f.name ? r[key] : 0), 0);
  const decisions = (state.data.decisions ?? []).filter((d) => d.function === f.name);
  lineChart($('chart-instances'), {
    ...common,
    step: true,
    // Ready under desired, desired dashed: both show when they are equal.
    lines: [
      { name: 'ready', points: pts(instances('ready')) },
      { name: 'desired', points: pts(instances('desired')), dashed: true },
    ],
    markers: decisions.map((d) => ({ t: d.at, label: `${fmtClock(d.at)} ${d.revision}: ${d.desired} instances (was ready ${d.ready}): ${d.reason}` })),
    format: (v) => fmtCount(v, v === 1 ? 'instance' : 'instances'),
  });
  $('revisions').tBodies[0].replaceChildren(
    ...f.revisions.map((r) =>
      el(
        'tr',
        { 'data-revision': r.name },
        el('td', {}, el('span', { class: 'mono', text: r.name }), r.serving ? el('span', { class: 'muted', text: ' (serving)' }) : null),
        el('td', { title: r.createdAt, text: fmtAge(r.createdAt, state.data.now) }),
        el('td', { class: 'num', text: `${r.weight} %` }),
        el('td', { class: `phase-${r.phase ?? 'none'}`, text: r.phase ?? 'not running' }),
        el('td', { class: 'num', text: `${r.readyInstances} / ${r.desiredInstances}` }),
        el('td', { class: 'num', text: fmtCount(r.restarts, r.restarts === 1 ? 'restart' : 'restarts') }),
        el('td', { class: 'mono', text: r.source }),
        el('td', { text: r.changeCause ?? '' }),
      ),
    ),
  );
  $('decisions').tBodies[0].replaceChildren(
    ...decisions
      .slice(0, 30)
      .map((d) =>
        el(
          'tr',
          {},
          el('td', { class: 'mono', text: fmtClock(d.at) }),
          el('td', { class: 'mono', text: d.revision }),
          el('td', { class: 'num', text: fmtCount(d.desired, 'inst.') }),
          el('td', { class: 'num', text: fmtCount(d.wanted, 'inst.') }),
          el('td', { class: 'num', text: fmtCount(d.ready, 'inst.') }),
          el('td', { class: 'num', text: d.observedStable.toLocaleString('en-US', { maximumFractionDigits: 2 }) }),
          el('td', { class: 'num', text: fmtCount(d.queued, 'req.') }),
          el('td', { text: `${d.reason}${d.panic ? ' (panic mode)' : ''}` }),
        ),
      ),
  );
  $('decisions-empty').hidden = decisions.length > 0;
}

// The token prompt, when the API answers 401 (not behind `tide dashboard`'s relay).
window.addEventListener('tide:auth', (e) => {
  state.waitingForToken = true;
  setLive('paused', 'needs a token');
  $('auth-error').textContent = e.detail.hadToken ? `That token was refused: ${e.detail.message}` : '';
  const dialog = $('auth');
  if (!dialog.open) dialog.showModal();
  $('auth-token').focus();
});
$('auth-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('auth-token').value.trim();
  if (!token) return;
  setToken(token);
  $('auth-token').value = '';
  $('auth').close();
  state.waitingForToken = false;
  void tick();
});

$('pause').addEventListener('click', () => {
  state.paused = !state.paused;
  $('pause').textContent = state.paused ? 'Resume' : 'Pause';
  if (state.paused) setLive('paused', 'paused');
  else void tick();
});
$('range').addEventListener('change', () => render());
document.addEventListener('visibilitychange', () => {
  if (document.hidden) {
    clearTimeout(state.timer);
    setLive('paused', 'paused (tab hidden)');
  } else void tick();
});
let resizing;
window.addEventListener('resize', () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => render(), 150);
});

traces.fromHash();
void tick();
