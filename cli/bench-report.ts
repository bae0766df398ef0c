/**
 * The HTML report of `tide bench --html FILE`: one self-contained page (inline CSS and SVG, no
 * script, nothing fetched), so it can be attached to a CI run or mailed. Charts: the latency
 * histogram and requests per second of each target, the rounds of a comparison, the cold
 * starts.
 */
import type { Comparison, Summary } from './bench.ts';
import { counts, fmtBytes, fmtMs } from './bench.ts';

export interface ReportData {
  date: string;
  command: string;
  summaries: Summary[];
  comparison?: Comparison | undefined;
  cold?: { target: string; samplesMs: number[]; warmMs: number[]; p50: number; p90: number; max: number } | undefined;
  thresholds: { failures: string[]; checked: boolean };
}

const COLORS = ['#2563eb', '#d97706'];

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);
}

/** Vertical bars with labels under them. */
function bars(title: string, items: { label: string; value: number; color?: string; text?: string }[], unit: string): string {
  const w = 640;
  const h = 220;
  const pad = { l: 48, r: 12, t: 28, b: 44 };
  const max = Math.max(1e-9, ...items.map((i) => i.value));
  const bw = (w - pad.l - pad.r) / Math.max(1, items.length);
  const y = (v: number) => pad.t + (h - pad.t - pad.b) * (1 - v / max);
  const parts = items.map((it, i) => {
    const x = pad.l + i * bw + bw * 0.1;
    const top = y(it.value);
    return (
      `<rect class="bar" x="${x.toFixed(1)}" y="${top.toFixed(1)}" width="${(bw * 0.8).toFixed(1)}" height="${(h - pad.b - top).toFixed(1)}" fill="${it.color ?? COLORS[0]}"><title>${esc(it.label)}: ${esc(it.text ?? String(it.value))}</title></rect>` +
      `<text x="${(x + bw * 0.4).toFixed(1)}" y="${h - pad.b + 14}" font-size="10" text-anchor="middle">${esc(it.label)}</text>`
    );
  });
  return (
    `<figure><figcaption>${esc(title)}</figcaption><svg class="chart" viewBox="0 0 ${w} ${h}" width="${w}" height="${h}" role="img" aria-label="${esc(title)}">` +
    `<line x1="${pad.l}" y1="${h - pad.b}" x2="${w - pad.r}" y2="${h - pad.b}" stroke="#888"/>` +
    `<text x="4" y="${pad.t}" font-size="10">${esc(`${Math.round(max * 100) / 100} ${unit}`)}</text>` +
    `<text x="4" y="${h - pad.b}" font-size="10">0</text>${parts.join('')}</svg></figure>`
  );
}

/** A line per series over seconds. */
function lines(title: string, series: { name: string; values: number[] }[], unit: string): string {
  const w = 640;
  const h = 220;
  const pad = { l: 56, r: 12, t: 28, b: 32 };
  const n = Math.max(2, ...series.map((s) => s.values.length));
  const max = Math.max(1e-9, ...series.flatMap((s) => s.values));
  const x = (i: number) => pad.l + ((w - pad.l - pad.r) * i) / (n - 1);
  const y = (v: number) => pad.t + (h - pad.t - pad.b) * (1 - v / max);
  const paths = series.map(
    (s, k) =>
      `<polyline class="line" fill="none" stroke="${COLORS[k % COLORS.length]}" stroke-width="2" points="${s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ')}"/>`,
  );
  const legend = series.map((s, k) => `<text x="${pad.l + 8 + k * 200}" y="16" font-size="11" fill="${COLORS[k % COLORS.length]}">■ ${esc(s.name)}</text>`);
  return (
    `<figure><figcaption>${esc(title)}</figcaption><svg class="chart" viewBox="0 0 ${w} ${h}" width="${w}" height="${h}" role="img" aria-label="${esc(title)}">` +
    `<line x1="${pad.l}" y1="${h - pad.b}" x2="${w - pad.r}" y2="${h - pad.b}" stroke="#888"/>` +
    `<text x="4" y="${pad.t}" font-size="10">${esc(`${Math.round(max)} ${unit}`)}</text><text x="4" y="${h - pad.b}" font-size="10">0</text>` +
    `<text x="${w - pad.r}" y="${h - 8}" font-size="10" text-anchor="end">seconds</text>${legend.join('')}${paths.join('')}</svg></figure>`
  );
}

