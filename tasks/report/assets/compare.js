// gpt-stats comparison page: runs side by side per aligned layer and site (curves and histograms overlaid).
"use strict";

const C = readData();
const runIndex = C.runs.map((run) => new Map(run.summary.map((r) => [`${r.layer}|${r.site}|${r.variant}`, r])));
const cstate = { row: C.default.row, site: C.default.site, variant: C.default.variant, exact: false, fit: false, log: false };
const cui = {};
const METRICS = [
  ["cos_mean", "Mean cosine similarity", "mean cos", {}],
  ["cos_std", "Spread of cosine similarity", "std of cos", { yZero: true }],
  ["d_fit", "Fitted dimension (log scale)", "fitted d", { yLog: true }],
  ["w1_gaussian", "Distance to the law at d_model", "W1 (cosine units)", { yZero: true }],
  ["w1_fit", "Distance to the law at fitted d", "W1 (cosine units)", { yZero: true }],
  ["norm_mean", "Mean norm of the states", "mean ‖x‖", { yZero: true }],
];

function runColor(i) { return RUN_COLORS[i % RUN_COLORS.length]; }
function rowOf(i, rowIdx, site) { return runIndex[i].get(`${C.rows[rowIdx].layers[i]}|${site}|${cstate.variant}`); }
function diffText(run) {
  const parts = Object.entries(run.diff).map(([k, v]) => `${k} = ${Array.isArray(v) ? v.join(", ") : v}`);
  return parts.length ? parts.join("; ") : "(same configuration)";
}

function cbuild() {
  const app = document.getElementById("app");
  h("h1", {}, app, `gpt-stats comparison of ${C.runs.length} runs`);
  h("p", { class: "sub" }, app, `${C.rows.length} aligned ${C.x_label === "layer" ? "layers" : "depths"} × ${C.sites.length} sites · x axis: ${C.x_label}`);
  const sec = h("section", { id: "runs" }, app);
  h("h2", {}, sec, "Runs");
  const t = h("table", { id: "runs-table", class: "full" }, sec);
  const hr = h("tr", {}, h("thead", {}, t));
  for (const c of ["run", "directory", "model", "layers × width", "corpus", "tokens", "sample", "seed", "config", "differs in"]) h("th", { class: "text" }, hr, c);
  const tb = h("tbody", {}, t);
  C.runs.forEach((run, i) => {
    const tr = h("tr", {}, tb);
    const td = h("td", { class: "text" }, tr);
    legendKey(td, { color: runColor(i), width: 3 }, run.letter);
    h("td", { class: "text wrap", title: run.path }, tr, run.dir);
    h("td", { class: "text", title: run.model.name }, tr, `${modelLabel(run.model.name)} (${run.model.model_type})`);
    h("td", { class: "text" }, tr, `${run.model.n_layers} × ${run.model.d_model}`);
    h("td", { class: "text wrap" }, tr, corpusLabel(run.corpus_config));
    h("td", {}, tr, fmtInt(run.corpus.tokens));
    h("td", {}, tr, fmtInt(run.sample.size));
    h("td", {}, tr, run.seed);
    h("td", { class: "text" }, tr, run.config_hash);
    h("td", { class: "text wrap" }, tr, diffText(run));
  });

  const ex = h("section", { id: "explore" }, app);
  h("h2", {}, ex, "Histograms overlaid");
  h("p", { class: "muted" }, ex, `Opened ${C.default.reason}.`);
  const ctl = h("div", { class: "controls" }, ex);
  const a = h("span", {}, ctl); h("label", { for: "row-select" }, a, C.x_label === "layer" ? "Layer " : "Depth ");
  cui.row = h("select", { id: "row-select" }, a);
  C.rows.forEach((r, i) => h("option", { value: i }, cui.row, r.label));
  const b = h("span", {}, ctl); h("label", { for: "site-select" }, b, "Site ");
  cui.site = h("select", { id: "site-select" }, b);
  for (const st of C.sites) h("option", { value: st }, cui.site, st);
  if (C.variants.length > 1) {
    const c = h("span", {}, ctl); h("label", { for: "variant-select" }, c, "Variant ");
    cui.variant = h("select", { id: "variant-select" }, c);
    for (const v of C.variants) h("option", { value: v }, cui.variant, v);
    cui.variant.addEventListener("change", () => { cstate.variant = cui.variant.value; credraw(); });
  }
  const box = (id, label, key) => {
    const sp = h("span", {}, ctl);
    const inp = h("input", { type: "checkbox", id }, sp);
    h("label", { for: id }, sp, " " + label);
    inp.addEventListener("change", () => { cstate[key] = inp.checked; cdrawHist(); });
  };
  box("exact-toggle", "each run's law at d_model", "exact");
  box("fit-toggle", "each run's law at fitted d", "fit");
  box("log-toggle", "log density", "log");
  cui.row.addEventListener("change", () => { cstate.row = Number(cui.row.value); credraw(); });
  cui.site.addEventListener("change", () => { cstate.site = cui.site.value; credraw(); });
  cui.hist = h("div", { id: "hist" }, ex);
  cui.legend = h("div", { class: "legend", id: "hist-legend" }, ex);

  const cs = h("section", { id: "curves" }, app);
  h("h2", {}, cs, "Layer-wise curves");
  cui.curvesNote = h("p", { class: "muted" }, cs);
  const leg = h("div", { class: "legend" }, cs);
  C.runs.forEach((run, i) => legendKey(leg, { color: runColor(i) }, `${run.letter}: ${run.dir}`));
  cui.charts = h("div", { class: "charts", id: "charts" }, cs);

  if (C.profiles.length) {
    const ps = h("section", { id: "profiles" }, app);
    h("h2", {}, ps, "Depth profiles overlaid");
    profileNote(ps, `${C.x_label}, one colour per run, for the site chosen above`);
    const pleg = h("div", { class: "legend" }, ps);
    C.runs.forEach((run, i) => legendKey(pleg, { color: runColor(i) }, `${run.letter}: ${run.dir}`));
    cui.profiles = h("div", { class: "charts", id: "profile-charts" }, ps);
  }

  const ts = h("section", { id: "summary" }, app);
  h("h2", {}, ts, "Side by side");
  cui.tableNote = h("p", { class: "muted" }, ts);
  cui.table = h("div", { class: "tablewrap" }, ts);
  h("footer", {}, app, "Drawn from the Parquet files of the runs listed above; self-contained, no network request. Redraw with: gpt-stats compare RUN_A RUN_B ... --out PAGE.html");
  credraw();
}

