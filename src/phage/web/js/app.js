// The dashboard: sign in, then keep every view current from WS /api/feed.
//
// State changes (nodes joining, dying, quarantined; tasks moving) arrive over the feed and
// are shown at once. Figures that change without an event — heartbeat metrics, the chart,
// pool totals — are refreshed every few seconds while the page is visible.

import { ApiError, api, Feed, session } from './api.js';
import { Chart } from './chart.js';
import { clear, fmtDuration, fmtGiB, h, toast } from './dom.js';
import { EarningsView } from './earnings.js';
import { KeysView } from './keys.js';
import { NetworksView } from './networks.js';
import { NodesView } from './nodes.js';
import { ShardedView } from './sharded.js';
import { openSubmitDialog } from './submit.js';
import { TaskDrawer, TasksView } from './tasks.js';

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const HISTORY_KEEP_S = 3600;

let ctx = null;

function throttle(fn, ms) {
  let timer = null;
  let again = false;
  return () => {
    if (timer) { again = true; return; }
    fn();
    timer = setTimeout(function next() {
      timer = null;
      if (again) { again = false; fn(); timer = setTimeout(next, ms); }
    }, ms);
  };
}

// ---- sign in / out ----------------------------------------------------------

function showSignin(message = '') {
  stop();
  $('app').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = message;
  $('signin-key').value = '';
  $('signin-key').focus();
}

async function signIn(key) {
  session.set(key);
  try {
    start(await api('/api/me'));
  } catch (err) {
    session.clear();
    throw err;
  }
}

$('signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const key = $('signin-key').value.trim();
  if (!key) return;
  const button = $('signin-submit');
  button.disabled = true;
  $('signin-error').textContent = '';
  try {
    await signIn(key);
  } catch (err) {
    $('signin-error').textContent = err.status === 401 ? 'That key is not valid for this coordinator.' : err.message;
  } finally {
    button.disabled = false;
  }
});

$('signout').addEventListener('click', () => { session.clear(); showSignin(); });

$('submit-open').addEventListener('click', async () => {
  const task = await openSubmitDialog();
  if (task && ctx) {
    ctx.tasks.load();
    openTask(task.id);
  }
});

// ---- the signed-in page -------------------------------------------------------

function start(me) {
  stop();
  $('signin').hidden = true;
  $('app').hidden = false;
  const who = clear($('who'));
  if (me.name !== me.role) who.append(h('b', { title: `API key ${me.id}` }, me.name));
  who.append(h('span', { class: 'role', title: `API key ${me.id}` }, me.role));
  const nodes = new NodesView($('nodes'), $('nodes-count'), { isAdmin: me.role === 'admin', onChanged: () => refreshNodes() });
  const tasks = new TasksView({
    table: $('tasks'), count: $('tasks-count'), filters: $('task-filters'), more: $('tasks-more'), onOpen: openTask,
  });
  const drawer = new TaskDrawer($('drawer-root'), {
    nodeName: (id) => nodes.name(id),
    onClose: () => { tasks.select(null); history.replaceState(null, '', location.pathname); },
  });
  const isAdmin = me.role === 'admin';
  $('keys-card').hidden = !isAdmin; // keys and everyone's usage are for admins
  const keys = isAdmin ? new KeysView($('keys'), $('keys-count'), $('key-create'), { me }) : null;
  $('earnings-card').hidden = !isAdmin; // what each node's owner has earned, likewise
  const earnings = isAdmin ? new EarningsView($('earnings'), $('earnings-count'), { nodeName: (id) => nodes.name(id) }) : null;
  const chart = new Chart($('chart'), $('chart-legend'), $('chart-caption'));
  const sharded = new ShardedView($('sharded-card'), $('sharded'), $('sharded-count'));
  const networks = new NetworksView($('networks'), $('networks-count'), { nodeName: (id) => nodes.name(id) });
  const feed = new Feed({ onEvent, onStatus });
  ctx = {
    me, nodes, tasks, drawer, chart, sharded, networks, feed, keys, earnings, status: null, history: [], interval: 2, timers: [],
    refreshNodesSoon: throttle(() => refreshNodes(), 250),
    refreshStatusSoon: throttle(() => refreshStatus(), 500),
    refreshHistorySoon: throttle(() => refreshHistory(), 1000),
  };
  refreshAll();
  feed.open();
  ctx.timers.push(setInterval(() => { nodes.tick(); tasks.tick(); renderMeta(); }, 1000));
  ctx.timers.push(setInterval(() => { if (!document.hidden) poll(); }, POLL_MS));
  const m = /^#task=(.+)$/.exec(location.hash);
  if (m) openTask(decodeURIComponent(m[1]));
}

