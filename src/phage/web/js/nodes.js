// The node table and the admin actions on a node.

import { api } from './api.js';
import { badge, clear, fmtAgo, fmtBytes, fmtGiB, h, openDialog, shortId, toast } from './dom.js';

const nodePath = (node, action = '') => `/api/nodes/${encodeURIComponent(node.id)}${action ? `/${action}` : ''}`;

async function quarantine(node) {
  const reason = h('textarea', { name: 'reason', rows: 3, maxlength: 500, placeholder: 'Why? (shown in the API and here)' });
  reason.value = 'quarantined by an admin from the dashboard';
  return openDialog({
    title: `Quarantine ${node.name}?`,
    text: 'The node gets no new work until it is released; the work it holds now is requeued on other nodes.',
    body: h('div', { class: 'field' }, h('label', { for: 'quarantine-reason' }, 'Reason'),
      Object.assign(reason, { id: 'quarantine-reason' })),
    submitLabel: 'Quarantine',
    submitClass: 'warn',
    narrow: true,
    submit: async () => {
      const done = await api(nodePath(node, 'quarantine'), { method: 'POST', query: { reason: reason.value.trim() || undefined } });
      toast(`${node.name} quarantined`, 'warn');
      return done;
    },
  });
}

async function release(node) {
  const done = await api(nodePath(node, 'release'), { method: 'POST' });
  toast(`${node.name} released: it gets work again`, 'ok');
  return done;
}

async function remove(node) {
  return openDialog({
    title: `Remove ${node.name}?`,
    text: 'Its certificate is refused from now on and the work it holds is requeued. '
      + 'The same node identity cannot join this pool again.',
    submitLabel: 'Remove node',
    submitClass: 'danger',
    narrow: true,
    submit: async () => {
      const done = await api(nodePath(node), { method: 'DELETE' });
      toast(`${node.name} removed from the pool`, 'warn');
      return done;
    },
  });
}

async function approve(node) {
  const done = await api(nodePath(node, 'approve'), { method: 'POST', query: { trusted: 'true' } });
  toast(`${node.name} approved: it takes work now`, 'ok');
  return done;
}

async function reject(node) {
  return openDialog({
    title: `Reject ${node.name}?`,
    text: 'The node is refused for good: this identity can never join the pool again.',
    submitLabel: 'Reject node',
    submitClass: 'danger',
    narrow: true,
    submit: async () => {
      const done = await api(nodePath(node, 'reject'), { method: 'POST' });
      toast(`${node.name} rejected`, 'warn');
      return done;
    },
  });
}

async function drain(node) {
  const done = await api(nodePath(node, 'drain'), { method: 'POST' });
  toast(`${node.name} is draining: it finishes what it holds and takes no more work`, 'warn');
  return done;
}

async function undrain(node) {
  const done = await api(nodePath(node, 'undrain'), { method: 'POST' });
  toast(`${node.name} takes work again`, 'ok');
  return done;
}

const pending = (n) => n.admission === 'pending';

/** Admin actions on a node: `when(node)` says whether the action is offered for that node. */
export const NODE_ACTIONS = [
  { id: 'approve', label: 'Approve', tone: 'ok', when: pending, run: approve },
  { id: 'reject', label: 'Reject', tone: 'danger', when: pending, run: reject },
  { id: 'drain', label: 'Drain', tone: 'warn', when: (n) => !pending(n) && n.state === 'online' && !n.draining, run: drain },
  { id: 'undrain', label: 'Undrain', tone: 'ok', when: (n) => n.draining, run: undrain },
  { id: 'quarantine', label: 'Quarantine', tone: 'warn', when: (n) => !pending(n) && !n.quarantined, run: quarantine },
  { id: 'release', label: 'Release', tone: 'ok', when: (n) => n.quarantined, run: release },
  { id: 'remove', label: 'Remove', tone: 'danger', when: () => true, run: remove },
];

const STATE_ORDER = { online: 0, pending: 1, dead: 2 };

