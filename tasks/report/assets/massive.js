// gpt-stats report.html: the massive activations of the selected layer and site (massive.parquet): the largest |x|
// entries over every token, each with its coordinate, its token in context, and whether it meets Sun et al.'s
// criterion (|x| > 100 and >= 1000 x the median |x|).
"use strict";

const MASSIVE_COLS = [
  ["rank", "#", "rank by |x| (ties by document, window, position, coordinate)"],
  ["value", "value", "the signed activation"],
  ["coord", "coordinate", "the coordinate (dimension) it sits on"],
  ["over_median", "× median", "|x| over the site's median |x|"],
  ["massive", "massive", "meets Sun et al.'s criterion"],
  ["token", "token", "the token, decoded alone"],
  ["where", "document · window · position", "where the token is in the corpus"],
  ["text", "context", "the ten tokens ending at it, then the next token in brackets"],
];

function buildMassive(sec) {
  h("h2", {}, sec, "Largest activations");
  h("p", { class: "muted" }, sec, "The largest |x| entries of the selected layer and site over every token of the corpus, " +
    "excluded tokens included (marked ✕), from massive.parquet. Massive: |x| > 100 and at least 1000 times the median |x| " +
    "(Sun et al. 2024).");
  ui.massiveFacts = h("p", { id: "massive-facts" }, sec);
  const wrap = h("div", { class: "tablewrap" }, sec);
  const t = h("table", { class: "full", id: "massive-table" }, wrap);
  const hr = h("tr", {}, h("thead", {}, t));
  for (const [c, label, tip] of MASSIVE_COLS) h("th", { title: tip, class: c === "token" || c === "text" ? "text" : null }, hr, label);
  ui.massiveBody = h("tbody", {}, t);
}

function drawMassive() {
  const body = clear(ui.massiveBody);
  const entries = (D.massive || {})[`${state.layer}|${state.site}`] || [];
  const raw = byKey.get(`${state.layer}|${state.site}|raw`) || {};
  ui.massiveFacts.textContent = entries.length
    ? `max |x| ${fmtSig(raw.abs_max)} · median |x| ${fmtSig(raw.abs_median)} · ratio ${fmtSig(raw.massive_ratio)} · ` +
      `massive coordinates: ${raw.massive_dims || "none"}`
    : "no massive.parquet entries for this site (statistics off, or a run from before they were kept)";
  for (const e of entries) {
    const tr = h("tr", { "data-rank": e.rank, "data-value": e.value, "data-coord": e.coord, "data-doc": e.doc,
      "data-window": e.window, "data-pos": e.pos, "data-token-id": e.token_id, class: e.massive ? "massive" : null }, body);
    h("td", { "data-col": "rank" }, tr, String(e.rank + 1));
    h("td", { "data-col": "value" }, tr, fmtSig(e.value));
    h("td", { "data-col": "coord" }, tr, String(e.coord));
    h("td", { "data-col": "over_median" }, tr, fmtSig(e.over_median));
    h("td", { "data-col": "massive" }, tr, e.massive ? "yes" : "no");
    const tok = h("td", { class: "text", "data-col": "token" }, tr);
    h("span", { class: "token" }, tok, e.token === null ? "?" : e.token);
    if (e.excluded) h("span", { class: "muted", title: "kept out of the other statistics by capture.exclude" }, tok, " ✕");
    h("td", { "data-col": "where" }, tr, `${e.doc} · ${e.window} · ${e.pos}`);
    h("td", { class: "text wrap context-cell", "data-col": "text" }, tr, e.text === null ? "" : e.text);
  }
}
