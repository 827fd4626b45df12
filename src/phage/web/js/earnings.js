// Node owners' earnings (admin): the tokens each node served, credited to its owner's account.
//
// The same figures as `phage usage --nodes` (GET /api/usage/nodes). A node that left the pool
// keeps its account, so a row may name a node the Nodes card no longer lists.

import { api } from './api.js';
import { clear, h, shortId } from './dom.js';

const fmtInt = (n) => Number(n || 0).toLocaleString('en-US');
const NUMS = ['Requests', 'Prompt', 'Completion', 'Credited'];

/** The earnings card: one row per node account, most credited first; rebuilt with each usage refresh. */
export class EarningsView {
  constructor(el, count, { nodeName }) {
    this.el = el;
    this.count = count;
    this.nodeName = nodeName;
  }

  async load() {
    const { nodes } = await api('/api/usage/nodes');
    const total = nodes.reduce((sum, n) => sum + n.credited_tokens, 0);
    this.count.textContent = nodes.length ? `${fmtInt(total)} tokens to ${nodes.length} node${nodes.length === 1 ? '' : 's'}` : '';
    if (!nodes.length) {
      clear(this.el).append(h('div', { class: 'empty' },
        'No node has served a chat or a generate task yet: tokens served are credited here to the node that served them.'));
      return;
    }
    clear(this.el).append(h('table', { id: 'earnings-table' },
      h('thead', {}, h('tr', {}, ['Node', ...NUMS].map((c) => h('th', { class: NUMS.includes(c) ? 'num' : null }, c)))),
      h('tbody', {}, nodes.map((n) => this.row(n)))));
  }

  row(n) {
    const name = this.nodeName(n.node_id);
    return h('tr', { dataset: { nodeId: n.node_id, nodeName: name } },
      h('td', {}, h('div', { class: 'primary-text' }, name),
        h('div', { class: 'secondary mono', title: n.node_id }, shortId(n.node_id, 16))),
      h('td', { class: 'num' }, fmtInt(n.requests)),
      h('td', { class: 'num' }, fmtInt(n.prompt_tokens)),
      h('td', { class: 'num' }, fmtInt(n.completion_tokens)),
      h('td', { class: 'num', dataset: { credited: 'tokens' } }, fmtInt(n.credited_tokens)));
  }
}
