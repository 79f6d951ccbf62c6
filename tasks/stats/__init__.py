"""Streaming statistics of token states over every token: each follows `tasks.stats.base.Statistic` (add, merge,
state, load), so partials from any actors merge in any grouping to the one-pass result."""
