"""Stage 3, merge: tree reductions of the shard samples and the statistics partials, split into one part per
site."""