function table(s: Summary): string {
  const row = (k: string, v: string) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`;
  return (
    `<table>${row('requests', s.requests.toLocaleString('en'))}${row('duration', `${s.durationS.toFixed(1)} s`)}${row('requests/s', s.rps.toLocaleString('en'))}` +
    `${row('latency p50 / p90 / p99 / max', [s.latencyMs.p50, s.latencyMs.p90, s.latencyMs.p99, s.latencyMs.max].map(fmtMs).join(' / '))}` +
    `${row('mean latency', fmtMs(s.latencyMs.mean))}${row('throughput', `${fmtBytes(s.throughputBytesPerS)}/s`)}` +
    `${row('statuses', counts(s.statuses, ', ', '-'))}${row('errors', counts(s.errors, ', ', 'none'))}` +
    `${row('error rate', `${(s.errorRate * 100).toFixed(2)}%`)}</table>`
  );
}

export function renderHtml(d: ReportData): string {
  const sections: string[] = [];
  for (const [i, s] of d.summaries.entries()) {
    sections.push(
      `<section><h2>${esc(s.description)}</h2>${table(s)}` +
        bars(
          `latency histogram: ${s.target}`,
          s.histogram.map((b) => ({
            label: fmtMs(b.toMs),
            value: b.count,
            color: COLORS[i % COLORS.length],
            text: `${fmtMs(b.fromMs)}–${fmtMs(b.toMs)}: ${b.count}`,
          })),
          'requests',
        ) +
        '</section>',
    );
  }
  if (d.summaries.some((s) => s.perSecond.length > 1))
    sections.push(
      `<section>${lines(
        'requests completed per second',
        d.summaries.map((s) => ({ name: s.target, values: s.perSecond })),
        'req/s',
      )}</section>`,
    );
  if (d.comparison) {
    const c = d.comparison;
    const [a, b] = d.summaries as [Summary, Summary];
    sections.push(
      `<section><h2>comparison</h2><p class="verdict">${esc(c.verdict)}</p>` +
        bars(
          'requests/s by round (A, B, A, B, …)',
          a.rounds.flatMap((r, i) => [
            { label: `A${i + 1}`, value: r.rps, color: COLORS[0] },
            { label: `B${i + 1}`, value: b.rounds[i]?.rps ?? 0, color: COLORS[1] },
          ]),
          'req/s',
        ) +
        `<p>B ÷ A requests/s: median ${c.rpsRatio.median}, rounds ${c.rpsRatio.rounds.join(', ')}; p99: median ${c.p99Ratio.median}, rounds ${c.p99Ratio.rounds.join(', ')}</p></section>`,
    );
  }
  if (d.cold) {
    const c = d.cold;
    sections.push(
      `<section><h2>cold starts: ${esc(c.target)}</h2><p>first request after scaling to zero: p50 ${fmtMs(c.p50)}, p90 ${fmtMs(c.p90)}, max ${fmtMs(c.max)}</p>` +
        bars(
          'first request after zero (cold) and the one after it (warm), per round',
          c.samplesMs.flatMap((ms, i) => [
            { label: `cold ${i + 1}`, value: ms, color: COLORS[1], text: fmtMs(ms) },
            { label: `warm ${i + 1}`, value: c.warmMs[i] ?? 0, color: COLORS[0], text: fmtMs(c.warmMs[i] ?? 0) },
          ]),
          'ms',
        ) +
        '</section>',
    );
  }
  const verdict = !d.thresholds.checked
    ? ''
    : d.thresholds.failures.length === 0
      ? '<p class="pass">thresholds: all met</p>'
      : `<p class="fail">thresholds missed:</p><ul>${d.thresholds.failures.map((f) => `<li>${esc(f)}</li>`).join('')}</ul>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tide bench ${esc(d.summaries.map((s) => s.target).join(' vs '))}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#111;max-width:720px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}th{text-align:left;font-weight:500;color:#444;padding:2px 16px 2px 0}td{font-variant-numeric:tabular-nums}
figure{margin:12px 0}figcaption{font-size:12px;color:#444}.pass{color:#15803d}.fail{color:#b91c1c;font-weight:600}.verdict{font-weight:600}
code{background:#f3f4f6;padding:1px 4px}
</style></head><body>
<h1>tide bench</h1><p><code>${esc(d.command)}</code><br>${esc(d.date)}</p>${verdict}
${sections.join('\n')}
</body></html>
`;
}
