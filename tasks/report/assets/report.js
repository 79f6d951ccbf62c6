// gpt-stats report.html: one run. Sections: identity + sanity check, histogram explorer (layer/site selector,
// quantile slider with the exemplar pair, dimension slider), summary table, run details; the curves against layer
// are in curves.js, the largest activations in massive.js.
"use strict";

const D = readData();
const COLS = [
  ["layer", "layer", "0-based layer", (v) => String(v)],
  ["site", "site", "capture site (TransformerLens name)", (v) => v],
  ["variant", "variant", "how the states were prepared", (v) => v],
  ["n_sample", "N states", "sampled token states", fmtInt],
  ["n_pairs", "pairs", "unordered pairs N (N - 1) / 2", fmtInt],
  ["cos_mean", "mean cos", "mean cosine over all pairs", (v) => fmt(v, 3)],
  ["cos_std", "std cos", "standard deviation of the cosine over all pairs", (v) => fmt(v, 3)],
  ["d_fit", "fitted d", "maximum-likelihood dimension of the isotropic Gaussian law", (v) => fmt(v, 1)],
  ["d_model", "d_model", "width of the states", fmtInt],
  ["w1_gaussian", "W1 vs d_model", "Wasserstein-1 distance (cosine units) to the isotropic law at d_model", (v) => fmt(v, 3)],
  ["w1_fit", "W1 vs fitted d", "Wasserstein-1 distance (cosine units) to the isotropic law at the fitted d", (v) => fmt(v, 3)],
  ["norm_mean", "mean norm", "mean Euclidean norm of the sampled states", (v) => fmt(v, 2)],
  ["norm_std", "std norm", "standard deviation of the norms", (v) => fmt(v, 2)],
  ["verdict", "verdict", "the statistics' verdict", (v) => v],
];
const HIDDEN = new Set(["n_tokens"]);
const SOURCES = {
  data: { color: "#4c78a8", box: true, label: "data: sampled token states" },
  gaussian_exact: { color: "#d62728", width: 1.4, label: "isotropic Gaussian, d = d_model" },
  gaussian_fit: { color: "#2ca02c", width: 1.8, dash: "6 4", label: "isotropic Gaussian, fitted d" },
  gaussian_empirical: { color: "#444", width: 1.1, dash: "1.5 2.5", label: "random normal vectors (check)" },
  slider: { color: "#8e44ad", width: 2.2, label: "isotropic Gaussian, slider d" },
};

const byKey = new Map(D.summary.map((r) => [`${r.layer}|${r.site}|${r.variant}`, r]));
const state = { layer: D.default.layer, site: D.default.site, variant: D.default.variant, qi: null, d: null, log: false };
const ui = {};

function cur() { return `${state.layer}|${state.site}|${state.variant}`; }

function build() {
  const app = document.getElementById("app");
  const id = D.identity, m = id.model || {};
  h("h1", {}, app, `gpt-stats report: ${modelLabel(m.name)} on ${corpusLabel(id.corpus_config)}`);
  const first = D.summary[0] || {};
  h("p", { class: "sub" }, app,
    `${D.layers.length} layers × ${D.sites.length} sites · ${fmtInt(first.n_sample)} sampled token states each · ` +
    `seed ${id.seed} · config ${id.config_hash} · status ${id.status}` + (id.finished ? ` · finished ${id.finished}` : ""));
  const nav = h("nav", {}, app);
  for (const [href, label] of [["#explore", "Histogram explorer"], ["#massive", "Largest activations"], ["#curves", "Layer-wise curves"], ["#profiles", "Depth profiles"], ["#summary", "Summary table"], ["#sanity", "Model sanity check"], ["#run", "Run identity"]]) h("a", { href }, nav, label);

  const top = h("div", { class: "row" }, app);
  buildSanity(h("section", { id: "sanity", class: "panel grow" }, top));
  buildKeyFacts(h("section", { class: "panel grow" }, top));

  buildExplorer(h("section", { id: "explore" }, app));
  buildMassive(h("section", { id: "massive" }, app));
  buildCurves(h("section", { id: "curves" }, app));
  if (D.profiles.length) buildProfiles(h("section", { id: "profiles" }, app));
  buildSummary(h("section", { id: "summary" }, app));
  buildRun(h("section", { id: "run" }, app));
  h("footer", {}, app, `Drawn from the Parquet files and manifest of ${id.path}; this page is self-contained and makes no network request. ` +
    "Redraw it with: gpt-stats report RUN_DIR");
  select(state.layer, state.site, state.variant, true);
}

