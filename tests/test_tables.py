"""The summary schema's columns and where they come from: every column in exactly one source group, so that a row
built from a site's result fills each column once."""

from tasks.tables import (
    CORPUS_COLUMNS,
    RAW_ONLY,
    RUN_COLUMNS,
    SUMMARY_SCHEMA,
    VARIANT_COLUMNS,
    VERDICT_COLUMNS,
)


def test_every_summary_column_has_exactly_one_source():
    groups = (RUN_COLUMNS, VERDICT_COLUMNS, CORPUS_COLUMNS, VARIANT_COLUMNS)
    listed = [name for group in groups for name in group]
    assert sorted(listed) == sorted(SUMMARY_SCHEMA.names)
    assert len(listed) == len(set(listed))
    assert set(RAW_ONLY) <= set(CORPUS_COLUMNS)
