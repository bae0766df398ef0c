// Tide dashboard: what every part of the page shares. Calls to the control API (same origin;
// a token from sessionStorage when the API asked for one), DOM building that only ever sets
// text (never HTML: names, attributes and messages come from functions and their callers), and
// number formatting with a unit on every number.

const TOKEN_KEY = 'tide.dashboard.token';

/** An API answer that was not 2xx. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** GET `path` on the API; resolves with its JSON. A 401 also raises a `tide:auth` event (the token prompt). */
export async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const res = await fetch(path, { headers: token ? { authorization: `Bearer ${token}` } : {}, cache: 'no-store', credentials: 'omit' });
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (!res.ok) {
    const err = body?.error ?? {};
    if (res.status === 401) {
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      window.dispatchEvent(new CustomEvent('tide:auth', { detail: { hadToken: Boolean(token), message: err.message ?? '' } }));
    }
    throw new ApiError(res.status, err.code ?? 'ERR_HTTP', err.message ?? `the API answered ${res.status}`);
  }
  return body;
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

/**
 * Builds an element. `attrs`: `class`, `text`, `title`, `data-*`, and plain attributes (never
 * `style`: the content security policy refuses inline styles; set `node.style.x` instead).
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = String(v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** A link only for http(s) URLs; anything else is shown as text. */
export function link(url, text) {
  return /^https?:\/\//i.test(url) ? el('a', { href: url, rel: 'noreferrer', target: '_blank', text: text ?? url }) : document.createTextNode(text ?? url);
}

const num = (v, digits) => Number(v).toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

/** Milliseconds with a unit: 0.42 ms, 12.3 ms, 840 ms, 2.5 s. */
export function fmtMs(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '–';
  if (ms < 1) return `${num(ms, 2)} ms`;
  if (ms < 100) return `${num(ms, 1)} ms`;
  if (ms < 10_000) return `${num(ms, 0)} ms`;
  return `${num(ms / 1000, 1)} s`;
}

export function fmtRps(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  return `${num(v, v < 10 ? 2 : v < 1000 ? 1 : 0)} req/s`;
}

/** A share 0..1 as a percentage. */
export function fmtPct(share) {
  if (share === null || share === undefined || !Number.isFinite(share)) return '–';
  const p = share * 100;
  return `${num(p, p === 0 || p >= 10 ? 0 : 1)} %`;
}

export function fmtCount(n, unit) {
  return `${num(n, 0)} ${unit}`;
}

/** ms since the epoch → 14:03:07 (local time); with `ms`, 14:03:07.123. */
export function fmtClock(t, ms = false) {
  const d = new Date(t);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}${ms ? `.${p(d.getMilliseconds(), 3)}` : ''}`;
}

/** An ISO time → "3 min ago". */
export function fmtAge(iso, now = Date.now()) {
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (!Number.isFinite(s)) return '–';
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86_400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86_400)} d ago`;
}

const PALETTE = ['#0b84a5', '#f28e2b', '#59a14f', '#b07aa1', '#e15759', '#edc948', '#76b7b2', '#9c755f', '#ff9da7', '#5c7cfa'];
const colours = new Map();

/**
 * A colour per service name, handed out in the order services are first seen: distinct for the
 * first ten, and the same for a service in every trace while the page is open.
 */
export function colourFor(service) {
  let c = colours.get(service);
  if (!c) {
    c = PALETTE[colours.size % PALETTE.length];
    colours.set(service, c);
  }
  return c;
}
