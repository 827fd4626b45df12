// The task list and the task drawer (attempts, outputs, verifier logs, attestations).

import { api, download } from './api.js';
import { badge, clear, fmtAgo, fmtBytes, fmtDuration, fmtTime, h, openDialog, shortId, toast } from './dom.js';

const TERMINAL = new Set(['verified', 'failed', 'cancelled']);
const FILTERS = [
  ['', 'All'], ['queued', 'Queued'], ['dispatched', 'Dispatched'], ['running', 'Running'],
  ['verified', 'Verified'], ['failed', 'Failed'], ['cancelled', 'Cancelled'],
];
const PAGE = 50;

/** One line saying what a task does. */
function describe(t) {
  if (t.kind === 'job' && t.manifest) {
    const m = t.manifest;
    return [m.interpreter, m.entrypoint, ...(m.args || [])].filter(Boolean).join(' ');
  }
  if (t.kind === 'generate' && t.generate) {
    const g = t.generate;
    const n = g.n > 1 ? ` · best of ${g.n}` : '';
    return `${g.model}${n} · ${JSON.stringify((g.prompt || '').slice(0, 60))}`;
  }
  return t.kind;
}

async function confirmCancel(task) {
  return openDialog({
    title: 'Cancel this task?',
    text: `${task.id} — a node running it is told to stop. This cannot be undone.`,
    submitLabel: 'Cancel task',
    submitClass: 'danger',
    narrow: true,
    submit: async () => {
      const done = await api(`/api/tasks/${encodeURIComponent(task.id)}`, { method: 'DELETE' });
      toast(`Task ${shortId(task.id, 14)} cancelled`, 'warn');
      return done;
    },
  });
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

export class TasksView {
  constructor({ table, count, filters, more, onOpen }) {
    this.el = table;
    this.countEl = count;
    this.filtersEl = filters;
    this.moreEl = more;
    this.onOpen = onOpen;
    this.state = '';
    this.tasks = [];
    this.nextCursor = null;
    this.rows = new Map();
    this.selected = null;
    this.refreshSoon = debounce(() => this.load(), 300);
    for (const [value, label] of FILTERS) {
      filters.append(h('button', {
        type: 'button', role: 'tab', dataset: { filter: value || 'all' },
        class: value === this.state ? 'active' : null,
        onclick: () => this.setFilter(value),
      }, label));
    }
    more.querySelector('button').addEventListener('click', () => this.loadMore());
  }

  setFilter(value) {
    this.state = value;
    for (const b of this.filtersEl.children) b.classList.toggle('active', (b.dataset.filter === 'all' ? '' : b.dataset.filter) === value);
    this.tasks = [];
    this.load();
  }

  /** Reload the first page (as many rows as are shown now). */
  async load() {
    const limit = Math.min(1000, Math.max(PAGE, this.tasks.length));
    try {
      const page = await api('/api/tasks', { query: { state: this.state, limit } });
      this.tasks = page.tasks;
      this.nextCursor = page.next_cursor;
      this.render();
    } catch (err) {
      toast(`Could not load tasks: ${err.message}`, 'error');
    }
  }

  async loadMore() {
    if (!this.nextCursor) return;
    const page = await api('/api/tasks', { query: { state: this.state, limit: PAGE, cursor: this.nextCursor } });
    this.tasks = this.tasks.concat(page.tasks);
    this.nextCursor = page.next_cursor;
    this.render();
  }

  /** A feed event: show the new state at once, then fetch the full row. */
  onEvent(ev) {
    const row = this.rows.get(ev.id);
    if (row) {
      const cell = row.el.querySelector('td.state');
      if (cell) clear(cell).append(badge(ev.state));
      row.el.dataset.state = ev.state;
    }
    this.refreshSoon();
  }

  select(id) {
    this.selected = id;
    for (const [tid, row] of this.rows) row.el.classList.toggle('selected', tid === id);
  }

  render() {
    this.countEl.textContent = this.tasks.length ? `${this.tasks.length}${this.nextCursor ? '+' : ''} shown` : '';
    this.moreEl.hidden = !this.nextCursor;
    if (!this.tasks.length) {
      this.rows.clear();
      clear(this.el).append(h('div', { class: 'empty' },
        this.state ? `No ${this.state} tasks.` : 'No tasks yet. Submit a job to see it run.'));
      return;
    }
    let tbody = this.el.querySelector('tbody');
    if (!tbody) {
      tbody = h('tbody');
      clear(this.el).append(h('table', { id: 'tasks-table' }, h('thead', {}, h('tr', {},
        ['Task', 'What', 'State', 'Attempts', 'Submitted', 'Duration', ''].map((c, i) =>
          h('th', { class: i === 3 || i === 5 ? 'num' : null }, c)))), tbody));
    }
    const seen = new Set();
    for (const t of this.tasks) {
      seen.add(t.id);
      const sig = `${t.state}|${t.updated_at}|${t.attempts_made}|${t.finished_at}`;
      let row = this.rows.get(t.id);
      if (!row || row.sig !== sig) {
        const el = this.renderRow(t);
        if (row) row.el.replaceWith(el);
        row = { el, sig, task: t };
        this.rows.set(t.id, row);
      }
      row.task = t;
      tbody.append(row.el);
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) { row.el.remove(); this.rows.delete(id); }
    }
    this.select(this.selected);
    this.tick();
  }

  renderRow(t) {
    const cancel = TERMINAL.has(t.state) ? null : h('button', {
      class: 'small ghost', type: 'button', title: 'Cancel this task', dataset: { action: 'cancel' },
      onclick: async (ev) => {
        ev.stopPropagation();
        try { if (await confirmCancel(t)) this.load(); } catch (err) { toast(err.message, 'error'); }
      },
    }, 'Cancel');
    return h('tr', { class: 'clickable', dataset: { taskId: t.id, state: t.state }, onclick: () => this.onOpen(t.id) },
      h('td', {}, h('div', { class: 'mono primary-text' }, t.id),
        h('div', { class: 'secondary' }, h('span', { class: 'chip kind' }, t.kind))),
      h('td', {}, h('div', { class: 'mono ellipsis', title: describe(t) }, describe(t)),
        t.error ? h('div', { class: 'secondary ellipsis', style: { color: 'var(--failed)' }, title: t.error }, t.error) : null),
      h('td', { class: 'state' }, badge(t.state)),
      h('td', { class: 'num' }, `${t.attempts_made} / ${t.max_attempts * (t.replicas || 1)}`),
      h('td', { class: 'nowrap' }, fmtTime(t.created_at), h('div', { class: 'secondary', dataset: { ago: t.created_at } })),
      h('td', { class: 'num duration', dataset: t.finished_at ? {} : { since: t.created_at } },
        t.finished_at ? fmtDuration(t.finished_at - t.created_at) : ''),
      h('td', { class: 'actions' }, cancel));
  }

  tick() {
    const now = Date.now() / 1000;
    for (const el of this.el.querySelectorAll('[data-ago]')) el.textContent = fmtAgo(Number(el.dataset.ago), now);
    for (const el of this.el.querySelectorAll('td.duration[data-since]')) {
      el.textContent = fmtDuration(now - Number(el.dataset.since));
      el.classList.add('dim');
    }
  }
}

