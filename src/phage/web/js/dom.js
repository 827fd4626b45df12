// Small DOM helpers and formatters. Everything is built with createElement, never innerHTML,
// so node names, errors and logs can never inject markup.

/** Build an element: h('td', {class: 'num', onclick: fn, dataset: {id}}, 'text', child, [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** The same for SVG elements. */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') Object.assign(el.style, v);
    else if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** A state pill: coloured dot + label; the class s-<state> picks the colour. */
export function badge(state, label) {
  return h('span', { class: `badge s-${state}`, dataset: { state } }, h('i'), label || state);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

// ---- formatting -----------------------------------------------------------

export function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  const digits = v >= 100 || i === 0 ? 0 : v >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ${units[i]}`;
}

/** GiB with one decimal, for VRAM figures that sit side by side. */
export function fmtGiB(n) {
  const v = Number(n || 0) / 2 ** 30;
  return v >= 100 ? v.toFixed(0) : v.toFixed(1);
}

export function fmtDuration(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return '—';
  if (s < 0) s = 0;
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return `${hrs}h ${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(hrs / 24)}d ${hrs % 24}h`;
}

export function fmtAgo(ts, now = Date.now() / 1000) {
  if (!ts) return '—';
  const s = Math.max(0, now - ts);
  if (s < 1) return 'just now';
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function fmtTime(ts) {
  if (!ts) return '—';
  const d = new Date(ts * 1000);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  return today ? time : `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
}

export function shortId(id, n = 12) {
  if (!id) return '—';
  return id.length > n ? `${id.slice(0, n)}…` : id;
}

// ---- toasts and dialogs ---------------------------------------------------

/** A short message in the corner; kind is 'info' | 'ok' | 'warn' | 'error'. */
export function toast(message, kind = 'info', ms = 4000) {
  const el = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
  const box = document.getElementById('toasts');
  box.append(el);
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => el.remove(), ms);
}

/**
 * A modal form in the page's <dialog>. `body` is a node (its inputs are read on submit);
 * `submit(form)` may throw an Error whose message is shown inline. Resolves to the result
 * of `submit`, or null when dismissed.
 */
export function openDialog({ title, text, body, submitLabel = 'OK', submitClass = 'primary', submit, narrow = false }) {
  const dialog = document.getElementById('dialog');
  clear(dialog);
  dialog.className = narrow ? 'narrow' : '';
  const error = h('span', { class: 'error', role: 'alert' });
  const ok = h('button', { class: submitClass, type: 'submit', value: 'ok' }, submitLabel);
  const form = h('form', { method: 'dialog', novalidate: true },
    h('div', { class: 'dialog-head' }, h('h2', {}, title), text ? h('p', {}, text) : null),
    body ? h('div', { class: 'dialog-body' }, body) : null,
    h('div', { class: 'dialog-foot' }, error,
      h('button', { class: 'ghost', type: 'button', onclick: () => dialog.close() }, 'Cancel'), ok));
  dialog.append(form);
  return new Promise((resolve) => {
    let result = null;
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      error.textContent = '';
      ok.disabled = true;
      try {
        result = submit ? await submit(form) : true;
        dialog.close();
      } catch (err) {
        error.textContent = err.message;
      } finally {
        ok.disabled = false;
      }
    });
    dialog.addEventListener('close', () => resolve(result), { once: true });
    dialog.showModal();
    const first = form.querySelector('input, textarea, select');
    if (first) first.focus(); else ok.focus();
  });
}
