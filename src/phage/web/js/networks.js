// Training jobs of composable networks: each network's VNode graph (where every VNode runs)
// and its VNodes' local-loss curves, refreshed while the page is open.

import { api } from './api.js';
import { badge, clear, h, shortId, svg } from './dom.js';

const COLORS = ['#4f7cff', '#f0883e', '#3fb950', '#d2a8ff', '#ff7b72', '#79c0ff', '#e3b341', '#56d4dd'];
const BOX_W = 120, BOX_H = 44, GAP_X = 48, GAP_Y = 16;

/** Depth of each VNode: 0 for those reading the input, else one more than its deepest input. */
function depths(vnodes) {
  const byId = new Map(vnodes.map((v) => [v.id, v]));
  const memo = new Map();
  const depth = (id) => {
    if (id === 'input') return -1;
    if (!memo.has(id)) memo.set(id, 1 + Math.max(...byId.get(id).inputs.map(depth)));
    return memo.get(id);
  };
  vnodes.forEach((v) => depth(v.id));
  return memo;
}

/** The VNode graph: boxes in columns by depth, edges for activations, colour = the host node. */
export function graph(net, nodeName) {
  const d = depths(net.vnodes);
  const columns = new Map();
  for (const v of net.vnodes) {
    const col = d.get(v.id);
    if (!columns.has(col)) columns.set(col, []);
    columns.get(col).push(v);
  }
  const hosts = [...new Set(net.vnodes.map((v) => v.node_id).filter(Boolean))];
  const pos = new Map();
  const rows = Math.max(...[...columns.values()].map((c) => c.length));
  const width = columns.size * (BOX_W + GAP_X) + GAP_X, height = rows * (BOX_H + GAP_Y) + GAP_Y;
  for (const [col, vs] of columns) {
    vs.forEach((v, i) => pos.set(v.id, { x: GAP_X + col * (BOX_W + GAP_X), y: GAP_Y + i * (BOX_H + GAP_Y) }));
  }
  const out = svg('svg', { class: 'vnode-graph', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img',
    'aria-label': `VNode graph of ${net.name}` });
  for (const v of net.vnodes) {
    const to = pos.get(v.id);
    for (const src of v.inputs) {
      const from = src === 'input' ? { x: 0, y: to.y } : pos.get(src);
      const x1 = src === 'input' ? 4 : from.x + BOX_W;
      out.append(svg('line', { x1, y1: from.y + BOX_H / 2, x2: to.x, y2: to.y + BOX_H / 2, class: 'edge' }));
    }
  }
  for (const v of net.vnodes) {
    const p = pos.get(v.id);
    const host = hosts.indexOf(v.node_id);
    const g = svg('g', { class: ['vnode', v.done && 'done'], dataset: { vnode: v.id } },
      svg('title', {}, `${v.id} (${v.blocks.join(' → ')}) on ${v.node_id ? nodeName(v.node_id) : 'no node yet'}`),
      svg('rect', { x: p.x, y: p.y, width: BOX_W, height: BOX_H, rx: 6,
        style: { stroke: host >= 0 ? COLORS[host % COLORS.length] : '#888' } }),
      svg('text', { x: p.x + 8, y: p.y + 18, class: 'vnode-id' }, v.id),
      svg('text', { x: p.x + 8, y: p.y + 35, class: 'vnode-host' },
        v.node_id ? nodeName(v.node_id) : 'placing…'));
    out.append(g);
  }
  return out;
}

/** Local loss per VNode over its steps, one polyline each. */
export function lossChart(net) {
  const W = 360, H = 150, P = 28;
  const series = net.vnodes.filter((v) => v.history.length > 1);
  const out = svg('svg', { class: 'loss-chart', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img',
    'aria-label': `local loss curves of ${net.name}` });
  if (!series.length) {
    out.append(svg('text', { x: P, y: H / 2, class: 'muted' }, 'no steps yet'));
    return out;
  }
  const maxStep = Math.max(...series.flatMap((v) => v.history.map((p) => p[0])));
  const maxLoss = Math.max(...series.flatMap((v) => v.history.map((p) => p[1])), 1e-6);
  const x = (s) => P + (s / maxStep) * (W - P - 8), y = (l) => H - P + 4 - (l / maxLoss) * (H - P - 8);
  out.append(svg('line', { x1: P, y1: H - P + 4, x2: W - 8, y2: H - P + 4, class: 'axis' }));
  out.append(svg('text', { x: P, y: H - 6, class: 'muted' }, 'step'));
  out.append(svg('text', { x: 2, y: 12, class: 'muted' }, maxLoss.toFixed(2)));
  series.forEach((v, i) => {
    out.append(svg('polyline', { class: 'loss', dataset: { vnode: v.id }, fill: 'none',
      stroke: COLORS[i % COLORS.length], points: v.history.map(([s, l]) => `${x(s)},${y(l)}`).join(' ') }));
  });
  return out;
}

export class NetworksView {
  constructor(root, count, { nodeName }) {
    this.root = root;
    this.count = count;
    this.nodeName = nodeName;
  }

  async refresh() {
    const { networks } = await api('/api/networks');
    this.count.textContent = networks.length ? String(networks.length) : '';
    const shown = await Promise.all(networks.slice(0, 4).map((n) => api(`/api/networks/${encodeURIComponent(n.id)}`)));
    clear(this.root);
    if (!shown.length) {
      this.root.append(h('p', { class: 'empty' }, 'No training jobs yet. Start one with ', h('code', {}, 'phage train SPEC --data FILE'), '.'));
      return;
    }
    for (const net of shown) {
      const acc = net.result && net.result.accuracy !== undefined ? `test accuracy ${(net.result.accuracy * 100).toFixed(1)} %` : '';
      const legend = net.vnodes.filter((v) => v.history.length > 1).map((v, i) =>
        h('span', { class: 'legend-item' }, h('i', { style: { background: COLORS[i % COLORS.length] } }), `${v.id} ${v.loss === null ? '' : v.loss.toFixed(3)}`));
      this.root.append(h('div', { class: 'network', dataset: { network: net.id } },
        h('div', { class: 'network-head' }, h('b', {}, net.name), ' ', h('span', { class: 'muted' }, shortId(net.id, 16)), ' ',
          badge(net.state), ' ', h('span', { class: 'muted' }, acc), net.error ? h('span', { class: 'error' }, ` ${net.error}`) : null),
        h('div', { class: 'network-body' }, graph(net, this.nodeName), h('div', {}, lossChart(net), h('div', { class: 'legend' }, legend)))));
    }
  }
}