// ---- the drawer -----------------------------------------------------------

function kv(pairs) {
  return h('dl', { class: 'kv' }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== '')
    .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function logBlock(title, text, open = false) {
  if (!text) return null;
  return h('details', { open }, h('summary', {}, title), h('pre', { class: 'log' }, text));
}

export class TaskDrawer {
  constructor(root, { nodeName, onClose }) {
    this.root = root;
    this.nodeName = nodeName;
    this.onClose = onClose;
    this.id = null;
    this.reloadSoon = debounce(() => this.reload(), 200);
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && this.id && !document.querySelector('dialog[open]')) this.close();
    });
  }

  async open(id) {
    this.id = id;
    this.task = null;
    this.renderShell(h('div', { class: 'empty' }, 'Loading…'));
    await this.reload();
  }

  close() {
    this.id = null;
    clear(this.root);
    this.onClose();
  }

  onEvent(ev) {
    if (this.id && ev.id === this.id) this.reloadSoon();
  }

  async reload() {
    if (!this.id) return;
    const id = this.id;
    try {
      const task = await api(`/api/tasks/${encodeURIComponent(id)}`);
      if (this.id === id) this.render(task);
    } catch (err) {
      if (this.id === id) this.renderShell(h('div', { class: 'callout' }, `Could not load task: ${err.message}`));
    }
  }

  renderShell(body, task) {
    const head = h('div', { class: 'drawer-head' },
      h('div', {}, h('div', { class: 'title' }, task ? `${task.kind} task` : 'Task'), h('div', { class: 'id' }, this.id)),
      task ? badge(task.state) : null,
      h('div', { style: { flex: 1 } }),
      task && !TERMINAL.has(task.state) ? h('button', {
        class: 'small danger', type: 'button', dataset: { action: 'cancel' },
        onclick: async () => { try { if (await confirmCancel(task)) this.reload(); } catch (err) { toast(err.message, 'error'); } },
      }, 'Cancel task') : null,
      h('button', { class: 'ghost', type: 'button', title: 'Close (Esc)', 'aria-label': 'Close', onclick: () => this.close() }, '✕'));
    clear(this.root).append(
      h('div', { class: 'drawer-backdrop', onclick: () => this.close() }),
      h('aside', { class: 'drawer', id: 'drawer', role: 'dialog', 'aria-label': 'Task details', dataset: { taskId: this.id, state: task ? task.state : '' } },
        head, h('div', { class: 'drawer-body' }, body)));
  }

  render(task) {
    const scrolled = this.root.querySelector('.drawer-body')?.scrollTop || 0;
    const sections = [];
    const end = task.finished_at;
    sections.push(h('section', {}, kv([
      ['Submitted', `${fmtTime(task.created_at)} (${fmtAgo(task.created_at)})`],
      ['Finished', end ? fmtTime(end) : null],
      ['Duration', end ? fmtDuration(end - task.created_at) : null],
      ['Attempts', `${task.attempts_made} of at most ${task.max_attempts * (task.replicas || 1)}`],
      ['Priority', String(task.priority)],
      ['Isolation', task.isolation],
      ['Labels', Object.keys(task.labels || {}).length ? Object.entries(task.labels).map(([k, v]) => `${k}=${v}`).join(', ') : null],
    ])));
    if (task.error) sections.push(h('div', { class: 'callout' }, task.error));
    sections.push(this.specSection(task));
    if (task.result) sections.push(this.resultSection(task));
    sections.push(this.attemptsSection(task));
    this.renderShell(sections, task);
    const body = this.root.querySelector('.drawer-body');
    if (body) body.scrollTop = scrolled;
  }

  specSection(task) {
    if (task.kind === 'job' && task.manifest) {
      const m = task.manifest;
      return h('section', {}, h('h3', {}, 'Job'), kv([
        ['Command', h('code', {}, [m.interpreter, m.entrypoint, ...(m.args || [])].filter(Boolean).join(' '))],
        ['Outputs', (m.outputs || []).length ? h('code', {}, m.outputs.join('  ')) : 'none collected'],
        ['Time limit', m.timeout_s ? fmtDuration(m.timeout_s) : null],
        ['Workspace', task.workspace_sha256 ? h('code', { title: task.workspace_sha256 }, shortId(task.workspace_sha256, 16)) : null],
      ]));
    }
    if (task.kind === 'generate' && task.generate) {
      const g = task.generate;
      return h('section', {}, h('h3', {}, 'Generate'), kv([
        ['Model', h('code', {}, g.model)],
        ['Best of', String(g.n || 1)],
        ['Max tokens', g.max_tokens ? String(g.max_tokens) : null],
        ['Verifier', h('code', {}, g.verifier || '')],
      ]), logBlock('Prompt', g.prompt, true));
    }
    return null;
  }

  resultSection(task) {
    const r = task.result;
    const outputs = r.outputs || [];
    const kept = (task.attempts || []).find((a) => a.id === r.attempt_id);
    return h('section', {}, h('h3', {}, 'Result'), kv([
      ['Node', kept ? h('span', { title: kept.node_id }, this.nodeName(kept.node_id)) : null],
      ['Exit code', String(r.exit_code)],
      ['Run time', r.wall_time_s ? fmtDuration(r.wall_time_s) : null],
      ['Verifier', r.passed === null || r.passed === undefined ? null : badge(r.passed ? 'passed' : 'failed', r.passed ? 'passed' : 'did not pass')],
      ['Tokens', task.kind === 'generate' ? `${r.completion_tokens} completion · ${r.prompt_tokens} prompt` : null],
      ['Engine', r.engine ? `${r.engine}${r.model ? ` · ${r.model}` : ''}` : null],
      ['Sandbox', r.sandbox || null],
      ['Attestation', r.attestation ? badge('attested', 'attested') : badge('unattested', 'not attested')],
    ]),
    outputs.length ? h('div', { class: 'outputs', id: 'outputs' }, outputs.map((o) => h('div', { class: 'output' },
      h('span', { class: 'path', title: o.path }, o.path),
      h('span', { class: 'meta', title: `sha256 ${o.sha256}` }, `${fmtBytes(o.size)} · ${o.sha256.slice(0, 10)}`),
      h('button', {
        class: 'small', type: 'button', dataset: { output: o.path },
        onclick: async () => {
          try {
            await download(o.url, o.path.split('/').pop());
          } catch (err) { toast(`Download failed: ${err.message}`, 'error'); }
        },
      }, '↓ Download')))) : h('div', { class: 'dim' }, 'No output files.'),
    task.kind === 'generate' ? logBlock('Candidate output', r.output_text, true) : null,
    logBlock('stdout (tail)', r.stdout_tail, task.kind === 'job'),
    logBlock('stderr (tail)', r.stderr_tail, task.kind === 'job' && !!r.stderr_tail && r.exit_code !== 0));
  }

  attemptsSection(task) {
    const attempts = task.attempts || [];
    const winner = task.result && task.result.attempt_id;
    return h('section', {}, h('h3', {}, `Attempts (${attempts.length})`),
      attempts.length ? attempts.map((a, i) => {
        const t0 = a.dispatched_at;
        return h('div', { class: 'attempt', dataset: { attemptId: a.id, state: a.state } },
          h('div', { class: 'attempt-head' },
            h('span', { class: 'n' }, `#${i + 1}`),
            h('span', { class: 'node', title: a.node_id }, this.nodeName(a.node_id)),
            badge(a.state),
            a.passed === null || a.passed === undefined ? null : badge(a.passed ? 'passed' : 'failed', a.passed ? 'verifier passed' : 'verifier failed'),
            a.attested === null ? null : badge(a.attested ? 'attested' : 'unattested', a.attested ? 'attested' : 'not attested'),
            winner === a.id && attempts.length > 1 ? h('span', { class: 'chip' }, 'kept') : null,
            h('span', { class: 'spacer' })),
          h('div', { class: 'timeline' },
            h('span', {}, h('b', {}, 'dispatched'), fmtTime(a.dispatched_at)),
            a.started_at ? h('span', {}, h('b', {}, 'started'), `+${fmtDuration(a.started_at - t0)}`) : null,
            a.finished_at ? h('span', {}, h('b', {}, 'finished'), `+${fmtDuration(a.finished_at - t0)}`) : null,
            a.exit_code !== null && a.exit_code !== undefined ? h('span', {}, h('b', {}, 'exit'), String(a.exit_code)) : null,
            a.completion_tokens ? h('span', {}, h('b', {}, 'tokens'), String(a.completion_tokens)) : null),
          a.error ? h('div', { class: 'err' }, a.error) : null,
          task.kind === 'generate' ? logBlock('Verifier log', a.verifier_log || '(empty)', true) : null);
      }) : h('div', { class: 'dim' }, 'Not dispatched yet.'));
  }
}