// ---------------------------------------------------------------------------------------------------------
function buildSanity(sec) {
  h("h2", {}, sec, "Model sanity check");
  const sc = D.sanity || {};
  if (!sc.applies) {
    h("p", { id: "sanity-na" }, sec, "Does not apply: " + (sc.reason || "not a causal language model") + ".");
    h("p", { class: "muted" }, sec, "For causal LMs the run records the most likely next tokens after a few prompts, as the seed's first cell did.");
    return;
  }
  buildSanityMeasures(sec, sc);
  if (!(sc.prompts || []).length) return;
  h("p", { class: "muted" }, sec, `Most likely next tokens and their probabilities (top ${sc.top_k || (sc.prompts[0] || { top: [] }).top.length}); a model that loaded right completes these sensibly.`);
  const wrap = h("div", { class: "row" }, sec);
  sc.prompts.forEach((p, i) => {
    const box = h("div", { class: "sanity-prompt", "data-prompt-index": i }, wrap);
    const q = h("p", {}, box);
    h("span", { class: "token prompt-text" }, q, p.prompt);
    h("span", { class: "muted" }, q, " →");
    const t = h("table", {}, box);
    const hr = h("tr", {}, h("thead", {}, t));
    h("th", {}, hr, "#"); h("th", { class: "text" }, hr, "next token"); h("th", { class: "text" }, hr, "probability");
    const tb = h("tbody", {}, t);
    for (const r of p.top) {
      const tr = h("tr", {}, tb);
      h("td", {}, tr, r.rank);
      const td = h("td", { class: "text" }, tr);
      h("span", { class: "token", title: `token id ${r.token_id}` }, td, r.token);
      const pc = h("td", { class: "text" }, tr);
      h("span", { class: "bar", style: null }, pc).style.width = Math.max(1, Math.round(r.probability * 120)) + "px";
      h("span", {}, pc, " " + (r.probability < 0.01 ? r.probability.toPrecision(2) : r.probability.toFixed(3)));
    }
  });
}

// Next-token accuracy and cross-entropy on the run's corpus against the unigram floor, with the verdict.
function buildSanityMeasures(sec, sc) {
  if (!sc.verdict) return;
  const good = sc.verdict === "trained";
  const p = h("p", { id: "sanity-verdict", class: good ? "" : "warn" }, sec);
  h("b", {}, p, "Verdict: " + sc.verdict);
  if (!sc.tokens) { h("span", { class: "muted" }, p, " (no corpus tokens to score)"); return; }
  h("span", { class: "muted" }, p, ` — next-token predictions on the first ${sc.tokens.toLocaleString("en-US")} tokens of this corpus`);
  const pct = (x) => (100 * x).toFixed(1) + " %", nats = (x) => x.toFixed(3) + " nats";
  const ppl = (x) => (x === null || x === undefined ? "overflows" : x < 1000 ? x.toFixed(1) : x.toExponential(2));
  const t = h("table", { id: "sanity-measures" }, sec);
  const hr = h("tr", {}, h("thead", {}, t));
  for (const c of ["", "top-1 accuracy", "cross-entropy", "perplexity"]) h("th", { class: c ? "" : "text" }, hr, c);
  const tb = h("tbody", {}, t);
  for (const [label, a, b, c] of [["model", sc.next_token_top1, sc.cross_entropy, sc.perplexity],
                                  ["unigram floor", sc.unigram_top1, sc.unigram_cross_entropy, sc.unigram_perplexity]]) {
    const tr = h("tr", {}, tb);
    h("td", { class: "text" }, tr, label); h("td", {}, tr, pct(a)); h("td", {}, tr, nats(b)); h("td", {}, tr, ppl(c));
  }
  if (sc.rule) h("p", { class: "muted" }, sec, "Rule: " + sc.rule + ". The floor is the unigram frequencies of the same tokens (docs/outputs.md).");
}

