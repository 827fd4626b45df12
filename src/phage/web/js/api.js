// Talking to the coordinator: the REST API with a Bearer key, downloads, and the live feed.

const KEY_NAME = 'phage.apiKey';

/** The API key, kept for this browser tab only (sessionStorage). */
export const session = {
  get key() { return sessionStorage.getItem(KEY_NAME) || ''; },
  set(key) { sessionStorage.setItem(KEY_NAME, key); },
  clear() { sessionStorage.removeItem(KEY_NAME); },
};

/** An error answer from the API: status, message and the field it names (if any). */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.field = body && body.field;
  }
}

/** Call the REST API; resolves to the parsed JSON answer, rejects with ApiError. */
export async function api(path, { method = 'GET', body, query } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, v);
  }
  const headers = { Authorization: `Bearer ${session.key}` };
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(url, { method, headers, body: payload });
  } catch (err) {
    throw new ApiError(0, { message: `cannot reach the coordinator (${err.message})` });
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { message: text.slice(0, 300) }; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

/** Fetch a file with the key (a plain link cannot send the header) and save it under `filename`. */
export async function download(path, filename) {
  const resp = await fetch(path, { headers: { Authorization: `Bearer ${session.key}` } });
  if (!resp.ok) {
    let body = null;
    try { body = await resp.json(); } catch { /* not JSON */ }
    throw new ApiError(resp.status, body);
  }
  const href = URL.createObjectURL(await resp.blob());
  const a = document.createElement('a');
  a.href = href;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 30_000);
}

/**
 * WS /api/feed with reconnection. Browsers cannot set headers on a WebSocket, and a key in a
 * URL ends up in logs, so each connection first asks for a single-use ticket (with the key in
 * the header) and opens the socket with ?ticket=. A socket closed with 4401 means the key is
 * no longer accepted (revoked). `onStatus` gets 'connecting' | 'live' | 'offline' | 'unauthorized'.
 */
export class Feed {
  constructor({ onEvent, onStatus }) {
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.ws = null;
    this.retries = 0;
    this.timer = null;
    this.closed = false;
  }

  async open() {
    this.closed = false;
    clearTimeout(this.timer);
    this.onStatus('connecting');
    let ticket;
    try {
      ticket = (await api('/api/feed/ticket', { method: 'POST' })).ticket;
    } catch (err) {
      if (this.closed) return;
      if (err.status === 401) { this.onStatus('unauthorized'); return; }
      this.retryLater();
      return;
    }
    if (this.closed) return;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${location.host}/api/feed?ticket=${encodeURIComponent(ticket)}`);
    this.ws = ws;
    ws.onopen = () => { this.retries = 0; this.onStatus('live'); };
    ws.onmessage = (msg) => {
      let event;
      try { event = JSON.parse(msg.data); } catch { return; }
      this.onEvent(event);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws || this.closed) return;
      if (ev.code === 4401) { this.onStatus('unauthorized'); return; }
      this.retryLater();
    };
  }

  retryLater() {
    this.onStatus('offline');
    const delay = Math.min(15_000, 500 * 2 ** this.retries++);
    this.timer = setTimeout(() => this.open(), delay);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close();
    this.ws = null;
  }
}
