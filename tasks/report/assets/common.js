// gpt-stats report pages: shared helpers. Plain DOM and inline SVG, no libraries, no network.
// All text from the run (tokens, prompts, paths) goes into the page with textContent, never as markup.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const SITE_COLORS = { resid_post: "#1f77b4", attn_out: "#d62728", mlp_out: "#2ca02c" };
const RUN_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

function readData() {
  return JSON.parse(document.getElementById("gs-data").textContent);
}

// An HTML element with attributes and optional text, appended to parent.
function h(tag, attrs, parent, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : String(v));
  }
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (parent) parent.appendChild(e);
  return e;
}

// An SVG element, the same way.
function s(tag, attrs, parent, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) e.setAttribute(k, String(v));
  }
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (parent) parent.appendChild(e);
  return e;
}

function clear(e) {
  while (e.firstChild) e.removeChild(e.firstChild);
  return e;
}

function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const d = digits === undefined ? 3 : digits;
  const a = Math.abs(v);
  if (a !== 0 && (a < Math.pow(10, -d) || a >= 1e6)) return v.toExponential(2);
  return v.toFixed(d);
}

function fmtInt(v) {
  return v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US");
}

// Three significant digits, for tick labels and dimensions.
function fmtSig(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1).replace(".0e", "e");
  if (a >= 100) return String(Math.round(v));
  return String(Number(v.toPrecision(3)));
}

function niceStep(span, maxTicks) {
  const raw = span / Math.max(1, maxTicks);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

function linTicks(lo, hi, maxTicks) {
  if (!(hi > lo)) return [lo];
  const step = niceStep(hi - lo, maxTicks);
  const out = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  return out;
}

// Ticks at 1, 2, 5 x 10^k inside [lo, hi], thinned to at most maxTicks.
function logTicks(lo, hi, maxTicks) {
  for (const mult of [[1, 2, 5], [1, 3], [1]]) {
    const out = [];
    for (let k = Math.floor(Math.log10(lo)); k <= Math.ceil(Math.log10(hi)); k++) {
      for (const m of mult) {
        const t = m * Math.pow(10, k);
        if (t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9)) out.push(t);
      }
    }
    if (out.length <= maxTicks) return out;
  }
  const out = [];
  for (let k = Math.ceil(Math.log10(lo)); k <= Math.floor(Math.log10(hi)); k += 2) out.push(Math.pow(10, k));
  return out;
}

function scale(d0, d1, r0, r1, log) {
  if (log) {
    const a = Math.log(d0), b = Math.log(d1);
    return (v) => r0 + ((Math.log(v) - a) / (b - a)) * (r1 - r0);
  }
  return (v) => r0 + ((v - d0) / (d1 - d0)) * (r1 - r0);
}

// A chart frame: an <svg> with margins, grid, axes, tick labels spaced so they never overlap, axis titles.
// Returns {svg, plot (clipped group), x, y, left, top, width, height}.
function frame(parent, o) {
  const W = o.width || 880, H = o.height || 300;
  const m = Object.assign({ left: 64, right: 16, top: o.title ? 26 : 12, bottom: 46 }, o.margin || {});
  const svg = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": o.title || o.yLabel || "chart" }, parent);
  const pw = W - m.left - m.right, ph = H - m.top - m.bottom;
  const x = scale(o.x[0], o.x[1], m.left, m.left + pw, o.xLog);
  const y = scale(o.y[0], o.y[1], m.top + ph, m.top, o.yLog);
  const xt = o.xTicks || (o.xLog ? logTicks(o.x[0], o.x[1], Math.floor(pw / 48)) : linTicks(o.x[0], o.x[1], Math.floor(pw / 64)));
  const yt = o.yLog ? logTicks(o.y[0], o.y[1], Math.floor(ph / 28)) : linTicks(o.y[0], o.y[1], Math.floor(ph / 36));
  const grid = s("g", { class: "grid" }, svg);
  for (const t of yt) s("line", { x1: m.left, x2: m.left + pw, y1: y(t), y2: y(t) }, grid);
  const axis = s("g", { class: "axis" }, svg);
  s("line", { x1: m.left, x2: m.left + pw, y1: m.top + ph, y2: m.top + ph }, axis);
  s("line", { x1: m.left, x2: m.left, y1: m.top, y2: m.top + ph }, axis);
  const xfmt = o.xFormat || fmtSig, yfmt = o.yFormat || fmtSig;
  for (const t of xt) {
    s("line", { x1: x(t), x2: x(t), y1: m.top + ph, y2: m.top + ph + 4 }, axis);
    s("text", { x: x(t), y: m.top + ph + 17, "text-anchor": "middle", "font-size": 12 }, svg, xfmt(t));
  }
  for (const t of yt) {
    s("line", { x1: m.left - 4, x2: m.left, y1: y(t), y2: y(t) }, axis);
    s("text", { x: m.left - 7, y: y(t) + 4, "text-anchor": "end", "font-size": 12 }, svg, yfmt(t));
  }
  if (o.xLabel) s("text", { x: m.left + pw / 2, y: H - 8, "text-anchor": "middle", "font-size": 13 }, svg, o.xLabel);
  if (o.yLabel) s("text", { transform: `translate(14 ${m.top + ph / 2}) rotate(-90)`, "text-anchor": "middle", "font-size": 13 }, svg, o.yLabel);
  if (o.title) s("text", { x: m.left, y: 16, "font-size": 13, "font-weight": 600 }, svg, o.title);
  const id = "clip" + Math.random().toString(36).slice(2);
  const cp = s("clipPath", { id }, s("defs", {}, svg));
  s("rect", { x: m.left, y: m.top - 1, width: pw, height: ph + 1 }, cp);
  const plot = s("g", { "clip-path": `url(#${id})` }, svg);
  return { svg, plot, x, y, left: m.left, top: m.top, width: pw, height: ph };
}

