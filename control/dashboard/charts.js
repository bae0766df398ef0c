// Tide dashboard: time-series line charts, drawn by hand in SVG. One chart is one <svg>,
// redrawn whole on every update (a few hundred points at most: cheap). Gaps in the data (no
// sample for longer than `gapMs`) break the line instead of joining across them.

import { fmtClock } from './core.js';

const NS = 'http://www.w3.org/2000/svg';
const H = 170;
const PAD = { r: 12, t: 10, b: 22 };

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** The smallest of 1, 2, 2.5, 5 × 10^k that is ≥ v. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v * 0.999999) return m * p;
  return 10 * p;
}

/**
 * Draws `lines` ([{name, points: [[t, value | null]], dashed}], at most two, coloured s0 and s1,
 * the later drawn over the earlier) from `from` to
 * `to` (ms since the epoch). `format(v)` labels the y axis with its unit; `step` draws steps
 * (counts); `markers` ([{t, label}]) are dashed vertical lines with the label as a tooltip.
 */
export function lineChart(svg, { lines, from, to, format, step = false, markers = [], minMax = 1, gapMs = Number.POSITIVE_INFINITY }) {
  const W = Math.max(260, Math.round(svg.getBoundingClientRect().width) || 520);
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const span = Math.max(1, to - from);
  let max = 0;
  let any = false;
  for (const line of lines)
    for (const [t, v] of line.points)
      if (v !== null && v !== undefined && t >= from) {
        any = true;
        max = Math.max(max, v);
      }
  // Some headroom, so that a line at the maximum does not run along the top edge. Counts (step
  // charts) get whole numbers on every gridline: a top that is a multiple of 4.
  const want = Math.max(max * 1.1, minMax);
  const top = step ? Math.max(4, Math.ceil(want / 4) * 4) : niceMax(want);
  const ticks = [0, 1, 2, 3, 4].map((i) => (top * i) / 4);
  const labels = ticks.map((v) => format(v));
  // The left margin fits the longest label (about 6.5 px a character at 11 px).
  const left = 10 + Math.ceil(Math.max(...labels.map((l) => l.length)) * 6.5);
  const x = (t) => left + ((t - from) / span) * (W - left - PAD.r);
  const y = (v) => H - PAD.b - (v / top) * (H - PAD.t - PAD.b);
  ticks.forEach((v, i) => {
    svg.append(svgEl('line', { class: 'gridline', x1: left, x2: W - PAD.r, y1: y(v), y2: y(v) }));
    svg.append(svgEl('text', { class: 'axis-label', x: left - 6, y: y(v) + 4, 'text-anchor': 'end' }, labels[i]));
  });
  for (const [t, anchor] of [
    [from, 'start'],
    [from + span / 2, 'middle'],
    [to, 'end'],
  ])
    svg.append(svgEl('text', { class: 'axis-label', x: x(t), y: H - 6, 'text-anchor': anchor }, fmtClock(t)));
  lines.forEach((line, i) => {
    let d = '';
    let prev;
    for (const [t, v] of line.points) {
      if (t < from) continue;
      if (v === null || v === undefined) {
        prev = undefined;
        continue;
      }
      if (prev === undefined || t - prev.t > gapMs) d += `M${x(t).toFixed(1)} ${y(v).toFixed(1)}`;
      else if (step) d += `H${x(t).toFixed(1)}V${y(v).toFixed(1)}`;
      else d += `L${x(t).toFixed(1)} ${y(v).toFixed(1)}`;
      prev = { t, v };
    }
    if (d) svg.append(svgEl('path', { class: `series s${i}${line.dashed ? ' dashed' : ''}`, d, 'data-series': line.name ?? String(i) }));
  });
  for (const m of markers) {
    if (m.t < from || m.t > to) continue;
    const g = svgEl('g', { class: 'decision' });
    g.append(svgEl('title', {}, m.label));
    g.append(svgEl('line', { class: 'marker', x1: x(m.t), x2: x(m.t), y1: PAD.t, y2: H - PAD.b }));
    g.append(svgEl('circle', { class: 'marker-head', cx: x(m.t), cy: PAD.t + 2, r: 3.5 }));
    svg.append(g);
  }
  if (!any) svg.append(svgEl('text', { class: 'nodata', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no data in this range yet'));
}
