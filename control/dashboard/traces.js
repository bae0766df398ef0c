// Tide dashboard: recent traces. The list (GET /v1/traces with the search form's filters,
// refreshed with the rest of the page) and one trace's waterfall (GET /v1/traces/ID): a row
// per span, indented by its depth under its parent, its bar offset by its start and as wide as
// its duration, coloured by service, failures outlined in red. Clicking a span shows its
// attributes and events. The open trace is in the URL (#trace=ID), so it can be shared.

import { ApiError, api, colourFor, el, fmtClock, fmtMs } from './core.js';

const $ = (id) => document.getElementById(id);

export function createTraces() {
  const form = $('trace-search');
  const list = $('traces').tBodies[0];
  const note = $('traces-note');
  const view = $('trace-view');
  let query = '';
  /** The open trace: its id, how many spans it had when drawn, the selected span. */
  let open = null;

  function note_(text) {
    note.textContent = text;
    note.hidden = !text;
  }

  function readForm() {
    const f = new FormData(form);
    const q = new URLSearchParams();
    for (const k of ['traceId', 'function', 'status', 'minMs', 'maxMs']) {
      const v = String(f.get(k) ?? '').trim();
      if (v) q.set(k, k === 'traceId' ? v.toLowerCase() : v);
    }
    return q;
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!form.checkValidity()) {
      form.reportValidity();
      return;
    }
    const q = readForm();
    query = q.toString();
    void refresh();
    const id = q.get('traceId');
    if (id?.length === 32) void openTrace(id);
  });
  form.addEventListener('reset', () => {
    setTimeout(() => {
      query = '';
      void refresh();
    });
  });
  $('trace-close').addEventListener('click', () => close());
  window.addEventListener('hashchange', () => fromHash());

  async function refresh() {
    let data;
    try {
      data = await api(`/v1/traces?${query ? `${query}&` : ''}limit=50`);
    } catch (err) {
      // Not an outage of the page: say so next to the list and keep the rest live.
      if (err instanceof ApiError && err.status === 404) return note_(`This Tide keeps no traces (GET /v1/traces: ${err.message}).`);
      if (err instanceof ApiError && err.status === 400) return note_(`Search refused: ${err.message}`);
      throw err;
    }
    const items = data.items ?? [];
    note_(items.length === 0 ? (query ? 'No trace matches this search.' : 'No traces yet: send some requests to a function.') : '');
    list.replaceChildren(...items.map(row));
    if (open && Date.now() - open.startMs < 60_000) await openTrace(open.id, { quiet: true });
  }

  function row(t) {
    const status = t.error ? 'error' : 'ok';
    const tr = el(
      'tr',
      { 'data-trace': t.traceId, tabindex: 0, class: open?.id === t.traceId ? 'selected' : '' },
      el('td', { class: 'mono', text: fmtClock(t.startMs, true) }),
      el('td', { class: 'mono', title: t.traceId, text: t.traceId.slice(0, 16) }),
      el('td', { text: `${t.name} (${t.service})` }),
      el('td', { text: (t.functions ?? []).join(', ') || '–' }),
      el('td', { class: `status-${status}`, text: t.status ? `${t.status}${t.error ? ' error' : ''}` : status }),
      el('td', { class: 'num', text: fmtMs(t.durationMs) }),
      el('td', { class: 'num', text: `${t.spans} spans` }),
      el('td', { text: t.kept }),
    );
    const go = () => {
      location.hash = `trace=${t.traceId}`;
    };
    tr.addEventListener('click', go);
    tr.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') go();
    });
    return tr;
  }

  function fromHash() {
    const m = /^#trace=([0-9a-fA-F]{32})$/.exec(location.hash);
    if (m) void openTrace(m[1].toLowerCase());
    else if (open) close(false);
  }

  async function openTrace(id, { quiet = false } = {}) {
    let trace;
    try {
      trace = await api(`/v1/traces/${encodeURIComponent(id)}`);
    } catch (err) {
      if (quiet) return;
      view.hidden = false;
      $('trace-id').textContent = id;
      $('trace-summary').replaceChildren();
      $('span-detail').hidden = true;
      const why = err instanceof ApiError && err.status === 404 ? 'not found: only recent traces are kept, and only sampled, failed or slow ones' : err.message;
      $('waterfall').replaceChildren(el('p', { class: 'empty', text: `Trace ${id} ${why}.` }));
      open = null;
      return;
    }
    if (quiet && open?.id === id && open.spans === trace.spans.length) return;
    const selected = open?.id === id ? open.selected : null;
    open = { id, spans: trace.spans.length, startMs: trace.summary?.startMs ?? Date.now(), selected };
    for (const tr of list.rows) tr.classList.toggle('selected', tr.dataset.trace === id);
    render(trace);
    if (!quiet) view.scrollIntoView({ block: 'start' });
  }

  function close(clearHash = true) {
    open = null;
    view.hidden = true;
    for (const tr of list.rows) tr.classList.remove('selected');
    if (clearHash && location.hash) history.replaceState(null, '', location.pathname + location.search);
  }

  function render(trace) {
    const s = trace.summary ?? {};
    view.hidden = false;
    $('trace-id').textContent = trace.traceId;
    const services = [...new Set(trace.spans.map((x) => x.service))];
    const fact = (k, v) => [el('dt', { text: k }), el('dd', {}, v)];
    $('trace-summary').replaceChildren(
      ...fact('Root span', `${s.name ?? '–'} (${s.service ?? '–'})`),
      ...fact('Started', s.startMs ? `${new Date(s.startMs).toLocaleDateString()} ${fmtClock(s.startMs, true)}` : '–'),
      ...fact('Duration', fmtMs(s.durationMs)),
      ...fact('Status', s.status ? `HTTP ${s.status}${s.error ? ', failed' : ''}` : s.error ? 'failed' : 'ok'),
      ...fact('Spans', `${trace.spans.length} spans`),
      ...fact('Kept because', s.kept ?? '–'),
      ...fact('Functions', (s.functions ?? []).join(', ') || '–'),
      ...fact('Services', el('span', {}, ...services.flatMap((name) => [swatch(name), `${name} `]))),
    );
    waterfall(trace.spans);
  }

  function swatch(service) {
    const sw = el('span', { class: 'wf-service', title: service });
    sw.style.backgroundColor = colourFor(service);
    return sw;
  }

  /** Spans in tree order (parents first, siblings by start), with their depth. */
  function order(spans) {
    const byId = new Map(spans.map((x) => [x.spanId, x]));
    const children = new Map();
    const roots = [];
    for (const x of spans) {
      const p = x.parentSpanId;
      if (p && p !== x.spanId && byId.has(p)) {
        if (!children.has(p)) children.set(p, []);
        children.get(p).push(x);
      } else roots.push(x);
    }
    const byStart = (a, b) => a.startMs - b.startMs;
    const out = [];
    const seen = new Set();
    const visit = (x, depth) => {
      if (seen.has(x.spanId)) return;
      seen.add(x.spanId);
      out.push({ span: x, depth });
      for (const c of (children.get(x.spanId) ?? []).sort(byStart)) visit(c, depth + 1);
    };
    for (const r of roots.sort(byStart)) visit(r, 0);
    // A cycle of parents leaves spans unvisited: list them at the top level rather than lose them.
    for (const x of spans) if (!seen.has(x.spanId)) visit(x, 0);
    return out;
  }

  function waterfall(spans) {
    const rows = order(spans);
    const t0 = Math.min(...spans.map((x) => x.startMs));
    const t1 = Math.max(...spans.map((x) => x.startMs + x.durationMs));
    const total = Math.max(t1 - t0, 0.001);
    const pct = (v) => `${((v / total) * 100).toFixed(3)}%`;
    const ticks = el('div', { class: 'wf-track' });
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const tick = el('span', { class: 'wf-tick', text: fmtMs(total * f) });
      tick.style.left = `${f * 100}%`;
      ticks.append(tick);
    }
    const head = el(
      'div',
      { class: 'wf-row wf-head' },
      el('div', { class: 'wf-label', text: 'Span (service)' }),
      ticks,
      el('div', { class: 'wf-dur', text: 'Duration' }),
    );
    const out = [head];
    for (const { span, depth } of rows) {
      const failed = span.status === 'error';
      const label = el(
        'div',
        { class: 'wf-label', title: `${span.name} (${span.service}, ${span.kind})` },
        swatch(span.service),
        span.name,
        failed ? el('span', { class: 'wf-err', title: span.statusMessage ?? 'error', text: '!' }) : null,
      );
      label.style.paddingLeft = `${0.5 + depth * 1.1}rem`;
      const bar = el('div', {
        class: `wf-bar${failed ? ' error' : ''}`,
        title: `${span.name}: ${fmtMs(span.durationMs)}, starting at +${fmtMs(span.startMs - t0)}`,
      });
      bar.style.left = pct(span.startMs - t0);
      bar.style.width = pct(Math.max(span.durationMs, 0));
      bar.style.backgroundColor = colourFor(span.service);
      const r = el(
        'div',
        {
          class: `wf-row span-row${failed ? ' failed' : ''}`,
          role: 'treeitem',
          'aria-level': depth + 1,
          tabindex: 0,
          'data-span-id': span.spanId,
          'data-service': span.service,
        },
        label,
        el('div', { class: 'wf-track' }, bar),
        el('div', { class: 'wf-dur', text: fmtMs(span.durationMs) }),
      );
      const pick = () => {
        for (const other of $('waterfall').querySelectorAll('.span-row.selected')) other.classList.remove('selected');
        r.classList.add('selected');
        if (open) open.selected = span.spanId;
        detail(span, t0);
      };
      r.addEventListener('click', pick);
      r.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') pick();
      });
      out.push(r);
    }
    $('waterfall').replaceChildren(...out);
    const again = open?.selected && rows.find((x) => x.span.spanId === open.selected);
    if (again)
      $('waterfall')
        .querySelector(`[data-span-id="${CSS.escape(again.span.spanId)}"]`)
        ?.classList.add('selected');
    if (again) detail(again.span, t0);
    else $('span-detail').hidden = true;
  }

  function detail(span, t0) {
    const kv = (k, v) => el('tr', {}, el('td', { text: k }), el('td', { class: 'mono', text: v }));
    const base = [
      kv('name', span.name),
      kv('service', span.service),
      kv('kind', span.kind),
      kv('status', `${span.status}${span.statusMessage ? `: ${span.statusMessage}` : ''}`),
      kv('start', `+${fmtMs(span.startMs - t0)} (${fmtClock(span.startMs, true)})`),
      kv('duration', fmtMs(span.durationMs)),
      kv('span id', span.spanId),
      kv('parent span id', span.parentSpanId ?? '– (root)'),
      kv('sampled', span.sampled ? 'yes' : 'no'),
    ];
    const attrs = Object.entries(span.attributes ?? {}).sort(([a], [b]) => a.localeCompare(b));
    const parts = [
      el('h3', { text: `Span ${span.name}` }),
      el('table', { class: 'grid', id: 'span-fields' }, el('tbody', {}, ...base)),
      el('h3', { text: `Attributes (${attrs.length})` }),
      attrs.length
        ? el('table', { class: 'grid', id: 'span-attributes' }, el('tbody', {}, ...attrs.map(([k, v]) => kv(k, String(v)))))
        : el('p', { class: 'empty', text: 'none' }),
    ];
    const events = span.events ?? [];
    if (events.length > 0) {
      parts.push(
        el('h3', { text: `Events (${events.length})` }),
        el(
          'table',
          { class: 'grid' },
          el('tbody', {}, ...events.map((ev) => kv(`+${fmtMs(ev.timeMs - t0)} ${ev.name}`, ev.attributes ? JSON.stringify(ev.attributes) : ''))),
        ),
      );
    }
    const box = $('span-detail');
    box.replaceChildren(...parts);
    box.hidden = false;
  }

  /** Keeps the function filter's choices in step with the functions that exist. */
  function setFunctions(names) {
    const select = form.elements.namedItem('function');
    const current = select.value;
    const have = [...select.options].map((o) => o.value).slice(1);
    if (have.join('\n') === names.join('\n')) return;
    select.replaceChildren(el('option', { value: '', text: 'any' }), ...names.map((n) => el('option', { value: n, text: n })));
    select.value = names.includes(current) ? current : '';
  }

  return { refresh, setFunctions, fromHash };
}