// "M x y L x y ..." through the points whose value is usable (positive on a log axis).
function pathData(xs, ys, fx, fy, log) {
  let d = "", pen = false;
  for (let i = 0; i < xs.length; i++) {
    const v = ys[i];
    if (v === null || v === undefined || (log && !(v > 0))) { pen = false; continue; }
    d += (pen ? " L" : (d ? " M" : "M")) + fx(xs[i]).toFixed(2) + " " + fy(v).toFixed(2);
    pen = true;
  }
  return d;
}

function binCenters(edges) {
  const c = [];
  for (let i = 0; i + 1 < edges.length; i++) c.push((edges[i] + edges[i + 1]) / 2);
  return c;
}

// A small key for an HTML legend: a line (or box) in the series' style, then its label.
function legendKey(parent, style, label) {
  const span = h("span", { class: "key" }, parent);
  const svg = s("svg", { width: 28, height: 12 }, span);
  if (style.box) s("rect", { x: 2, y: 1, width: 24, height: 10, fill: style.fill || style.color, "fill-opacity": 0.35, stroke: style.color }, svg);
  else s("line", { x1: 2, x2: 26, y1: 6, y2: 6, stroke: style.color, "stroke-width": style.width || 1.6, "stroke-dasharray": style.dash || null }, svg);
  h("span", {}, span, label);
  return span;
}

// Layer-wise curves: one line per series over integer layers (or any x), points clickable.
// series: [{label, color, dash, key, col, band, values: [{x, y, id, lo, hi}]}]; with `band`, the points' lo/hi are
// drawn as a shaded band. o: {title, xLabel, yLabel, yLog, refs: [{y, label}], selected}. The svg carries its axes'
// ranges (data-x0, data-x1, data-y0, data-y1, data-ylog, data-plot-*) and each line and band its series' key and
// column, so a test can read the values back from the geometry.
function lineChart(parent, series, o) {
  const ok = (v) => v !== null && v !== undefined && (!o.yLog || v > 0);
  const xs = series.flatMap((sr) => sr.values.map((p) => p.x));
  let ys = series.flatMap((sr) => sr.values.flatMap((p) => (sr.band ? [p.y, p.lo, p.hi] : [p.y]))).filter(ok);
  for (const r of o.refs || []) ys.push(r.y);
  if (!ys.length) ys = [0, 1];
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (o.yLog) { y0 = y0 / 1.4; y1 = y1 * 1.4; }
  else { const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 0.1; y0 = o.yZero && y0 >= 0 ? 0 : y0 - pad; y1 += pad; }
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 -= 0.5; x1 += 0.5; }
  const padx = (x1 - x0) * 0.03;
  const f = frame(parent, {
    width: o.width || 370, height: o.height || 230, title: o.title, xLabel: o.xLabel, yLabel: o.yLabel, yLog: o.yLog,
    x: [x0 - padx, x1 + padx], y: [y0, y1], xTicks: o.xTicks, xFormat: o.xFormat, margin: { left: 58, bottom: 40 },
  });
  Object.entries({ "data-x0": x0 - padx, "data-x1": x1 + padx, "data-y0": y0, "data-y1": y1, "data-ylog": o.yLog ? 1 : 0,
    "data-plot-left": f.left, "data-plot-top": f.top, "data-plot-width": f.width, "data-plot-height": f.height })
    .forEach(([a, v]) => f.svg.setAttribute(a, v));
  for (const sr of series.filter((x) => x.band)) {
    const pts = sr.values.filter((p) => ok(p.lo) && ok(p.hi));
    if (!pts.length) continue;
    const d = pathData([...pts.map((p) => p.x), ...pts.map((p) => p.x).reverse()], [...pts.map((p) => p.hi), ...pts.map((p) => p.lo).reverse()], f.x, f.y, o.yLog);
    s("path", { class: "band", "data-series": sr.key, "data-col": sr.col, d: d + " Z", fill: sr.color, "fill-opacity": 0.16, stroke: "none" }, f.plot);
  }
  for (const r of o.refs || []) {
    s("line", { x1: f.left, x2: f.left + f.width, y1: f.y(r.y), y2: f.y(r.y), stroke: "#888", "stroke-dasharray": "2 3" }, f.plot);
    s("text", { x: f.left + f.width - 4, y: f.y(r.y) + 13, "text-anchor": "end", "font-size": 11, fill: "#666" }, f.plot, r.label);
  }
  for (const sr of series) {
    const pts = sr.values.filter((p) => ok(p.y));
    s("path", { class: "line", "data-series": sr.key ?? null, "data-col": sr.col ?? null, d: pathData(pts.map((p) => p.x), pts.map((p) => p.y), f.x, f.y, o.yLog), fill: "none", stroke: sr.color, "stroke-width": 1.8, "stroke-dasharray": sr.dash || null }, f.plot);
    for (const p of pts) {
      const sel = o.selected && o.selected(p);
      const c = s("circle", { class: "pt", cx: f.x(p.x), cy: f.y(p.y), r: sel ? 5.5 : 3, fill: sel ? "#fff" : sr.color, stroke: sr.color, "stroke-width": sel ? 2.5 : 1, "data-id": p.id }, f.svg);
      s("title", {}, c, `${sr.label}, ${o.xName || "layer"} ${fmtSig(p.x)}: ${fmtSig(p.y)}`);
      if (o.onClick) c.addEventListener("click", () => o.onClick(p));
    }
  }
  return f;
}