function buildKeyFacts(sec) {
  const id = D.identity, m = id.model || {}, c = id.corpus || {}, sm = id.sample || {};
  h("h2", {}, sec, "Run");
  facts(sec, [
    ["model", `${m.name} (${m.model_type}, ${m.n_layers} layers, d_model ${m.d_model})`],
    ["corpus", `${corpusLabel(id.corpus_config)}: ${fmtInt(c.documents)} documents, ${fmtInt(c.sequences)} sequences, ${fmtInt(c.tokens)} tokens`],
    ["sample", `${fmtInt(sm.size)} token states per layer and site (${fmtInt((D.summary[0] || {}).n_pairs)} pairs)`],
    ["seed", id.seed],
    ["config hash", id.config_hash],
    ["total time", id.timings && id.timings.total !== undefined ? `${fmt(id.timings.total, 1)} s` : null],
    ["run directory", id.path],
  ]);
}

// ---------------------------------------------------------------------------------------------------------
function buildExplorer(sec) {
  h("h2", {}, sec, "Histogram explorer");
  h("p", { class: "muted" }, sec, `Pairwise cosine similarity of the sampled states against isotropic Gaussian baselines. ` +
    `Opened at the layer and site ${D.default.reason}.`);
  const ctl = h("div", { class: "controls" }, sec);
  const l1 = h("span", {}, ctl); h("label", { for: "layer-select" }, l1, "Layer "); ui.layer = h("select", { id: "layer-select" }, l1);
  for (const l of D.layers) h("option", { value: l }, ui.layer, `layer ${l}`);
  const l2 = h("span", {}, ctl); h("label", { for: "site-select" }, l2, "Site "); ui.site = h("select", { id: "site-select" }, l2);
  for (const st of D.sites) h("option", { value: st }, ui.site, st);
  ui.variant = null;
  if (D.variants.length > 1) {
    const l3 = h("span", {}, ctl); h("label", { for: "variant-select" }, l3, "Variant "); ui.variant = h("select", { id: "variant-select" }, l3);
    for (const v of D.variants) h("option", { value: v }, ui.variant, v);
    ui.variant.addEventListener("change", () => select(state.layer, state.site, ui.variant.value, true));
  }
  const l4 = h("span", {}, ctl); ui.log = h("input", { type: "checkbox", id: "log-toggle" }, l4); h("label", { for: "log-toggle" }, l4, " log density (tails)");
  ui.layer.addEventListener("change", () => select(Number(ui.layer.value), state.site, state.variant, true));
  ui.site.addEventListener("change", () => select(state.layer, ui.site.value, state.variant, true));
  ui.log.addEventListener("change", () => { state.log = ui.log.checked; drawHistogram(); });

  ui.hist = h("div", { id: "hist" }, sec);
  ui.legend = h("div", { class: "legend", id: "hist-legend" }, sec);
  ui.stats = h("div", { class: "stats", id: "hist-stats" }, sec);

  // Quantile slider: the stops are the run's `similarity.quantiles`, each with its exact exemplar pair.
  const qs = h("div", { class: "slider" }, sec);
  h("label", { class: "name", for: "q-slider" }, qs, "Quantile of the pairs");
  const qbox = h("div", {}, qs);
  ui.q = h("input", { type: "range", id: "q-slider", min: 0, max: 0, step: 1, value: 0 }, qbox);
  ui.qTicks = h("div", {}, qbox);
  ui.qOut = h("div", { class: "readout", id: "q-readout" }, qs);
  ui.q.addEventListener("input", () => { state.qi = Number(ui.q.value); drawQuantile(); });
  const pair = h("div", { class: "pair" }, sec);
  ui.ctx = {};
  for (const side of ["a", "b"]) {
    const box = h("div", {}, pair);
    ui.ctx[side + "meta"] = h("div", { class: "tokmeta", id: `${side}-meta` }, box);
    ui.ctx[side] = h("div", { class: "context", id: `${side}-context` }, box);
  }
  h("p", { class: "muted" }, sec, "Each token is shown with the ten tokens ending at it, then the next token in brackets (<END> at the end of a sequence), as in the seed.");

  // Dimension slider: the isotropic law for any d, over the precomputed grid (exact Beta-CDF differences).
  const ds = h("div", { class: "slider" }, sec);
  h("label", { class: "name", for: "d-slider" }, ds, "Gaussian dimension d");
  const dbox = h("div", {}, ds);
  ui.d = h("input", { type: "range", id: "d-slider", min: 0, max: D.laws.d.length - 1, step: 1, value: 0 }, dbox);
  ui.dAxis = h("div", {}, dbox);
  const dr = h("div", { class: "readout" }, ds);
  ui.dOut = h("div", { id: "d-readout" }, dr);
  const btns = h("div", {}, dr);
  ui.dFit = h("button", { id: "d-fit-button", type: "button", title: "set the slider to the fitted dimension (green mark)" }, btns, "▲ fitted d");
  ui.dFit.style.color = SOURCES.gaussian_fit.color;
  h("span", {}, btns, " ");
  ui.dModel = h("button", { id: "d-model-button", type: "button", title: "set the slider to the model's width (red mark)" }, btns, "▲ d_model");
  ui.dModel.style.color = SOURCES.gaussian_exact.color;
  ui.d.addEventListener("input", () => { state.d = Number(ui.d.value); drawHistogram(); });
  ui.dFit.addEventListener("click", () => setD(byKey.get(cur()).d_fit));
  ui.dModel.addEventListener("click", () => setD(byKey.get(cur()).d_model));
}

