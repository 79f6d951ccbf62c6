// gpt-stats report.html: curves against layer for the selected variant (layer-wise curves: click a point to open
// it in the explorer) and the depth profiles of the raw states, with their intervals as bands
// (`tasks.report.profiles`, as in plots/depth-profile.png).
"use strict";

function layerTicks() {
  const n = D.layers.length, lo = D.layers[0], hi = D.layers[n - 1];
  const step = Math.max(1, Math.ceil(niceStep(hi - lo || 1, 8)));
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi; t += step) out.push(t);
  return out;
}

function buildCurves(sec) {
  h("h2", {}, sec, "Layer-wise curves");
  h("p", { class: "muted" }, sec, "One line per site; click a point to open that layer and site in the explorer. The ringed points are the current selection.");
  const leg = h("div", { class: "legend" }, sec);
  for (const site of D.sites) legendKey(leg, { color: SITE_COLORS[site] || "#555" }, site);
  ui.charts = h("div", { class: "charts", id: "charts" }, sec);
}

function drawCurves() {
  clear(ui.charts);
  const rows = D.summary.filter((r) => r.variant === state.variant);
  const metric = (col, o) => {
    const div = h("div", {}, ui.charts);
    const series = D.sites.map((site) => ({
      label: site, color: SITE_COLORS[site] || "#555",
      values: rows.filter((r) => r.site === site).sort((a, b) => a.layer - b.layer).map((r) => ({ x: r.layer, y: r[col], id: `${r.layer}|${r.site}` })),
    }));
    lineChart(div, series, Object.assign({
      xLabel: "layer", xTicks: layerTicks(), xFormat: (v) => String(v),
      selected: (p) => p.id === `${state.layer}|${state.site}`,
      onClick: (p) => { const [l, st] = p.id.split("|"); select(Number(l), st, state.variant, true); document.getElementById("explore").scrollIntoView(); },
    }, o));
  };
  const widths = [...new Set(rows.map((r) => r.d_model))];
  metric("cos_mean", { title: "Mean cosine similarity", yLabel: "mean cos" });
  metric("cos_std", { title: "Spread of cosine similarity", yLabel: "std of cos", yZero: true });
  metric("d_fit", { title: "Fitted dimension (log scale)", yLabel: "fitted d", yLog: true, refs: widths.map((w) => ({ y: w, label: `d_model ${w}` })) });
  metric("w1_gaussian", { title: "Distance to the law at d_model", yLabel: "W1 (cosine units)", yZero: true });
  metric("w1_fit", { title: "Distance to the law at fitted d", yLabel: "W1 (cosine units)", yZero: true });
  metric("norm_mean", { title: "Mean norm of the states", yLabel: "mean ‖x‖", yZero: true });
}

function buildProfiles(sec) {
  h("h2", {}, sec, "Depth profiles");
  profileNote(sec, "layer, one colour per site (as in plots/depth-profile.png)");
  const leg = h("div", { class: "legend" }, sec);
  for (const site of D.sites) legendKey(leg, { color: SITE_COLORS[site] || "#555" }, site);
  const charts = h("div", { class: "charts", id: "profile-charts" }, sec);
  const raw = D.summary.filter((r) => r.variant === "raw");
  for (const panel of D.profiles) {
    const series = D.sites.flatMap((site) => {
      const points = raw.filter((r) => r.site === site).sort((a, b) => a.layer - b.layer).map((r) => ({ x: r.layer, id: `${r.layer}|${site}`, r }));
      return panel.curves.map((c) => profileSeries(points, c, site, site, SITE_COLORS[site] || "#555"));
    });
    profileChart(h("div", {}, charts), panel, series, { xLabel: "layer", xTicks: layerTicks(), xFormat: (v) => String(v) });
  }
}

