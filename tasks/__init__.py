"""gpt-stats tasks: the computations of each stage, as plain functions and classes that the driver
(`workflows/driver.py`) runs as Ray actors and tasks. One subpackage per stage, in the order data flows:

    corpus/    documents -> token ids -> shards of model-sized sequences
    capture/   model replicas (actors) hook every (layer, site), keep a bottom-k sample and feed the statistics
    stats/     streaming statistics over every token, mergeable in any grouping
    merge/     tree reductions of the shard samples and statistics partials, split per site
    analysis/  per site: cosine histograms in tiles, Gaussian baselines, distances, dimension, tails, verdict
    report/    Parquet tables, plots, report.html and the comparison page

Shared by every stage: `sites` (site names and keys), `storage` (the run directory) and `errors`.
"""
