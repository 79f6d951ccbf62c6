"""Mergeable statistics of token states. Each follows `tasks.stats.base.Statistic` (add, merge, state, load), so
partials from any actors merge in any grouping to the one-pass result.

base          the `Statistic` protocol, counts on a device, arrays in and out of states, symmetric packing,
              `FieldStatistic` (the plumbing of the moment-like statistics)
reductions    row norms, unit rows, and the fused O(n d) pass over a batch in cache-sized blocks
moments       `Moments`: per-coordinate mean, M2, M3, M4 (Pébay 2008)
second_order  `Covariance` (Chan et al. 1979), `UnitSums`, `UnitSecondMoment`: the all-pairs cosine moments
norms         `NormHistogram`: log-binned norm counts and the norms' moments
massive       `TopAbs` (the largest |x| entries with their tokens) and `AbsHistogram` (exact |x| counts): massive
              activations (Sun et al. 2024)
site          `SiteStatistics`: all of the above for one (layer, site); `stack_states` / `unstack_states`
bottom_k      `BottomKSample`: the uniform token sample, bottom-k by hash (Cohen & Kaplan 2007)
"""
