// Queue depth, running work and throughput over time, drawn as inline SVG (no chart library).

import { clear, fmtTime, h, svg } from './dom.js';

const WINDOW_S = 15 * 60;
const MIN_WINDOW_S = 60;
const TICK_STEPS = [15, 30, 60, 120, 180, 300, 600];
const PAD = { l: 38, r: 46, t: 10, b: 24 };
const SERIES = [
  { key: 'queue', label: 'queued', cls: 's-queue', color: 'var(--accent)', area: true },
  { key: 'running', label: 'running', cls: 's-running', color: 'var(--dispatched)', dashed: true },
  { key: 'per_min', label: 'finished / min', cls: 's-rate', color: 'var(--verified)', right: true },
];

/** The smallest "nice" number (1, 2, 2.5, 5 × 10^k) at least x. */
function niceUp(x, steps = [1, 2, 2.5, 5, 10]) {
  if (x <= 0) return 1;
  const pow = 10 ** Math.floor(Math.log10(x));
  for (const f of steps) if (f * pow >= x - 1e-9) return f * pow;
  return 10 * pow;
}

function fmtTick(v) {
  if (v >= 1000) return `${(v / 1000).toFixed(v % 1000 ? 1 : 0)}k`;
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

export class Chart {
  constructor(el, legend, caption) {
    this.el = el;
    this.legend = legend;
    this.caption = caption;
    this.samples = [];
    this.interval = 2;
    this.hoverTs = null;
    new ResizeObserver(() => this.render()).observe(el);
    el.addEventListener('mousemove', (ev) => {
      const rect = el.getBoundingClientRect();
      const x = ev.clientX - rect.left;
      const [t0, t1] = this.range();
      const w = rect.width - PAD.l - PAD.r;
      this.hoverTs = x < PAD.l || x > rect.width - PAD.r ? null : t0 + ((x - PAD.l) / w) * (t1 - t0);
      this.render();
    });
    el.addEventListener('mouseleave', () => { this.hoverTs = null; this.render(); });
  }

  /** Replace the samples (sorted by time) and redraw. */
  set(samples, interval) {
    this.samples = samples;
    if (interval) this.interval = interval;
    this.render();
  }

  /** The time span drawn: the last 15 minutes, or since the first sample when there is less (at least 2 min). */
  range() {
    const now = Date.now() / 1000;
    if (!this.samples.length) return [now - MIN_WINDOW_S, now];
    const last = this.samples[this.samples.length - 1].ts;
    const t0 = Math.max(last - WINDOW_S, this.samples[0].ts);
    return [t0, Math.max(last, t0 + MIN_WINDOW_S)];
  }

  render() {
    const width = this.el.clientWidth;
    const height = this.el.clientHeight;
    if (!width || !height) return;
    const [t0, t1] = this.range();
    const pts = this.samples.filter((s) => s.ts >= t0);
    const left = niceUp(Math.max(4, ...pts.map((s) => Math.max(s.queue, s.running))) / 4, [1, 2, 5, 10]);
    const right = niceUp(Math.max(4, ...pts.map((s) => s.per_min)) / 4);
    const plotW = width - PAD.l - PAD.r;
    const plotH = height - PAD.t - PAD.b;
    const x = (ts) => PAD.l + ((ts - t0) / (t1 - t0)) * plotW;
    const yL = (v) => PAD.t + plotH - (v / (left * 4)) * plotH;
    const yR = (v) => PAD.t + plotH - (v / (right * 4)) * plotH;

    const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img',
      'aria-label': 'Queue depth, running tasks and throughput over the last 15 minutes' });
    root.append(svg('defs', {}, svg('linearGradient', { id: 'queue-fill', x1: 0, y1: 0, x2: 0, y2: 1 },
      svg('stop', { offset: '0%', 'stop-color': '#7aa2ff', 'stop-opacity': 0.32 }),
      svg('stop', { offset: '100%', 'stop-color': '#7aa2ff', 'stop-opacity': 0.02 }))));

    const grid = svg('g', { class: 'grid' });
    const axis = svg('g', { class: 'axis' });
    for (let i = 0; i <= 4; i += 1) {
      const y = PAD.t + plotH - (i / 4) * plotH;
      grid.append(svg('line', { x1: PAD.l, x2: width - PAD.r, y1: y, y2: y }));
      axis.append(svg('text', { x: PAD.l - 8, y: y + 4, 'text-anchor': 'end' }, fmtTick(left * i)));
      axis.append(svg('text', { x: width - PAD.r + 8, y: y + 4, class: 'right' }, fmtTick(right * i)));
    }
    const tickEvery = TICK_STEPS.find((step) => (t1 - t0) / step <= 6) || 600;
    const clock = { hour: '2-digit', minute: '2-digit', hour12: false };
    if (tickEvery < 60) clock.second = '2-digit';
    for (let t = Math.ceil(t0 / tickEvery) * tickEvery; t <= t1; t += tickEvery) {
      axis.append(svg('text', { x: x(t), y: height - 6, 'text-anchor': 'middle' },
        new Date(t * 1000).toLocaleTimeString([], clock)));
    }
    root.append(grid, axis);

    // Paths break where samples are missing (the coordinator restarted, say).
    const gap = this.interval * 3.5;
    for (const s of SERIES) {
      const y = s.right ? yR : yL;
      let d = '';
      let area = '';
      let runStart = null;
      let prev = null;
      for (const p of pts) {
        const px = x(p.ts).toFixed(1);
        const py = y(p[s.key]).toFixed(1);
        if (prev === null || p.ts - prev.ts > gap) {
          if (runStart !== null && s.area) area += `L${x(prev.ts).toFixed(1)},${yL(0)}L${runStart},${yL(0)}Z`;
          d += `M${px},${py}`;
          area += `M${px},${py}`;
          runStart = px;
        } else {
          d += `L${px},${py}`;
          area += `L${px},${py}`;
        }
        prev = p;
      }
      if (prev !== null && s.area) {
        area += `L${x(prev.ts).toFixed(1)},${yL(0)}L${runStart},${yL(0)}Z`;
        root.append(svg('path', { class: 'area', d: area }));
      }
      if (d) root.append(svg('path', { class: ['line', s.cls, s.dashed && 'dashed'], d }));
    }

    clear(this.el);
    this.el.append(root);
    if (pts.length < 2) {
      this.el.append(h('div', { class: 'chart-empty' }, 'collecting samples — a point every few seconds'));
    }
    if (this.caption) {
      const minutes = Math.round((t1 - t0) / 60);
      this.caption.textContent = `last ${minutes} minute${minutes === 1 ? '' : 's'}`;
    }
    const latest = pts[pts.length - 1];
    this.renderLegend(latest);
    if (this.hoverTs !== null && pts.length) this.renderHover(root, pts, x, yL, yR, width);
  }

  renderHover(root, pts, x, yL, yR, width) {
    let best = pts[0];
    for (const p of pts) if (Math.abs(p.ts - this.hoverTs) < Math.abs(best.ts - this.hoverTs)) best = p;
    const cx = x(best.ts);
    root.append(svg('line', { class: 'cursor', x1: cx, x2: cx, y1: PAD.t, y2: this.el.clientHeight - PAD.b }));
    for (const s of SERIES) {
      root.append(svg('circle', { class: ['dot', s.cls], cx, cy: (s.right ? yR : yL)(best[s.key]), r: 4,
        style: { fill: s.color } }));
    }
    const tip = h('div', { class: 'chart-tip' }, h('div', { class: 't' }, fmtTime(best.ts)),
      SERIES.map((s) => h('div', {}, h('span', {}, s.label), h('b', {}, fmtTick(best[s.key])))));
    tip.style.left = `${cx > width / 2 ? cx - 170 : cx + 12}px`;
    this.el.append(tip);
  }

  renderLegend(latest) {
    clear(this.legend);
    for (const s of SERIES) {
      const i = h('i');
      i.style.background = s.color;
      this.legend.append(h('span', {}, i, s.label, h('b', {}, latest ? fmtTick(latest[s.key]) : '—')));
    }
  }
}
