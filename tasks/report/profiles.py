"""Depth profiles: the per-site numbers against layer, as the papers on these states draw them (the mean cosine of
Ethayarajh 2019, the intrinsic dimension of Valeriani et al. 2023 and Cheng et al. 2025, the outlier dimensions'
kurtosis, the massive activations of Sun et al. 2024), with the bootstrap intervals as bands where the summary has
them.

One list of panels serves `plots/depth-profile.png`, the report page's view and the comparison page's overlay, so
the three show the same columns. A panel or curve whose column the summary lacks (an older run, or a statistic not
computed) is left out, so a column added to the summary later (e.g. `massive_ratio`) appears without more work.
All curves read the `raw` rows: the states as the model holds them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

PROFILE_VARIANT = "raw"


@dataclass(frozen=True)
class Curve:
    """One summary column drawn against layer; `low`/`high` name its interval columns (a band), `dash` a line
    style for the second curve of a panel."""

    column: str
    label: str
    low: str | None = None
    high: str | None = None
    dash: bool = False


@dataclass(frozen=True)
class Panel:
    """One chart of the profile: its title, y-axis label, log scale or not, and its curves."""

    key: str
    title: str
    y_label: str
    curves: tuple[Curve, ...]
    log: bool = False


PANELS = (
    Panel("cos", "Mean cosine similarity (anisotropy)", "mean cos", (
        Curve("cos_mean", "sample pairs", "cos_mean_ci_low", "cos_mean_ci_high"),
        Curve("cos_mean_all", "all pairs (every token)", dash=True),
    )),
    Panel("d_fit", "Fitted dimension of the cosine law", "d_fit", (Curve("d_fit", "d_fit"),), log=True),
    Panel("pr", "Participation ratio of the covariance", "PR", (Curve("pr_corrected", "participation ratio"),),
          log=True),
    Panel("id", "Intrinsic dimension (nearest neighbours)", "ID", (
        Curve("id_twonn", "TwoNN", "id_twonn_ci_low", "id_twonn_ci_high"),
        Curve("id_gride", "GRIDE", "id_gride_ci_low", "id_gride_ci_high", dash=True),
    )),
    Panel("kurtosis", "Largest per-coordinate excess kurtosis", "max kurtosis", (Curve("kurtosis_max", "max kurtosis"),),
          log=True),
    Panel("massive", "Massive activations: top |x| over median |x|", "ratio", (Curve("massive_ratio", "massive ratio"),),
          log=True),
)


def panels_for(columns) -> list[Panel]:
    """The panels and curves whose columns are in `columns` (a summary's column names); the interval of a curve
    only when both its ends are there."""
    have = set(columns)
    out = []
    for panel in PANELS:
        curves = tuple(
            c if (c.low in have and c.high in have) else Curve(c.column, c.label, dash=c.dash)
            for c in panel.curves if c.column in have
        )
        if curves:
            out.append(Panel(panel.key, panel.title, panel.y_label, curves, panel.log))
    return out


def panels_json(columns) -> list[dict]:
    """`panels_for` as JSON-ready dicts for the pages."""
    return [asdict(p) for p in panels_for(columns)]