function gpuSummary(n) {
  const gpus = n.gpus || [];
  if (!gpus.length) {
    return [h('div', { class: 'dim' }, 'CPU only'),
      h('div', { class: 'secondary' }, `${n.cpu_count || '?'} cores · ${fmtBytes(n.memory_total_bytes)} RAM`)];
  }
  const models = [...new Set(gpus.map((g) => g.model || 'GPU'))];
  const label = models.length === 1 && gpus.length > 1 ? `${gpus.length}× ${models[0]}` : models.join(', ');
  return [h('div', { class: 'primary-text', style: { fontWeight: 500 } }, label),
    h('div', { class: 'secondary' }, `${n.cpu_count || '?'} cores · ${fmtBytes(n.memory_total_bytes)} RAM`)];
}

function vramCell(n) {
  if (!n.vram_total_bytes) return h('span', { class: 'dim' }, '—');
  const frac = n.vram_used_bytes / n.vram_total_bytes;
  const fill = h('span');
  fill.style.width = `${Math.min(100, frac * 100).toFixed(1)}%`;
  return h('div', { class: 'vram', title: `${fmtBytes(n.vram_used_bytes)} of ${fmtBytes(n.vram_total_bytes)} in use` },
    h('div', { class: 'txt' }, h('span', {}, `${fmtGiB(n.vram_used_bytes)} / ${fmtGiB(n.vram_total_bytes)} GiB`),
      h('span', { class: 'dim' }, `${Math.round(frac * 100)}%`)),
    h('div', { class: ['bar', frac > 0.9 ? 'hot' : frac > 0.75 && 'warn'] }, fill));
}

/** GPU utilisation (average over the node's GPUs) over the hottest GPU's temperature; CPU load without a GPU. */
function loadCell(n) {
  const gpus = (n.gpus || []).filter((g) => g.utilization !== undefined && g.utilization !== null);
  const temps = (n.gpus || []).map((g) => g.temperature_c).filter((t) => t !== undefined && t !== null);
  let util;
  if (gpus.length) {
    const avg = gpus.reduce((a, g) => a + Number(g.utilization), 0) / gpus.length;
    util = h('div', { class: 'tabular util', title: gpus.map((g, i) => `GPU ${i}: ${Math.round(g.utilization * 100)}%`).join('\n') },
      `${Math.round(avg * 100)}%`);
  } else if (n.cpu_percent !== null && n.cpu_percent !== undefined) {
    util = h('div', { class: 'dim tabular util', title: 'No GPU: CPU load' }, `cpu ${Math.round(n.cpu_percent)}%`);
  } else {
    util = h('div', { class: 'dim' }, '—');
  }
  let temp = null;
  if (temps.length) {
    const t = Math.max(...temps);
    temp = h('div', { class: ['secondary', 'tabular', 'temp', t >= 85 ? 'temp-hot' : t >= 75 && 'temp-warm'] }, `${Math.round(t)} °C`);
  }
  return [util, temp];
}

function repCell(n) {
  const r = n.reputation || {};
  const bad = (r.failed_validation || 0) + (r.attestation_refusals || 0) + (r.disagreements || 0);
  return h('span', {
    class: 'rep',
    title: `validated ${r.validated || 0} · failed validation ${r.failed_validation || 0} · disagreed with a quorum ${r.disagreements || 0} · attestations refused ${r.attestation_refusals || 0} · clean run ${r.streak || 0}`,
  }, h('span', { class: 'good' }, `✓ ${r.validated || 0}`), '  ', h('span', { class: bad ? 'bad' : 'dim' }, `✗ ${bad}`));
}

export class NodesView {
  constructor(el, countEl, { isAdmin, onChanged }) {
    this.el = el;
    this.countEl = countEl;
    this.isAdmin = isAdmin;
    this.onChanged = onChanged;
    this.rows = new Map();
    this.nodes = [];
    this.fetchedAt = 0;
  }

  /** Node names by id, for attempts and toasts. */
  name(id) {
    const n = this.nodes.find((x) => x.id === id);
    return n ? n.name : shortId(id, 10);
  }