function nearestD(d) {
  let best = 0;
  D.laws.d.forEach((v, i) => { if (Math.abs(Math.log(v / d)) < Math.abs(Math.log(D.laws.d[best] / d))) best = i; });
  return best;
}

function setD(d) {
  state.d = nearestD(d);
  ui.d.value = state.d;
  drawHistogram();
}

function select(layer, site, variant, resetSliders) {
  state.layer = layer; state.site = site; state.variant = variant;
  if (!byKey.has(cur())) {  // a layer without this site: take the first site it has
    const r = D.summary.find((x) => x.layer === layer && x.variant === variant) || D.summary[0];
    state.layer = r.layer; state.site = r.site; state.variant = r.variant;
  }
  ui.layer.value = String(state.layer); ui.site.value = state.site;
  if (ui.variant) ui.variant.value = state.variant;
  const ex = D.exemplars[cur()] || [];
  ui.q.max = Math.max(0, ex.length - 1);
  if (resetSliders || state.qi === null || state.qi >= ex.length) state.qi = Math.max(0, ex.length - 1);  // the most similar pair
  ui.q.value = state.qi;
  drawQuantileTicks(ex);
  if (resetSliders || state.d === null) state.d = nearestD(byKey.get(cur()).d_fit || byKey.get(cur()).d_model);
  ui.d.value = state.d;
  drawHistogram();
  drawMassive();
  markSelection();
}

function drawQuantileTicks(ex) {
  clear(ui.qTicks);
  const W = ui.q.getBoundingClientRect().width || 480;
  const svg = s("svg", { width: W, height: 16 }, ui.qTicks);
  const n = ex.length, thumb = 8;
  const every = Math.max(1, Math.ceil((n * 44) / W));
  ex.forEach((p, i) => {
    if (i % every && i !== n - 1) return;
    const x = n > 1 ? thumb + (i / (n - 1)) * (W - 2 * thumb) : W / 2;
    const anchor = n > 1 && i === 0 ? "start" : n > 1 && i === n - 1 ? "end" : "middle";
    s("text", { x: anchor === "start" ? x - thumb : anchor === "end" ? x + thumb : x, y: 12, "text-anchor": anchor, "font-size": 11, fill: "#5b6475" }, svg, fmtSig(p.quantile));
  });
}

function drawDAxis(row) {
  clear(ui.dAxis);
  const W = ui.d.getBoundingClientRect().width || 480, thumb = 8, n = D.laws.d.length;
  const svg = s("svg", { width: W, height: 30 }, ui.dAxis);
  const pos = (i) => thumb + (i / (n - 1)) * (W - 2 * thumb);
  const posD = (d) => { // interpolate the (monotone) grid
    const g = D.laws.d;
    if (d <= g[0]) return pos(0);
    for (let i = 1; i < n; i++) if (g[i] >= d) return pos(i - 1 + Math.log(d / g[i - 1]) / Math.log(g[i] / g[i - 1]));
    return pos(n - 1);
  };
  for (const t of logTicks(D.laws.d[0], D.laws.d[n - 1], Math.floor(W / 40))) {
    s("line", { x1: posD(t), x2: posD(t), y1: 0, y2: 4, stroke: "#8a93a3" }, svg);
    s("text", { x: posD(t), y: 14, "text-anchor": "middle", "font-size": 10, fill: "#5b6475" }, svg, fmtSig(t));
  }
  const mark = (d, color, label, id) => {
    const x = posD(d);
    s("path", { d: `M${x} 17 l-5 8 h10 z`, fill: color, id }, svg);
    s("title", {}, s("rect", { x: x - 5, y: 17, width: 10, height: 8, fill: "transparent" }, svg), label);
  };
  mark(row.d_model, SOURCES.gaussian_exact.color, `d_model = ${row.d_model}`, "d-model-mark");
  if (row.d_fit) mark(row.d_fit, SOURCES.gaussian_fit.color, `fitted d = ${fmtSig(row.d_fit)}`, "d-fit-mark");
}

