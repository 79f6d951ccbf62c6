"""Self-contained HTML pages: `report.html` for one run and the page of `gpt-stats compare`.

A page is the template `assets/page.html` with the stylesheet and scripts inlined and the data embedded
as JSON in a `<script type="application/json">` element. Nothing is fetched: no CDN, no fonts, no images; the
Content-Security-Policy allows only the page's own inline script (by its SHA-256) and forbids every request, so
a page opened from disk, mailed, or put in a paper's supplement shows the same thing anywhere, offline.

The JSON is escaped so that text from the corpus can never end the script element (`<`, `>` and `&` become
`\\u003c`, `\\u003e`, `\\u0026`), and the scripts put every piece of text into the page with `textContent`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
import re
from pathlib import Path

from tasks.storage import RunStore

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
SCRIPTS = {"report": ("common.js", "massive.js", "curves.js", "report.js"), "compare": ("common.js", "compare.js")}
_PLACEHOLDER = re.compile(r"\{\{([A-Z]+)\}\}")


def json_safe(value):
    """`value` with every non-finite float (which JSON cannot hold) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def embed_json(data) -> str:
    """JSON for a `<script type="application/json">` element: no `<`, `>` or `&` survives, so no text inside
    can close the element or open a comment; JSON.parse reads the escapes back as the original characters."""
    text = json.dumps(json_safe(data), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src 'none'; "
        "connect-src 'none'; font-src 'none'; base-uri 'none'; form-action 'none'"
    )


def render(kind: str, title: str, data: dict) -> str:
    """The whole page for `kind` ('report' or 'compare') as one HTML string."""
    script = "\n".join((ASSETS / name).read_text() for name in SCRIPTS[kind])
    if "</script" in script.lower():
        raise ValueError("a page script must not contain '</script'")
    inline = f"\n{script}\n"  # exactly the text between <script> and </script> in the template, for the CSP hash
    values = {
        "CSP": _csp(inline),
        "TITLE": html.escape(title),
        "KIND": kind,
        "STYLE": (ASSETS / "style.css").read_text(),
        "DATA": embed_json(data),
        "SCRIPT": script,
    }
    # One pass, so that text inside the data can never be taken for a placeholder.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], (ASSETS / "page.html").read_text())


def write_report(run_dir: str | Path | RunStore) -> str:
    """Write `RUN_DIR/report.html` from the run directory's Parquet files and manifest; returns its path."""
    from tasks.report.data import run_data

    store = run_dir if isinstance(run_dir, RunStore) else RunStore(str(run_dir))
    data = run_data(store)
    model = data["identity"].get("model", {}).get("name") or "?"
    page = render("report", f"gpt-stats report: {model} ({store.name})", data)
    store.write_text("report.html", page)
    log.info("wrote %s (%.0f kB)", store.path("report.html"), len(page.encode()) / 1024)
    return store.path("report.html")


def write_compare(run_dirs, out: str | Path) -> Path:
    """Write the comparison page of several runs to `out`; refuses runs that cannot be aligned (UserError)."""
    from tasks.report.compare import compare_data

    data = compare_data(run_dirs)
    title = "gpt-stats comparison: " + " vs ".join(r["dir"] for r in data["runs"])
    page = render("compare", title, data)
    out = Path(out).resolve()
    RunStore(str(out.parent)).write_text(out.name, page)
    log.info("wrote %s (%.0f kB)", out, len(page.encode()) / 1024)
    return out
