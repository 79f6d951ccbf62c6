"""Stage 6, report: the Parquet tables, plots, `report.html` and the page of `gpt-stats compare`, drawn from the
run directory's files alone."""
