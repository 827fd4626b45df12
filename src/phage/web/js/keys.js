// API keys and their usage (admin): create, revoke, credit limits, tokens used per key.

import { api } from './api.js';
import { badge, clear, fmtAgo, h, openDialog, toast } from './dom.js';

const fmtInt = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));

async function createKey() {
  const name = h('input', { id: 'key-name', name: 'name', maxlength: 100, required: true, placeholder: 'e.g. ci-runner' });
  const role = h('select', { id: 'key-role', name: 'role' }, h('option', { value: 'user' }, 'user'),
    h('option', { value: 'admin' }, 'admin'));
  const limit = h('input', { id: 'key-limit', name: 'limit', type: 'number', min: 0, placeholder: 'no limit' });
  const made = await openDialog({
    title: 'New API key',
    text: 'The secret is shown once, right after the key is made.',
    body: [
      h('div', { class: 'field' }, h('label', { for: 'key-name' }, 'Name'), name),
      h('div', { class: 'field' }, h('label', { for: 'key-role' }, 'Role'), role),
      h('div', { class: 'field' }, h('label', { for: 'key-limit' }, 'Credit limit (tokens)'), limit),
    ],
    submitLabel: 'Create key',
    narrow: true,
    submit: async () => api('/api/keys', {
      method: 'POST',
      body: { name: name.value.trim(), role: role.value, credit_limit_tokens: limit.value === '' ? null : Number(limit.value) },
    }),
  });
  if (!made) return null;
  await openDialog({
    title: `Key "${made.name}" made`,
    text: 'Copy the secret now: phage keeps only its hash and cannot show it again.',
    body: h('div', { class: 'secret', id: 'new-key-secret' }, made.key),
    submitLabel: 'Done',
    narrow: true,
  });
  return made;
}

async function revokeKey(key) {
  return openDialog({
    title: `Revoke ${key.name}?`,
    text: 'Requests with this key are refused from the next one on. This cannot be undone.',
    submitLabel: 'Revoke key',
    submitClass: 'danger',
    narrow: true,
    submit: async () => {
      const done = await api(`/api/keys/${encodeURIComponent(key.id)}`, { method: 'DELETE' });
      toast(`${key.name} revoked`, 'warn');
      return done;
    },
  });
}

/** The keys card: one row per key with its usage; rebuilt on each refresh (few rows, rarely). */
export class KeysView {
  constructor(el, count, button, { me }) {
    this.el = el;
    this.count = count;
    this.me = me;
    button.onclick = async () => { if (await createKey()) this.load(); };
  }

  async load() {
    const [keys, usage] = await Promise.all([api('/api/keys'), api('/api/usage')]);
    const used = new Map(usage.keys.map((u) => [u.key_id, u]));
    this.count.textContent = `${keys.keys.filter((k) => !k.revoked).length} active`;
    const rows = keys.keys.map((k) => this.row(k, used.get(k.id)));
    clear(this.el).append(h('table', { id: 'keys-table' },
      h('thead', {}, h('tr', {}, ['Key', 'Role', 'State', 'Requests', 'Prompt', 'Completion', 'Credit left', 'Made', '']
        .map((c) => h('th', { class: ['Requests', 'Prompt', 'Completion', 'Credit left'].includes(c) ? 'num' : null }, c)))),
      h('tbody', {}, rows)));
  }

  row(k, u) {
    const models = u ? Object.keys(u.by_model || {}) : [];
    const left = u ? u.credit_left_tokens : k.credit_limit_tokens;
    const actions = !k.revoked && k.id !== this.me.id
      ? h('button', {
        class: ['small', 'danger'],
        type: 'button',
        dataset: { action: 'revoke' },
        onclick: async () => {
          try {
            if (await revokeKey(k)) this.load();
          } catch (err) {
            toast(`Revoke failed: ${err.message}`, 'error');
          }
        },
      }, 'Revoke')
      : null;
    return h('tr', { dataset: { keyId: k.id, keyName: k.name, revoked: String(k.revoked) } },
      h('td', {}, h('div', { class: 'primary-text' }, k.name),
        h('div', { class: 'secondary mono' }, k.id, models.length ? ` · ${models.join(', ')}` : '')),
      h('td', {}, k.role),
      h('td', {}, badge(k.revoked ? 'revoked' : 'active')),
      h('td', { class: 'num' }, fmtInt(u ? u.requests : 0)),
      h('td', { class: 'num' }, fmtInt(u ? u.prompt_tokens : 0)),
      h('td', { class: 'num' }, fmtInt(u ? u.completion_tokens : 0)),
      h('td', { class: 'num', dataset: { credit: 'left' } }, k.credit_limit_tokens === null ? 'no limit' : fmtInt(left)),
      h('td', { class: 'nowrap' }, k.created_at ? fmtAgo(k.created_at) : '—'),
      h('td', { class: 'actions' }, actions));
  }
}
