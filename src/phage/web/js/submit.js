// The "Submit job" dialog: a few files edited in place and a manifest, sent as JSON to POST /api/tasks.

import { api } from './api.js';
import { clear, h, openDialog, toast } from './dom.js';

const EXAMPLE = `import platform
import time

# Everything the job writes that matches an "outputs" glob is collected and downloadable.
with open("hello.txt", "w") as f:
    f.write(f"hello from {platform.node()} at {time.strftime('%H:%M:%S')}\\n")
print("wrote hello.txt")
`;

/** Split an argument line like a shell would for simple cases: spaces, and "quoted words". */
function splitArgs(line) {
  const out = [];
  const re = /"([^"]*)"|'([^']*)'|(\S+)/g;
  let m;
  while ((m = re.exec(line)) !== null) out.push(m[1] ?? m[2] ?? m[3]);
  return out;
}

function field(label, input, hint) {
  if (!input.id) input.id = `submit-${input.name}`;
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input, hint ? h('div', { class: 'hint' }, hint) : null);
}

/** Open the dialog; resolves to the created task (or null if dismissed). */
export function openSubmitDialog() {
  const files = [{ name: 'main.py', content: EXAMPLE }];
  let current = 0;
  const tabs = h('div', { class: 'files-tabs' });
  const fileName = h('input', { name: 'filename', spellcheck: 'false', 'aria-label': 'File name' });
  const fileBody = h('textarea', { name: 'content', rows: 10, spellcheck: 'false', 'aria-label': 'File content' });
  fileName.addEventListener('input', () => { files[current].name = fileName.value; drawTabs(); });
  fileBody.addEventListener('input', () => { files[current].content = fileBody.value; });
  fileBody.addEventListener('keydown', (ev) => {
    if (ev.key !== 'Tab') return;
    ev.preventDefault();
    const { selectionStart: s, selectionEnd: e, value } = fileBody;
    fileBody.value = `${value.slice(0, s)}    ${value.slice(e)}`;
    fileBody.selectionStart = fileBody.selectionEnd = s + 4;
    files[current].content = fileBody.value;
  });

  function show(i) {
    current = i;
    fileName.value = files[i].name;
    fileBody.value = files[i].content;
    drawTabs();
  }

  function drawTabs() {
    clear(tabs);
    files.forEach((f, i) => tabs.append(h('span', { class: ['tab', i === current && 'active'] },
      h('span', { onclick: () => show(i), style: { cursor: 'pointer' } }, f.name || '(unnamed)'),
      files.length > 1 ? h('button', {
        type: 'button', title: `Remove ${f.name}`,
        onclick: () => { files.splice(i, 1); show(Math.min(current, files.length - 1)); },
      }, '×') : null)));
    tabs.append(h('button', {
      class: 'small ghost', type: 'button', id: 'submit-add-file',
      onclick: () => { files.push({ name: `file${files.length + 1}.txt`, content: '' }); show(files.length - 1); },
    }, '+ Add file'));
  }

  const entrypoint = h('input', { name: 'entrypoint', value: 'main.py', spellcheck: 'false' });
  const interpreter = h('input', { name: 'interpreter', value: 'python3', spellcheck: 'false' });
  const args = h('input', { name: 'args', placeholder: 'e.g. --steps 10 "two words"', spellcheck: 'false' });
  const outputs = h('input', { name: 'outputs', value: '*.txt', spellcheck: 'false' });
  const timeout = h('input', { name: 'timeout_s', type: 'number', min: 1, value: 60 });
  const count = h('input', { name: 'count', type: 'number', min: 1, max: 1000, value: 1 });
  const priority = h('input', { name: 'priority', type: 'number', value: 0 });

  const body = h('div', {},
    h('label', {}, 'Workspace files'), tabs,
    h('div', { class: 'file-editor' }, h('div', { class: 'field' }, fileName), h('div', { class: 'field' }, fileBody)),
    h('div', { class: 'row' }, field('Entrypoint', entrypoint), field('Interpreter', interpreter, 'python3, sh, bash… or empty to run the entrypoint itself')),
    field('Arguments', args),
    h('div', { class: 'row' },
      field('Outputs', outputs, 'Comma-separated globs, relative to the workspace'),
      field('Time limit (s)', timeout)),
    h('div', { class: 'row' }, field('Copies', count, 'Run this many identical tasks'), field('Priority', priority, 'Higher runs first')));
  show(0);

  return openDialog({
    title: 'Submit a job',
    text: 'The files form the job\'s workspace; it runs in a sandbox on a node and its outputs are kept.',
    body,
    submitLabel: 'Submit',
    submit: async () => {
      const byName = {};
      for (const f of files) {
        if (!f.name.trim()) throw new Error('every file needs a name');
        byName[f.name.trim()] = f.content;
      }
      const n = Number(count.value) || 1;
      const task = {
        kind: 'job',
        files: byName,
        priority: Number(priority.value) || 0,
        manifest: {
          entrypoint: entrypoint.value.trim(),
          args: splitArgs(args.value),
          outputs: outputs.value.split(',').map((s) => s.trim()).filter(Boolean),
          timeout_s: Number(timeout.value) || 60,
        },
      };
      task.manifest.interpreter = interpreter.value.trim(); // empty: run the entrypoint itself
      if (n > 1) task.count = n;
      const made = await api('/api/tasks', { method: 'POST', body: task });
      const first = made.tasks ? made.tasks[0] : made;
      toast(n > 1 ? `Submitted ${n} tasks` : `Submitted ${first.id}`, 'ok');
      return first;
    },
  });
}
