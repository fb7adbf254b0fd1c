// A line chart as inline SVG (training loss over steps): axes, a few round ticks, the line and its last point.

const SVG = "http://www.w3.org/2000/svg";
const HEIGHT = 260;
const PAD = { left: 52, right: 16, top: 12, bottom: 30 };

function svg(tag, attrs = {}, text = null) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, value);
  if (text !== null) el.textContent = text;
  return el;
}

/** Return at most ``count`` + 1 round values in [lo, hi], 1, 2 or 5 times a power of ten apart, as many as fit. */
export function ticks(lo, hi, count = 4) {
  if (hi <= lo) return [lo];
  const power = 10 ** Math.floor(Math.log10((hi - lo) / count));
  const steps = [0.1, 0.2, 0.5, 1, 2, 5, 10].map((m) => m * power);
  const step = steps.find((s) => Math.floor(hi / s) - Math.ceil(lo / s) + 1 <= count + 1);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** Return an SVG element ``width`` pixels wide plotting ``points`` ([{x, y}], x ascending). */
export function lineChart(points, { width = 720, xLabel = "step", yLabel = "loss" } = {}) {
  const WIDTH = Math.max(320, Math.round(width));
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const [xMin, xMax] = [Math.min(...xs), Math.max(...xs)];
  let [yMin, yMax] = [Math.min(...ys), Math.max(...ys)];
  if (yMin === yMax) [yMin, yMax] = [yMin - 0.5, yMax + 0.5];
  const span = yMax - yMin;
  [yMin, yMax] = [Math.max(0, yMin - span * 0.05), yMax + span * 0.05];
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const sx = (x) => PAD.left + (xMax === xMin ? plotW / 2 : ((x - xMin) / (xMax - xMin)) * plotW);
  const sy = (y) => PAD.top + (1 - (y - yMin) / (yMax - yMin)) * plotH;

  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img" });
  root.append(svg("title", {}, `${yLabel} over ${points.length} ${xLabel}s, last ${ys.at(-1)}`));
  for (const v of ticks(yMin, yMax)) {
    root.append(svg("line", { class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: sy(v), y2: sy(v) }));
    root.append(svg("text", { x: PAD.left - 8, y: sy(v) + 4, "text-anchor": "end" }, String(v)));
  }
  for (const v of ticks(xMin, xMax, 6).filter(Number.isInteger)) {
    root.append(svg("text", { x: sx(v), y: HEIGHT - 10, "text-anchor": "middle" }, String(v)));
  }
  root.append(svg("line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: PAD.top + plotH }));
  root.append(svg("line", { class: "axis", x1: PAD.left, x2: WIDTH - PAD.right, y1: PAD.top + plotH, y2: PAD.top + plotH }));

  const path = points.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" ");
  const base = PAD.top + plotH;
  root.append(svg("path", { class: "area", d: `${path} L${sx(xMax).toFixed(1)},${base} L${sx(xMin).toFixed(1)},${base} Z` }));
  root.append(svg("path", { class: "line", d: path }));
  const last = points.at(-1);
  root.append(svg("circle", { class: "dot", cx: sx(last.x), cy: sy(last.y), r: 3.5 }));
  root.dataset.points = String(points.length);
  return root;
}