function w1(p, q, width) {  // Wasserstein-1 between two binned distributions on the same bins, in cosine units
  let a = 0, b = 0, sum = 0;
  for (let i = 0; i < p.length; i++) { a += (p[i] || 0) * width; b += (q[i] || 0) * width; sum += Math.abs(a - b); }
  return sum * width;
}

function drawHistogram() {
  const k = cur(), row = byKey.get(k), srcs = D.hists[k] || {};
  const edges = D.edges, centers = binCenters(edges), width = edges[1] - edges[0];
  const law = D.laws.density[state.d], dSel = D.laws.d[state.d];
  const data = srcs.data || [];
  let ymax = Math.max(...data.map((v) => v || 0), ...(srcs.gaussian_fit || [0]).map((v) => v || 0)) * 1.12 || 1;
  let ymin = 0;
  if (state.log) {
    const pos = data.filter((v) => v > 0);
    ymin = Math.max(Math.min(...pos) / 3, ymax * 1e-7);
    ymax *= 2.5;
  }
  clear(ui.hist);
  const f = frame(ui.hist, {
    width: 1130, height: 340, x: [-1, 1], y: [state.log ? ymin : 0, ymax], yLog: state.log,
    xLabel: "cosine similarity between two sampled token states", yLabel: state.log ? "density (log scale)" : "density (per unit cosine)",
    title: `layer ${row.layer} · ${row.site}${D.variants.length > 1 ? " · " + row.variant : ""}: ${fmtInt(row.n_sample)} states, ${fmtInt(row.n_pairs)} pairs`,
    margin: { left: 64, right: 18 },
  });
  f.svg.setAttribute("id", "hist-svg");
  Object.entries({ "data-ymin": state.log ? ymin : 0, "data-ymax": ymax, "data-ylog": state.log ? 1 : 0, "data-plot-top": f.top, "data-plot-height": f.height, "data-plot-left": f.left, "data-plot-width": f.width, "data-key": k })
    .forEach(([a, v]) => f.svg.setAttribute(a, v));
  const bars = s("g", { id: "data-bars" }, f.plot);
  const base = f.top + f.height;
  data.forEach((v, i) => {
    if (!(v > 0) || (state.log && v < ymin)) return;
    const y = f.y(v);
    s("rect", { class: "bin", "data-bin": i, x: f.x(edges[i]), y: y.toFixed(3), width: Math.max(0.5, f.x(edges[i + 1]) - f.x(edges[i])).toFixed(3), height: (base - y).toFixed(3), fill: SOURCES.data.color, "fill-opacity": 0.4, stroke: "none" }, bars);
  });
  s("path", { d: pathData(edges.flatMap((e, i) => (i + 1 < edges.length ? [e, edges[i + 1]] : [])), data.flatMap((v) => [v, v]), f.x, f.y, state.log), fill: "none", stroke: SOURCES.data.color, "stroke-width": 1 }, f.plot);
  const offScale = {};
  const curve = (name, values) => {
    const st = SOURCES[name];
    s("path", { "data-source": name, d: pathData(centers, values, f.x, f.y, state.log), fill: "none", stroke: st.color, "stroke-width": st.width, "stroke-dasharray": st.dash || null }, f.plot);
    const peak = Math.max(...values.map((v) => v || 0));
    if (peak > ymax) offScale[name] = peak;
  };
  curve("slider", law);
  for (const name of ["gaussian_empirical", "gaussian_exact", "gaussian_fit"]) if (srcs[name]) curve(name, srcs[name]);

  // The quantile's pair: a vertical marker at its cosine.
  const ex = (D.exemplars[k] || [])[state.qi];
  if (ex) {
    const x = f.x(ex.cos);
    s("line", { id: "q-marker", "data-cos": ex.cos, x1: x, x2: x, y1: f.top, y2: f.top + f.height, stroke: "#e67e00", "stroke-width": 2 }, f.svg);
    const right = x > f.left + f.width * 0.78;
    s("text", { id: "q-marker-label", x: x + (right ? -6 : 6), y: f.top + 14, "text-anchor": right ? "end" : "start", "font-size": 12, fill: "#a85a00" }, f.svg, `q = ${fmtSig(ex.quantile)}: cos ${ex.cos.toFixed(4)}`);
  }
  clear(ui.legend);
  for (const name of ["data", "gaussian_exact", "gaussian_fit", "gaussian_empirical", "slider"]) {
    if (name !== "data" && name !== "slider" && !srcs[name]) continue;
    let label = SOURCES[name].label;
    if (name === "gaussian_exact") label = `isotropic Gaussian, d = d_model = ${row.d_model}`;
    if (name === "gaussian_fit") label = `isotropic Gaussian, fitted d = ${fmtSig(row.d_fit)}`;
    if (name === "slider") label = `isotropic Gaussian, slider d = ${fmtSig(dSel)}`;
    if (offScale[name]) label += ` (peak ${fmtSig(offScale[name])}, off scale)`;
    legendKey(ui.legend, SOURCES[name], label);
  }
  legendKey(ui.legend, { color: "#e67e00", width: 2 }, "similarity at the chosen quantile");
  ui.stats.textContent = `mean cos ${fmt(row.cos_mean)} · std cos ${fmt(row.cos_std)} · fitted d ${fmtSig(row.d_fit)} of d_model ${row.d_model} · ` +
    `W1 to law at d_model ${fmt(row.w1_gaussian)} · W1 to law at fitted d ${fmt(row.w1_fit)} · mean norm ${fmt(row.norm_mean, 2)}` +
    (row.verdict ? ` · verdict: ${row.verdict}${dominanceNote(row)}` : "");
  ui.dOut.textContent = `d = ${fmtSig(dSel)} · W1(data, law at d) = ${fmt(w1(data, law, width), 4)}`;
  ui.dOut.setAttribute("data-d", dSel);
  ui.dOut.setAttribute("data-w1", w1(data, law, width));
  drawDAxis(row);
  drawQuantile();
}

