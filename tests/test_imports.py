"""Imports follow the data flow: a stage's modules import only from the stages before it, from their own stage,
and from the shared ground (the top-level modules of `tasks`, the statistics library `tasks.stats` and the
checkpoint loading of `tasks.checkpoint`), which imports no stage. Every import statement counts, those inside
functions too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("corpus", "capture", "merge", "analysis", "report")  # in the order the data flows
SHARED = ("stats", "checkpoint")


def _rank(module: str) -> int | None:
    """The stage's position in the flow for a `tasks.STAGE...` module; -1 for the shared ground; None otherwise."""
    parts = module.split(".")
    if parts[0] != "tasks":
        return None
    if len(parts) > 1 and parts[1] in STAGES:
        return STAGES.index(parts[1])
    return -1


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from tasks import capture` names a stage as a member
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names if node.module == "tasks"]
    return found


def test_no_stage_imports_from_a_later_stage():
    modules = sorted((ROOT / "tasks").rglob("*.py"))
    assert len(modules) > 40  # the walk found the package
    backward = []
    for path in modules:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = _rank(module)
        for line, imported in _imports(path):
            rank = _rank(imported)
            if rank is not None and rank > own:
                backward.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert not backward, "imports against the flow:\n" + "\n".join(backward)


def test_the_walk_sees_a_backward_import(tmp_path):
    """The check itself: an import of the report stage from a function body of a corpus module is found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tasks.report.page import write_page\n", encoding="utf-8")
    assert _imports(module) == [(2, "tasks.report.page")]
    assert _rank("tasks.report.page") > _rank("tasks.corpus.stream") > _rank("tasks.stats.base")