function credraw() {
  cui.row.value = String(cstate.row); cui.site.value = cstate.site;
  cdrawHist(); cdrawCurves(); cdrawProfiles(); cdrawTable();
}

function cdrawProfiles() {
  if (!cui.profiles) return;
  clear(cui.profiles);
  const raw = C.runs.map((run, i) => new Map(run.summary.filter((r) => r.variant === "raw" && r.site === cstate.site).map((r) => [r.layer, r])));
  for (const panel of C.profiles) {
    const series = C.runs.flatMap((run, i) => {
      const points = C.rows.map((row, k) => ({ x: row.x, id: String(k), r: raw[i].get(row.layers[i]) || null }));
      return panel.curves.map((c) => profileSeries(points, c, String(i), run.letter, runColor(i)));
    });
    profileChart(h("div", {}, cui.profiles), panel, series, {
      xLabel: C.x_label === "layer" ? "layer" : "relative depth", xName: C.x_label === "layer" ? "layer" : "depth", xTicks: cxTicks(),
      xFormat: C.x_label === "layer" ? (v) => String(v) : fmtSig, selected: (p) => p.id === String(cstate.row),
      onClick: (p) => { cstate.row = Number(p.id); credraw(); document.getElementById("explore").scrollIntoView(); },
    });
  }
}

function cdrawHist() {
  const series = C.runs.map((run, i) => {
    const r = rowOf(i, cstate.row, cstate.site);
    return { run, i, r, h: run.hists[`${r.layer}|${r.site}|${r.variant}`] || {} };
  });
  let ymax = 0;
  for (const sr of series) ymax = Math.max(ymax, ...(sr.h.data || []).map((v) => v || 0));
  ymax = ymax * 1.12 || 1;
  let ymin = 0;
  if (cstate.log) {
    const pos = series.flatMap((sr) => (sr.h.data || []).filter((v) => v > 0));
    ymin = Math.max(Math.min(...pos) / 3, ymax * 1e-7); ymax *= 2.5;
  }
  clear(cui.hist);
  const f = frame(cui.hist, {
    width: 1130, height: 340, x: [-1, 1], y: [cstate.log ? ymin : 0, ymax], yLog: cstate.log,
    title: `${C.rows[cstate.row].label} · ${cstate.site}`,
    xLabel: "cosine similarity between two sampled token states", yLabel: cstate.log ? "density (log scale)" : "density (per unit cosine)",
  });
  f.svg.setAttribute("id", "hist-svg");
  Object.entries({ "data-ymin": cstate.log ? ymin : 0, "data-ymax": ymax, "data-ylog": cstate.log ? 1 : 0, "data-plot-top": f.top, "data-plot-height": f.height, "data-plot-left": f.left, "data-plot-width": f.width })
    .forEach(([a, v]) => f.svg.setAttribute(a, v));
  clear(cui.legend);
  for (const sr of series) {
    const e = sr.run.edges, color = runColor(sr.i), data = sr.h.data || [];
    const xs = e.flatMap((v, j) => (j + 1 < e.length ? [v, e[j + 1]] : []));
    s("path", { "data-run": sr.i, "data-source": "data", d: pathData(xs, data.flatMap((v) => [v, v]), f.x, f.y, cstate.log), fill: "none", stroke: color, "stroke-width": 1.6 }, f.plot);
    const off = [];
    for (const [name, on, dash] of [["gaussian_exact", cstate.exact, "2 3"], ["gaussian_fit", cstate.fit, "6 4"]]) {
      if (!on || !sr.h[name]) continue;
      s("path", { "data-run": sr.i, "data-source": name, d: pathData(binCenters(e), sr.h[name], f.x, f.y, cstate.log), fill: "none", stroke: color, "stroke-width": 1.2, "stroke-dasharray": dash }, f.plot);
      const peak = Math.max(...sr.h[name].map((v) => v || 0));
      if (peak > ymax) off.push(`${name === "gaussian_exact" ? "law at d_model" : "fitted law"} peaks at ${fmtSig(peak)}, off scale`);
    }
    legendKey(cui.legend, { color, width: 2 }, `${sr.run.letter}: ${sr.run.dir}, layer ${sr.r.layer}: mean cos ${fmt(sr.r.cos_mean)}, std ${fmt(sr.r.cos_std)}, fitted d ${fmtSig(sr.r.d_fit)} of ${sr.r.d_model}` + (off.length ? ` (${off.join("; ")})` : ""));
  }
  if (cstate.exact) legendKey(cui.legend, { color: "#555", dash: "2 3" }, "isotropic Gaussian at d_model (run's colour)");
  if (cstate.fit) legendKey(cui.legend, { color: "#555", dash: "6 4" }, "isotropic Gaussian at fitted d (run's colour)");
}