function stop() {
  if (!ctx) return;
  ctx.feed.close();
  for (const t of ctx.timers) clearInterval(t);
  clear($('task-filters'));
  clear($('nodes'));
  clear($('tasks'));
  clear($('keys'));
  clear($('earnings'));
  clear($('drawer-root'));
  ctx = null;
}

function openTask(id) {
  if (!ctx) return;
  ctx.tasks.select(id);
  history.replaceState(null, '', `#task=${encodeURIComponent(id)}`);
  ctx.drawer.open(id);
}

function onStatus(state) {
  const labels = { live: 'live', connecting: 'connecting', offline: 'reconnecting', unauthorized: 'signed out' };
  const pill = $('conn');
  pill.className = `conn ${state === 'unauthorized' ? 'offline' : state}`;
  pill.lastElementChild.textContent = labels[state] || state;
  if (state === 'unauthorized') showSignin('Your API key is no longer accepted.');
}

function onEvent(ev) {
  if (!ctx) return;
  switch (ev.type) {
    case 'hello': // (re)connected: events may have been missed while away
    case 'lagged':
      refreshAll();
      break;
    case 'node':
      if (ev.event === 'registered') toast(`Node ${ev.name || ev.id.slice(0, 10)} joined the pool`, 'ok');
      else if (ev.state === 'dead') toast(`Node ${ctx.nodes.name(ev.id)} stopped sending heartbeats`, 'warn');
      ctx.refreshNodesSoon();
      ctx.refreshStatusSoon();
      break;
    case 'task': // a node's active tasks and the chart move with tasks too
      ctx.tasks.onEvent(ev);
      ctx.drawer.onEvent(ev);
      ctx.refreshStatusSoon();
      ctx.refreshNodesSoon();
      ctx.refreshHistorySoon();
      break;
    default:
      break;
  }
}

// ---- data -------------------------------------------------------------------

async function guarded(fn) {
  try {
    await fn();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) showSignin('Your API key is no longer accepted.');
    else if (err instanceof ApiError && err.status === 0) onStatus('offline');
    else console.warn(err);
  }
}

function refreshAll() {
  refreshSharded();
  refreshNetworks();
  refreshNodes();
  refreshStatus();
  refreshHistory();
  refreshKeys();
  if (ctx) ctx.tasks.load();
}

let polls = 0;
function poll() {
  refreshSharded();
  refreshNodes();
  refreshStatus();
  refreshHistory();
  refreshNetworks();
  polls += 1;
  if (polls % 5 === 0) refreshKeys(); // usage moves with chat traffic, not with feed events
}

function refreshNetworks() {
  return guarded(async () => { if (ctx) await ctx.networks.refresh(); });
}

function refreshSharded() {
  return guarded(async () => {
    const data = await api('/api/models/sharded');
    if (ctx) ctx.sharded.set(data.models);
  });
}

function refreshKeys() {
  return guarded(async () => {
    if (ctx && ctx.keys) await Promise.all([ctx.keys.load(), ctx.earnings.load()]);
  });
}

