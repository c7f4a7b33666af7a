// A small line chart on a <canvas> (no library): a time series over a sliding window, its
// latest value and the window's maximum written in the corner. The console draws viewers,
// bitrate and loss with it.

export class Series {
  constructor(windowMs = 5 * 60 * 1000, max = 600) {
    this.windowMs = windowMs;
    this.max = max;
    this.points = []; // [t (ms), value]
  }

  add(value, t = Date.now()) {
    if (!Number.isFinite(value)) return;
    this.points.push([t, value]);
    const cut = t - this.windowMs;
    while (this.points.length && (this.points[0][0] < cut || this.points.length > this.max)) {
      this.points.shift();
    }
  }

  get last() {
    return this.points.length ? this.points[this.points.length - 1][1] : null;
  }
}

/**
 * Draws `series` into `canvas` (sized by CSS; the backing store follows devicePixelRatio).
 * format(v) -> label text; colour: the line's CSS colour.
 */
export function drawChart(canvas, series, { format = String, colour = '#0969da', floor = 0 } = {}) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, w, h);
  const pts = series.points;
  const now = Date.now();
  const t0 = now - series.windowMs;
  let top = floor;
  for (const [, v] of pts) top = Math.max(top, v);
  top = top > 0 ? top * 1.15 : 1;
  const pad = 4 * dpr;
  const x = (t) => pad + ((t - t0) / series.windowMs) * (w - 2 * pad);
  const y = (v) => h - pad - (v / top) * (h - 2 * pad);
  // grid: quarter lines
  ctx.strokeStyle = 'rgba(128,128,128,0.25)';
  ctx.lineWidth = 1;
  for (let i = 1; i < 4; i++) {
    const gy = Math.round(pad + (i * (h - 2 * pad)) / 4) + 0.5;
    ctx.beginPath();
    ctx.moveTo(pad, gy);
    ctx.lineTo(w - pad, gy);
    ctx.stroke();
  }
  if (pts.length) {
    ctx.beginPath();
    pts.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2 * dpr;
    ctx.lineJoin = 'round';
    ctx.stroke();
    // area under the line, faint
    ctx.lineTo(x(pts[pts.length - 1][0]), h - pad);
    ctx.lineTo(x(pts[0][0]), h - pad);
    ctx.closePath();
    ctx.globalAlpha = 0.12;
    ctx.fillStyle = colour;
    ctx.fill();
    ctx.globalAlpha = 1;
  }
  ctx.fillStyle = '#57606a';
  ctx.font = `${11 * dpr}px system-ui, sans-serif`;
  ctx.textBaseline = 'top';
  const label = series.last === null ? '–' : format(series.last);
  ctx.fillText(`${label}  (max ${format(top / 1.15)})`, pad + 2 * dpr, pad);
  canvas.dataset.points = String(pts.length);
  canvas.dataset.last = series.last === null ? '' : String(series.last);
}
