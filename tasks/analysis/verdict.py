"""A verdict per layer and site: the seed's by-eye judgements ("far from Gaussian", "closer to Gaussian but as if
lower-dimensional") made a documented rule over the measured numbers.

Inputs are the summary rows of one site: the `raw` row (states as they are) and the `centered` row (corpus mean
removed). With D the model width:

  near-gaussian            the raw cosines are close to the isotropic law at width D
                           (Wasserstein-1 `w1_gaussian` < 0.02 cosine units), and no coordinate has tails
                           heavier than a Laplace law's (excess kurtosis `kurtosis_max` <= 3 over every token;
                           every coordinate of any Gaussian has 0);
  gaussian-shaped-low-dim  not that, but the tails are as mild, and the centred states look like a Gaussian
                           with their own covariance:
                           E[cos^2] within 25 % of the exact prediction (0.8 <= `cos2_over_gaussian` <= 1.25) and
                           the centred histogram within KS 0.1 of the matched Gaussian's; the covariance, not the
                           distribution's shape, explains the histogram, and its effective dimension is low;
  non-gaussian             neither: heavy tails, clusters or varying norms that no Gaussian reproduces.

The thresholds are round numbers chosen to be far above the sampling noise of 2000 states (the synthetic tests
show isotropic and spiked Gaussians landing well inside, Student-t and mixtures well outside); they are
constants here so that a changed rule is a visible change.
"""

from __future__ import annotations

import math

NEAR_W1 = 0.02
KURTOSIS_MAX = 3.0
RATIO_LOW, RATIO_HIGH = 0.8, 1.25
KS_MATCHED = 0.1
VERDICTS = ("near-gaussian", "gaussian-shaped-low-dim", "non-gaussian")


def verdict(raw: dict, centered: dict | None) -> str | None:
    """The label of one site, or None when the statistics it needs are missing (`stats.enabled` false)."""
    kurtosis = raw.get("kurtosis_max")
    if kurtosis is None or centered is None or centered.get("cos2_over_gaussian") is None:
        return None
    if not (math.isfinite(kurtosis) and kurtosis <= KURTOSIS_MAX):
        return "non-gaussian"
    if raw.get("w1_gaussian") is not None and raw["w1_gaussian"] < NEAR_W1:
        return "near-gaussian"
    ratio, ks = centered["cos2_over_gaussian"], centered.get("ks_matched")
    if math.isfinite(ratio) and RATIO_LOW <= ratio <= RATIO_HIGH and ks is not None and ks <= KS_MATCHED:
        return "gaussian-shaped-low-dim"
    return "non-gaussian"


def verdict_confident(raw: dict, centered: dict | None) -> bool | None:
    """Whether the verdict holds across the 95 % intervals of the sampled numbers it reads: the same label at every
    combination of the interval ends of `w1_gaussian` (raw), `cos2_over_gaussian` and `ks_matched` (centred).
    False marks a site whose numbers sit within sampling error of a threshold, where another seed may give the
    other label (`kurtosis_max` comes from every token and has no sampling error). None, not confident, without the
    intervals: the bootstrap off, or an interval reported missing (from fewer than 20 documents, or with a NaN end:
    `tasks.analysis.site.drop_unsupported_intervals`), since nothing then supports confidence."""
    label = verdict(raw, centered)
    names = [("raw", "w1_gaussian"), ("centered", "cos2_over_gaussian"), ("centered", "ks_matched")]
    rows = {"raw": raw, "centered": centered}
    ends = []
    for row, name in names:
        low, high = rows[row].get(f"{name}_ci_low"), rows[row].get(f"{name}_ci_high")
        if label is None or low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            return None
        ends.append((row, name, (low, high)))
    for corner in range(2 ** len(ends)):
        shifted = {"raw": dict(raw), "centered": dict(centered)}
        for bit, (row, name, bounds) in enumerate(ends):
            shifted[row][name] = bounds[(corner >> bit) & 1]
        if verdict(shifted["raw"], shifted["centered"]) != label:
            return False
    return True