  set(nodes) {
    this.nodes = [...nodes].sort((a, b) =>
      (STATE_ORDER[a.state] ?? 9) - (STATE_ORDER[b.state] ?? 9) || a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
    this.fetchedAt = Date.now() / 1000;
    const online = nodes.filter((n) => n.state === 'online').length;
    this.countEl.textContent = nodes.length ? `${online} online · ${nodes.length} known` : '';
    this.render();
  }

  render() {
    if (!this.nodes.length) {
      this.rows.clear();
      clear(this.el).append(h('div', { class: 'empty' },
        'No nodes yet. Start one with the ', h('code', {}, 'phage node …'), ' line the coordinator printed.'));
      return;
    }
    let tbody = this.el.querySelector('tbody');
    if (!tbody) {
      const cols = ['Node', 'State', 'Trust', 'GPU', 'VRAM', 'Util · temp', 'Model', 'Tasks', 'Heartbeat', 'Checks'];
      if (this.isAdmin) cols.push('');
      tbody = h('tbody');
      clear(this.el).append(h('table', { id: 'nodes-table' },
        h('thead', {}, h('tr', {}, cols.map((c) => h('th', { class: c === 'Tasks' ? 'num' : null }, c)))), tbody));
    }
    const seen = new Set();
    for (const n of this.nodes) {
      seen.add(n.id);
      const { last_heartbeat: _lh, heartbeat_age_s: _age, ...stable } = n;
      const sig = JSON.stringify(stable);
      let row = this.rows.get(n.id);
      if (!row || row.sig !== sig) {
        const el = this.renderRow(n);
        if (row) row.el.replaceWith(el);
        row = { el, sig };
        this.rows.set(n.id, row);
      }
      row.node = n;
      tbody.append(row.el); // keeps the sorted order
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) { row.el.remove(); this.rows.delete(id); }
    }
    this.tick();
  }

  renderRow(n) {
    const name = h('td', {},
      h('div', { class: 'primary-text' }, n.name),
      h('div', { class: 'secondary mono', title: n.id }, shortId(n.id, 10),
        n.hostname && n.hostname !== n.name ? ` · ${n.hostname}` : ''));
    const state = h('td', {}, h('div', { class: 'badge-stack' }, badge(n.state), n.quarantined ? badge('quarantined') : null,
      n.draining ? badge('draining') : null),
      n.quarantined && n.quarantine_reason ? h('div', { class: 'reason', title: n.quarantine_reason }, n.quarantine_reason) : null);
    const cells = [
      name,
      state,
      h('td', {}, h('span', { class: ['chip', n.trusted ? 'trusted' : 'untrusted'] }, n.trusted ? 'trusted' : 'untrusted')),
      h('td', {}, gpuSummary(n)),
      h('td', {}, vramCell(n)),
      h('td', {}, loadCell(n)),
      h('td', {}, n.loaded_model ? h('span', { class: 'mono' }, n.loaded_model) : h('span', { class: 'dim' }, '—')),
      h('td', { class: 'num' }, h('span', { class: n.active_tasks ? 'primary-text' : 'dim' }, `${n.active_tasks} / ${n.max_concurrency}`)),
      h('td', { class: 'heartbeat nowrap tabular' }),
      h('td', {}, repCell(n)),
    ];
    if (this.isAdmin) {
      cells.push(h('td', { class: 'actions' }, NODE_ACTIONS.filter((a) => a.when(n)).map((a) => h('button', {
        class: ['small', a.tone],
        type: 'button',
        dataset: { action: a.id },
        onclick: async (ev) => {
          ev.stopPropagation();
          try {
            if (await a.run(n)) this.onChanged();
          } catch (err) {
            toast(`${a.label} failed: ${err.message}`, 'error');
          }
        },
      }, a.label))));
    }
    return h('tr', { dataset: { nodeId: n.id, nodeName: n.name, state: n.state, quarantined: String(n.quarantined), draining: String(n.draining) } }, cells);
  }

  /** Heartbeat ages move every second; only that cell is touched. */
  tick() {
    const elapsed = Date.now() / 1000 - this.fetchedAt;
    for (const row of this.rows.values()) {
      const cell = row.el.querySelector('td.heartbeat');
      if (!cell || !row.node) continue;
      const age = row.node.heartbeat_age_s + elapsed;
      cell.textContent = fmtAgo(Date.now() / 1000 - age);
      cell.title = new Date(row.node.last_heartbeat * 1000).toLocaleString();
      cell.className = `heartbeat nowrap tabular ${row.node.state === 'dead' ? 'very-stale' : age > 30 ? 'stale' : ''}`;
    }
  }
}
