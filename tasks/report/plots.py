"""Report plots, drawn from the run's Parquet files alone (so `gpt-stats report RUN_DIR` can redraw them).

Stage 6 of the data flow. One PNG per (layer, site): the data histogram against the three Gaussian baselines;
`overview.png`, a grid of all layers (rows) and sites (columns) on the same axes; `verdicts.png`; and
`depth-profile.png`, the main numbers of every site against layer (`tasks.report.profiles`).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tasks.report.data import read_table  # noqa: E402
from tasks.report.profiles import PROFILE_VARIANT, panels_for  # noqa: E402
from tasks.sites import site_key, site_order  # noqa: E402
from tasks.storage import RunStore  # noqa: E402

log = logging.getLogger(__name__)

PLOT_WORKERS = 8  # most processes drawing the per-site plots
MIN_PLOTS_PER_WORKER = 12  # a spawned process pays for its imports: only worth it for this many plots

STYLE = {
    "data": dict(color="C0", label="data (sampled states)"),
    "gaussian_exact": dict(color="C3", lw=1.2, label="isotropic Gaussian, d = model width"),
    "gaussian_fit": dict(color="C2", lw=1.5, ls="--", label="isotropic Gaussian, fitted d"),
    "gaussian_empirical": dict(color="0.3", lw=0.8, ls=":", label="random normal vectors (check)"),
    "gaussian_matched": dict(color="C1", lw=1.3, ls="-.", label="Gaussian with the site's mean and covariance"),
}
VERDICT_COLORS = {"near-gaussian": "#4c9a2a", "gaussian-shaped-low-dim": "#e0a030", "non-gaussian": "#c0392b"}


def _histograms(store: RunStore) -> dict[tuple[int, str, str], dict[str, dict[str, np.ndarray]]]:
    table = read_table(store, "histograms.parquet").to_pydict()
    out: dict = {}
    for i in range(len(table["layer"])):
        key = (table["layer"][i], table["site"][i], table["variant"][i])
        src = out.setdefault(key, {}).setdefault(table["source"][i], {"left": [], "right": [], "density": []})
        src["left"].append(table["bin_left"][i])
        src["right"].append(table["bin_right"][i])
        src["density"].append(table["density"][i])
    return {k: {s: {c: np.asarray(v) for c, v in cols.items()} for s, cols in srcs.items()} for k, srcs in out.items()}


def _summary(store: RunStore) -> dict[tuple[int, str, str], dict]:
    rows = read_table(store, "summary.parquet").to_pylist()
    return {(r["layer"], r["site"], r["variant"]): r for r in rows}


def _draw(ax, sources: dict, legend: bool, labels: dict[str, str] | None = None) -> None:
    """Data histogram (filled steps) and the baselines on one axis; curves far above the data are clipped, and
    the legend (with `labels` overriding the default ones) says where they peak."""
    data = sources["data"]
    centers = (data["left"] + data["right"]) / 2
    ax.fill_between(centers, data["density"], step="mid", alpha=0.35, color=STYLE["data"]["color"])
    ax.step(centers, data["density"], where="mid", color=STYLE["data"]["color"], lw=0.8, label=STYLE["data"]["label"])
    top = max(data["density"].max(), sources.get("gaussian_fit", data)["density"].max())
    for name in ("gaussian_empirical", "gaussian_exact", "gaussian_fit", "gaussian_matched"):
        if name not in sources:
            continue
        style = dict(STYLE[name])
        style["label"] = (labels or {}).get(name, style["label"])
        peak = sources[name]["density"].max()
        if peak > 1.15 * top:
            style["label"] += f" (peak {peak:.3g}, off scale)"
        ax.plot(centers, sources[name]["density"], **style)
    ax.set_xlim(-1, 1)
    ax.set_ylim(0, 1.15 * top if top > 0 else 1)
    if legend:
        ax.legend(fontsize=7, loc="upper left", frameon=True, framealpha=0.9, facecolor="white", edgecolor="none")


def _png(fig, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _percent(share: float | None) -> str:
    return "–" if share is None or not np.isfinite(share) else f"{100 * share:.0f} %"


def plot_site(sources: dict, row: dict) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    labels = {
        "gaussian_exact": f"isotropic Gaussian, d = d_model = {row['d_model']}",
        "gaussian_fit": f"isotropic Gaussian, fitted d = {row['d_fit']:.3g}",
    }
    _draw(ax, sources, legend=True, labels=labels)
    ax.set_xlabel("cosine similarity between two sampled token states")
    ax.set_ylabel("density (per unit cosine)")
    title = (f"layer {row['layer']} {row['site']} ({row['variant']}): {row['n_sample']:,} states, {row['n_pairs']:,} pairs; "
             f"mean cos {row['cos_mean']:.3f}, d_model {row['d_model']}, fitted d {row['d_fit']:.3g}")
    note = row.get("top_coord_dominates")  # the rule of tasks/analysis/coordinates.py, as beside the page's verdict
    if note:
        title += (f"\ncoordinate {row['top_coord']} dominates: {_percent(row.get('top_coord_cos_share'))} of the mean "
                  f"cosine, {_percent(row.get('top_coord_var_share'))} of the variance")
    ax.set_title(title, fontsize=9)
    # Fixed margins, not tight_layout: every site plot has the same size and text, and measuring the text costs
    # a second rendering (a third of the plot's time; three plots per site). A second title line takes 0.06.
    fig.subplots_adjust(left=0.075, right=0.975, bottom=0.15, top=0.84 if note else 0.9)
    return _png(fig, 110)


def plot_overview(hists: dict, summary: dict, variant: str = "raw") -> bytes:
    layers = sorted({k[0] for k in hists if k[2] == variant})
    sites = site_order(k[1] for k in hists)
    fig, axes = plt.subplots(len(layers), len(sites), figsize=(3.2 * len(sites), 1.3 * len(layers) + 0.8), squeeze=False, sharex=True)
    for r, layer in enumerate(layers):
        for c, site in enumerate(sites):
            ax = axes[r][c]
            key = (layer, site, variant)
            if key not in hists:
                ax.axis("off")
                continue
            _draw(ax, hists[key], legend=False)
            ax.set_yticks([])
            ax.set_xticks([-1, -0.5, 0, 0.5, 1], ["−1", "−0.5", "0", "0.5", "1"], fontsize=7)
            ax.text(0.02, 0.9, f"{site_key(layer, site)}  d_fit {summary[key]['d_fit']:.3g}", transform=ax.transAxes, fontsize=7,
                    va="top", bbox=dict(facecolor="white", edgecolor="none", alpha=0.75, pad=1))
            if r == 0:
                ax.set_title(site, fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("cosine similarity", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, [lab.split(" (peak")[0] for lab in labels], loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.supylabel("density (each panel on its own scale; curves clipped at 1.15 x the data's peak)", fontsize=7)
    fig.tight_layout(rect=(0, 0.6 / (1.3 * len(layers) + 0.8), 1, 1))
    return _png(fig, 90)


def plot_verdicts(summary: dict) -> bytes:
    """Layers (x) by sites (y), each cell coloured by its verdict (`tasks/analysis/verdict.py`), with the centred
    E[cos^2] / Gaussian ratio written in it."""
    from matplotlib.patches import Patch

    raw = {(k[0], k[1]): r for k, r in summary.items() if k[2] == "raw"}
    cen = {(k[0], k[1]): r for k, r in summary.items() if k[2] == "centered"}
    layers = sorted({k[0] for k in raw})
    sites = site_order(k[1] for k in raw)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(layers) + 2.5), 0.6 * len(sites) + 1.6))
    for y, site in enumerate(sites):
        for x, layer in enumerate(layers):
            r = raw.get((layer, site))
            color = VERDICT_COLORS.get(r and r.get("verdict"), "0.85")
            ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, color=color, ec="white"))
            ratio = (cen.get((layer, site)) or {}).get("cos2_over_gaussian")
            if ratio is not None and len(layers) <= 24:
                ax.text(x, y, f"{ratio:.2g}", ha="center", va="center", fontsize=7, color="white")
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_ylim(-0.5, len(sites) - 0.5)
    step = max(1, len(layers) // 12)
    ax.set_xticks(range(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)])
    ax.set_yticks(range(len(sites)), sites)
    ax.set_xlabel("layer")
    ax.set_title("verdict per site (numbers: centred E[cos²] / Gaussian prediction)", fontsize=9)
    ax.legend(handles=[Patch(color=c, label=v) for v, c in VERDICT_COLORS.items()], fontsize=7, ncol=3,
              loc="upper center", bbox_to_anchor=(0.5, -0.35), frameon=False)
    fig.tight_layout()
    return _png(fig, 110)


SITE_COLORS = {"resid_post": "#1f77b4", "attn_out": "#d62728", "mlp_out": "#2ca02c"}  # as on the report page


def plot_depth_profile(summary: dict, columns) -> bytes | None:
    """One panel per profile quantity (`tasks.report.profiles.panels_for` the summary's `columns`), one colour per
    site, the raw rows against layer, a panel's second curve dashed, intervals as shaded bands. None when no
    panel's column is in the summary."""
    panels = panels_for(columns)
    rows = [r for k, r in summary.items() if k[2] == PROFILE_VARIANT]
    if not panels or not rows:
        return None
    sites = site_order(r["site"] for r in rows)
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.1 * nrows + 0.5), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for i, site in enumerate(sites):
            mine = sorted((r for r in rows if r["site"] == site), key=lambda r: r["layer"])
            x = np.array([r["layer"] for r in mine], dtype=float)
            color = SITE_COLORS.get(site, f"C{i + 3}")
            for curve in panel.curves:
                y = np.array([np.nan if r.get(curve.column) is None else r[curve.column] for r in mine], dtype=float)
                if panel.log:
                    y[y <= 0] = np.nan
                ax.plot(x, y, color=color, lw=1.5, ls="--" if curve.dash else "-", marker="o", ms=2.5)
                if curve.low:
                    lo = np.array([np.nan if r.get(curve.low) is None else r[curve.low] for r in mine], dtype=float)
                    hi = np.array([np.nan if r.get(curve.high) is None else r[curve.high] for r in mine], dtype=float)
                    ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
        if panel.log:
            ax.set_yscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            lo, hi = ax.get_ylim()
            ax.yaxis.set_major_formatter(plain)  # minor ticks labelled only within a decade, where no major is
            ax.yaxis.set_minor_formatter(plain if hi < 10 * lo else matplotlib.ticker.NullFormatter())
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(panel.title, fontsize=9)
        ax.set_ylabel(panel.y_label, fontsize=8)
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(panel.curves) > 1:
            ax.text(0.01, 0.98, "solid: " + panel.curves[0].label + "; dashed: " + panel.curves[1].label,
                    transform=ax.transAxes, fontsize=6.5, va="top")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=SITE_COLORS.get(site, f"C{i + 3}"), lw=2) for i, site in enumerate(sites)]
    fig.legend(handles, sites, loc="lower center", ncol=len(sites), fontsize=8, frameon=False)
    fig.suptitle("Depth profiles (raw states; bands: 95 % document-bootstrap intervals)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return _png(fig, 100)


def _site_png(job: tuple[str, dict, dict]) -> tuple[str, bytes]:
    rel, sources, row = job
    return rel, plot_site(sources, row)


def draw_plots(run_dir: str | RunStore, workers: int | None = None) -> list[str]:
    """(Re)draw every plot of a run directory from its Parquet files; returns the files written (relative).

    The per-site plots (three per site: 432 for GPT-2-XL) are drawn by `workers` processes
    (default: the CPUs, at most PLOT_WORKERS and one per MIN_PLOTS_PER_WORKER plots; 1 draws them here), started
    with `spawn`, since the driver holds threads (torch, Ray) that a forked child must not inherit. The files are
    the same bytes either way."""
    store = run_dir if isinstance(run_dir, RunStore) else RunStore(str(run_dir))
    hists, summary = _histograms(store), _summary(store)
    store.delete("plots")
    jobs = [(f"plots/{site_key(layer, site)}-{variant}.png", sources, summary[(layer, site, variant)])
            for (layer, site, variant), sources in sorted(hists.items())]
    if workers is None:
        workers = min(os.cpu_count() or 1, PLOT_WORKERS, max(len(jobs) // MIN_PLOTS_PER_WORKER, 1))
    workers = max(1, min(workers, len(jobs)))
    if workers > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            drawn = list(pool.map(_site_png, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        drawn = [_site_png(job) for job in jobs]
    for rel, png in drawn:
        store.write_bytes(rel, png)
    written = [rel for rel, _ in drawn]
    store.write_bytes("plots/overview.png", plot_overview(hists, summary))
    written.append("plots/overview.png")
    profile = plot_depth_profile(summary, next(iter(summary.values())).keys())  # a row holds every column
    if profile is not None:
        store.write_bytes("plots/depth-profile.png", profile)
        written.append("plots/depth-profile.png")
    if any(r.get("verdict") for r in summary.values()):
        store.write_bytes("plots/verdicts.png", plot_verdicts(summary))
        written.append("plots/verdicts.png")
    log.info("wrote %d plots to %s (%d process%s)", len(written), store.path("plots"), workers,
             "es" if workers > 1 else "")
    return written