function cxTicks() {  // whole layers on a layer axis; the default ticks on relative depth
  if (C.x_label !== "layer") return undefined;
  const xs = C.rows.map((r) => r.x), lo = Math.min(...xs), hi = Math.max(...xs);
  const step = Math.max(1, Math.ceil(niceStep(hi - lo || 1, 8)));
  const out = []; for (let t = Math.ceil(lo / step) * step; t <= hi; t += step) out.push(t); return out;
}

function cdrawCurves() {
  clear(cui.charts);
  cui.curvesNote.textContent = `Site ${cstate.site}; one line per run; click a point to open that ${C.x_label === "layer" ? "layer" : "depth"} above.`;
  const ticks = cxTicks();
  for (const [col, title, ylab, o] of METRICS) {
    const div = h("div", {}, cui.charts);
    const series = C.runs.map((run, i) => ({
      label: run.letter, color: runColor(i),
      values: C.rows.map((row, k) => ({ x: row.x, y: (rowOf(i, k, cstate.site) || {})[col] ?? null, id: String(k) })),
    }));
    const widths = [...new Set(C.runs.map((run) => run.model.d_model))];
    lineChart(div, series, Object.assign({
      title, yLabel: ylab, xLabel: C.x_label === "layer" ? "layer" : "relative depth", xName: C.x_label === "layer" ? "layer" : "depth",
      xTicks: ticks, xFormat: C.x_label === "layer" ? (v) => String(v) : fmtSig,
      refs: col === "d_fit" ? widths.map((w) => ({ y: w, label: `d_model ${w}` })) : [],
      selected: (p) => p.id === String(cstate.row),
      onClick: (p) => { cstate.row = Number(p.id); credraw(); document.getElementById("explore").scrollIntoView(); },
    }, o));
  }
}

function cdrawTable() {
  clear(cui.table);
  cui.tableNote.textContent = `Site ${cstate.site}: each number from the run's summary.parquet; click a row to open it above.`;
  const cols = [["cos_mean", "mean cos", 3], ["cos_std", "std cos", 3], ["d_fit", "fitted d", 1], ["w1_gaussian", "W1 vs d_model", 3]];
  const t = h("table", { class: "summary", id: "compare-table" }, cui.table);
  const th = h("thead", {}, t);
  const r1 = h("tr", {}, th), r2 = h("tr", {}, th);
  h("th", { class: "text", rowspan: 2 }, r1, C.x_label === "layer" ? "layer" : "depth");
  for (const [, label] of cols) h("th", { colspan: C.runs.length }, r1, label);
  for (let k = 0; k < cols.length; k++) C.runs.forEach((run, i) => { const c = h("th", {}, r2, run.letter); c.style.color = runColor(i); });
  const tb = h("tbody", {}, t);
  C.rows.forEach((row, k) => {
    const tr = h("tr", { "data-row": k, class: k === cstate.row ? "selected" : null }, tb);
    h("td", { class: "text" }, tr, row.label);
    for (const [col, , digits] of cols) C.runs.forEach((run, i) => h("td", { "data-run": i, "data-col": col }, tr, fmt((rowOf(i, k, cstate.site) || {})[col], digits)));
    tr.addEventListener("click", () => { cstate.row = k; credraw(); document.getElementById("explore").scrollIntoView(); });
  });
}

cbuild();