function refreshNodes() {
  return guarded(async () => {
    const data = await api('/api/nodes');
    if (ctx) { ctx.nodes.set(data.nodes); renderStats(); }
  });
}

function refreshStatus() {
  return guarded(async () => {
    const status = await api('/api/status');
    if (!ctx) return;
    ctx.status = status;
    ctx.statusAt = Date.now() / 1000;
    renderStats();
    renderMeta();
  });
}

function refreshHistory() {
  return guarded(async () => {
    const last = ctx && ctx.history.length ? ctx.history[ctx.history.length - 1].ts : 0;
    const data = await api('/api/history', { query: { since: last } });
    if (!ctx) return;
    // two refreshes may overlap: keep only samples newer than what is already held
    const held = ctx.history.length ? ctx.history[ctx.history.length - 1].ts : 0;
    const fresh = data.samples.filter((s) => s.ts > held);
    const now = fresh.length ? fresh[fresh.length - 1].ts : held;
    ctx.history = ctx.history.concat(fresh).filter((s) => s.ts >= now - HISTORY_KEEP_S);
    ctx.interval = data.interval_s;
    ctx.chart.set(ctx.history, data.interval_s);
    renderStats();
  });
}

// ---- summary cards ------------------------------------------------------------

function stat(id, label, value, unit, sub, frac) {
  let bar = null;
  if (frac !== undefined && frac !== null) {
    const fill = h('span');
    fill.style.width = `${Math.min(100, Math.max(0, frac * 100)).toFixed(1)}%`;
    bar = h('div', { class: ['bar', frac > 0.9 ? 'hot' : frac > 0.75 && 'warn'] }, fill);
  }
  return h('div', { class: 'stat', dataset: { stat: id } },
    h('div', { class: 'label' }, label),
    h('div', { class: 'value' }, String(value), unit ? h('small', {}, unit) : null),
    sub ? h('div', { class: 'sub' }, sub) : null, bar);
}

function renderStats() {
  if (!ctx || !ctx.status) return;
  const s = ctx.status;
  const quarantined = ctx.nodes.nodes.filter((n) => n.quarantined).length;
  const last = ctx.history[ctx.history.length - 1];
  const kinds = Object.entries(s.queue.by_kind || {}).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`);
  const t = s.tasks || {};
  const vram = s.vram.total_bytes;
  clear($('stats')).append(
    stat('nodes', 'Nodes online', s.nodes.online, `/ ${s.nodes.total}`,
      `${s.nodes.dead} dead · ${quarantined} quarantined`),
    stat('slots', 'Slots busy', s.slots.busy, `/ ${s.slots.total}`, null, s.slots.total ? s.slots.busy / s.slots.total : 0),
    vram
      ? stat('vram', 'VRAM in use', fmtGiB(s.vram.used_bytes), `/ ${fmtGiB(vram)} GiB`, null, s.vram.used_bytes / vram)
      : stat('vram', 'VRAM in use', '—', null, 'no GPUs online'),
    stat('queue', 'Queued', s.queue.depth, null, kinds.length ? kinds.join(' · ') : 'nothing waiting'),
    stat('verified', 'Verified', t.verified || 0, null, `${t.failed || 0} failed · ${t.cancelled || 0} cancelled`),
    stat('throughput', 'Throughput', last ? last.per_min : 0, '/ min', 'tasks finished, 30 s average'),
  );
}

function renderMeta() {
  if (!ctx || !ctx.status) return;
  const uptime = ctx.status.uptime_s + (Date.now() / 1000 - ctx.statusAt);
  $('meta').textContent = `v${ctx.status.version} · up ${uptime < 60 ? `${Math.floor(uptime)} s` : fmtDuration(uptime)}`;
}

// ---- boot ---------------------------------------------------------------------

if (session.key) {
  signIn(session.key).catch((err) => showSignin(err.status === 401 ? 'Your API key is no longer accepted.' : err.message));
} else {
  showSignin();
}
