"""Stages 4 and 5, per site: the cosine-similarity histogram over every pair of sampled states (in tiles), the
Gaussian baselines and distances to them, dimension and tail measures, and the verdict."""