// Depth profiles (`tasks.report.profiles`): one series per curve of a panel for one site or run, from
// `points` [{x, id, r: its summary row or null}]; the curve's interval columns, when it has them, as a band.
function profileSeries(points, curve, key, label, color) {
  const get = (r, col) => (r && col && r[col] !== undefined ? r[col] : null);
  return {
    key, col: curve.column, label: `${label}, ${curve.label}`, color, dash: curve.dash ? "5 3" : null, band: !!curve.low,
    values: points.map((p) => ({ x: p.x, id: p.id, y: get(p.r, curve.column), lo: get(p.r, curve.low), hi: get(p.r, curve.high) })),
  };
}

function profileChart(parent, panel, series, o) {
  const f = lineChart(parent, series, Object.assign({ title: panel.title, yLabel: panel.y_label, yLog: panel.log }, o));
  f.svg.setAttribute("data-panel", panel.key);
  return f;
}

function profileNote(parent, what) {
  h("p", { class: "muted" }, parent, `The raw states' main numbers against ${what}: mean cosine (sample pairs, and all pairs ` +
    "dashed), fitted dimension, participation ratio, intrinsic dimension (TwoNN, and GRIDE dashed), largest kurtosis, and " +
    "the massive-activation ratio where the run has it. Shaded bands: 95 % document-bootstrap intervals.");
}

function facts(parent, pairs) {
  const dl = h("dl", { class: "facts" }, parent);
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === "") continue;
    h("dt", {}, dl, k);
    h("dd", {}, dl, v);
  }
  return dl;
}

function corpusLabel(cc) {
  if (!cc) return "?";
  if (cc.source === "embedded") return "Python reference manual (embedded)";
  if (cc.source === "hub") return [cc.name, cc.config, cc.split].filter(Boolean).join(" / ");
  const files = (cc.files || []).map((f) => String(f).split("/").pop());
  return "files: " + (files.length > 3 ? files.slice(0, 3).join(", ") + ` (+${files.length - 3})` : files.join(", "));
}

function modelLabel(name) {
  const n = String(name || "?");
  if (n.startsWith("package:")) return n.slice(8).split("/")[0];
  return n.replace(/\/+$/, "").split("/").pop();
}

// Beside the verdict: the coordinate that carries more than half of the site's mean cosine or variance
// (summary columns top_coord_*, rule in tasks/analysis/coordinates.py); "" where none does or the run lacks them.
function dominanceNote(r) {
  if (!r || r.top_coord_dominates !== true) return "";
  const pct = (v) => (v === null || v === undefined || Number.isNaN(v) ? "–" : `${Math.round(100 * v)} %`);
  return ` (coordinate ${r.top_coord} dominates: ${pct(r.top_coord_cos_share)} of the mean cosine, ${pct(r.top_coord_var_share)} of the variance)`;
}