function splitContext(text) {
  if (text.endsWith("<END>")) return [text.slice(0, -5), "<END>"];
  const i = text.lastIndexOf("[");
  return text.endsWith("]") && i >= 0 ? [text.slice(0, i), text.slice(i)] : [text, ""];
}

function drawQuantile() {
  const ex = (D.exemplars[cur()] || [])[state.qi];
  const marker = document.getElementById("q-marker");
  if (!ex) {
    ui.qOut.textContent = "no exemplar pairs in this run (exemplars.parquet missing)";
    for (const side of ["a", "b"]) { ui.ctx[side].textContent = ""; ui.ctx[side + "meta"].textContent = ""; }
    return;
  }
  const row = byKey.get(cur());
  ui.qOut.textContent = `q = ${fmtSig(ex.quantile)} → cos = ${ex.cos.toFixed(4)} (pair ${fmtInt(ex.rank + 1)} of ${fmtInt(row.n_pairs)} in ascending order)`;
  ui.qOut.setAttribute("data-quantile", ex.quantile);
  ui.qOut.setAttribute("data-cos", ex.cos);
  if (marker) {
    const svg = document.getElementById("hist-svg");
    const L = Number(svg.getAttribute("data-plot-left")), W = Number(svg.getAttribute("data-plot-width"));
    const x = L + ((ex.cos + 1) / 2) * W;
    marker.setAttribute("x1", x); marker.setAttribute("x2", x); marker.setAttribute("data-cos", ex.cos);
    const lab = document.getElementById("q-marker-label");
    const right = x > L + W * 0.78;
    lab.setAttribute("x", x + (right ? -6 : 6)); lab.setAttribute("text-anchor", right ? "end" : "start");
    lab.textContent = `q = ${fmtSig(ex.quantile)}: cos ${ex.cos.toFixed(4)}`;
  }
  for (const side of ["a", "b"]) {
    const t = ex[side];
    ui.ctx[side + "meta"].textContent = `token ${side === "a" ? "A" : "B"}: sample #${t.index} · document ${t.doc}, window ${t.window}, position ${t.pos} · token id ${t.token_id}`;
    const box = clear(ui.ctx[side]);
    const [before, next] = splitContext(t.text || "");
    h("span", { class: "ctx" }, box, before);
    if (next) h("span", { class: "next" }, box, next);
  }
}

