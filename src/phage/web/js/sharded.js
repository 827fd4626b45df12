// Sharded models: each model's blocks as a bar (a cell per block, gaps in red), its coverage,
// whether a chain can run, and the nodes holding each range. Refreshed with the other figures.

import { badge, clear, h } from './dom.js';

export class ShardedView {
  constructor(card, root, count) {
    this.card = card;
    this.root = root;
    this.count = count;
  }

  set(models) {
    this.card.hidden = models.length === 0;
    this.count.textContent = models.length ? `${models.length} model${models.length > 1 ? 's' : ''}` : '';
    clear(this.root);
    for (const m of models) this.root.append(this.model(m));
  }

  model(m) {
    const cov = m.coverage;
    const cells = cov.per_block.map((n, i) => h('span', {
      class: ['block', n === 0 ? 'gap' : n < m.redundancy ? 'thin' : 'full'],
      title: `block ${i}: ${n} server${n === 1 ? '' : 's'}`,
      dataset: { block: i, servers: n },
    }));
    const servers = cov.servers.map((s) => h('li', {},
      h('code', {}, s.blocks), ' ', s.node_id.slice(0, 12), s.standby ? h('span', { class: 'muted' }, ' standby') : null));
    return h('div', { class: 'sharded-model', dataset: { model: m.name } },
      h('div', { class: 'sharded-head' },
        h('strong', {}, m.name), ' ',
        badge(cov.ready_for_inference ? 'online' : 'dead', cov.ready_for_inference ? 'ready' : 'not ready'), ' ',
        h('span', { class: 'coverage' }, `${cov.coverage_percent}% of ${m.num_blocks} blocks`),
        cov.gaps.length ? h('span', { class: 'gaps' }, ` · gaps ${cov.gaps.join(', ')}`) : null),
      h('div', { class: 'blocks', role: 'img', 'aria-label': `coverage of ${m.name}` }, cells),
      h('ul', { class: 'servers' }, servers));
  }
}