function buildSummary(sec) {
  h("h2", {}, sec, "Summary by layer and site");
  h("p", { class: "muted" }, sec, "From summary.parquet. Click a row to open it in the explorer. W1 is the Wasserstein-1 distance in cosine units.");
  const present = new Set(D.summary_columns);
  const cols = COLS.filter(([c]) => present.has(c) && !(c === "variant" && D.variants.length < 2));
  for (const c of D.summary_columns) if (!HIDDEN.has(c) && !COLS.some(([k]) => k === c)) cols.push([c, c, c, (v) => (typeof v === "number" ? fmt(v, 3) : v)]);
  const wrap = h("div", { class: "tablewrap" }, sec);
  const t = h("table", { class: "summary", id: "summary-table" }, wrap);
  const hr = h("tr", {}, h("thead", {}, t));
  for (const [c, label, tip] of cols) h("th", { title: tip, class: c === "site" || c === "verdict" || c === "variant" ? "text" : null }, hr, label);
  const tb = h("tbody", {}, t);
  ui.rows = new Map();
  for (const r of [...D.summary].sort((a, b) => a.layer - b.layer || D.sites.indexOf(a.site) - D.sites.indexOf(b.site))) {
    const k = `${r.layer}|${r.site}|${r.variant}`;
    const tr = h("tr", { "data-key": k }, tb);
    for (const [c, , , f] of cols) h("td", { class: c === "site" || c === "verdict" || c === "variant" ? "text" : null, "data-col": c }, tr, r[c] === null || r[c] === undefined ? "–" : f(r[c]) + (c === "verdict" ? dominanceNote(r) : ""));
    tr.addEventListener("click", () => { select(r.layer, r.site, r.variant, true); document.getElementById("explore").scrollIntoView(); });
    ui.rows.set(k, tr);
  }
}

function markSelection() {
  for (const [k, tr] of ui.rows) tr.classList.toggle("selected", k === cur());
  drawCurves();
}

function buildRun(sec) {
  const id = D.identity;
  h("h2", {}, sec, "Run identity");
  const row = h("div", { class: "row" }, sec);
  const a = h("div", { class: "grow" }, row);
  h("h3", {}, a, "Identity");
  const m = id.model || {}, c = id.corpus || {}, sm = id.sample || {};
  facts(a, [
    ["status", id.status], ["config hash", id.config_hash], ["seed", id.seed],
    ["model", m.name], ["architecture", `${m.model_type}, ${m.n_layers} layers, d_model ${m.d_model}`],
    ["layers captured", (m.layers || []).join(", ")], ["sites", (m.sites || []).join(", ")],
    ["corpus", corpusLabel(id.corpus_config)],
    ["documents / sequences / tokens", `${fmtInt(c.documents)} / ${fmtInt(c.sequences)} / ${fmtInt(c.tokens)}`],
    ["sequence length", c.sequence_length], ["shards", c.shards],
    ["sample", `${fmtInt(sm.size)} states per layer and site (${fmtInt(sm.candidates)} candidates kept by the shards)`],
    ["started", id.started], ["finished", id.finished], ["command", id.command], ["directory", id.path],
  ]);
  const b = h("div", { class: "grow" }, row);
  h("h3", {}, b, "Timings (seconds)");
  facts(b, Object.entries(id.timings || {}).map(([k, v]) => [k, v < 10 ? v.toFixed(2) : v.toFixed(1)]));
  if (id.throughput && id.throughput.capture_tokens_per_s) facts(b, [["capture throughput", `${fmtInt(Math.round(id.throughput.capture_tokens_per_s))} tokens/s`]]);
  const chk = (id.checks || {}).gaussian_empirical_vs_exact;
  if (chk) facts(b, [["check: random normals vs exact law", `W1 ${fmt(chk.w1, 6)} over ${fmtInt(chk.n_pairs)} pairs at d = ${chk.d}`]]);
  const v = h("div", { class: "grow" }, row);
  h("h3", {}, v, "Versions");
  facts(v, Object.entries(id.versions || {}));
  const det = h("details", {}, sec);
  h("summary", {}, det, "Resolved configuration (config.yaml)");
  h("pre", {}, det, JSON.stringify(id.config, null, 2));
}

build();
