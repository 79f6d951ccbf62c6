"""report.html and the comparison page in a real browser (Debian's Chromium, headless, driven by Playwright).

The run behind the pages is a tiny workflow over a corpus whose every other document carries markup
(`<script>alert(1)</script>`, `<img src=x onerror=alert(1)>`), so the exemplar contexts carry it too. The page
must load from disk with no console error and no request beyond its own file, show exactly the numbers of the
Parquet files when the selectors and sliders move, and show the markup as text without running anything.
Screenshots go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.analysis.baselines import law_probabilities
from tasks.report.profiles import panels_for
from tests.conftest import PROSE
from tests.next_token_truth import score_windows
from workflows.cli import main as cli_main
from workflows.config import config_from_dict
from workflows.driver import run

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
PAYLOAD = "Entry {i}: <script>alert(1)</script> then <img src=x onerror=alert(1)> & more."
PROMPTS = ["The history of the", "<script>alert(1)</script> is"]
BINS = 60


def _config(model: Path, corpus: Path, out: Path, *overrides: str):
    data = {
        "model": {"name": str(model), "dtype": "float32"},
        "corpus": {"source": "files", "files": [str(corpus)], "max_docs": 300, "shard_tokens": 3000},
        "capture": {"layers": "all", "batch_tokens": 1024},
        "sample": {"size": 300},
        "similarity": {"bins": BINS, "tile": 128},
        "report": {"prompts": PROMPTS, "top_k": 5},
        "run": {"seed": 1, "out": str(out)},
    }
    return config_from_dict(data, list(overrides))


@pytest.fixture(scope="module")
def markup_corpus(prose, tmp_path_factory) -> Path:
    """Lines of the tests' text interleaved with lines of HTML markup."""
    lines = [ln for ln in prose.read_text().splitlines() if ln.strip()][:150]
    mixed = [x for i, ln in enumerate(lines) for x in (ln, PAYLOAD.format(i=i))]
    path = tmp_path_factory.mktemp("corpus") / "markup.txt"
    path.write_text("\n".join(mixed) + "\n")
    return path


@pytest.fixture(scope="module")
def run_a(ray_cluster, tiny_gpt2, markup_corpus, tmp_path_factory) -> Path:
    return run(_config(tiny_gpt2, markup_corpus, tmp_path_factory.mktemp("runs") / "a"))


@pytest.fixture(scope="module")
def run_b(tiny_run) -> Path:
    """The run compared with run_a: the session's tiny run (another corpus, statistics flushed per shard; the same
    model, layers, sites and bins), whose tables no test changes."""
    return tiny_run


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing (.ci/run installs Debian's chromium package)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no browser driver: the playwright package is missing (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


class Opened:
    """A page opened from disk, with everything it logged, requested or tried to pop up."""

    def __init__(self, browser, path: Path):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.console, self.errors, self.requests, self.dialogs = [], [], [], []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("#hist-svg")

    def assert_clean(self) -> None:
        assert self.errors == [] and self.dialogs == []
        assert [c for c in self.console if c[0] in ("error", "warning")] == []
        assert self.requests == [self.url], "the page requested something beyond its own file"

    def attr(self, selector: str, name: str) -> str:
        return self.page.get_attribute(selector, name)

    def text(self, selector: str) -> str:
        return self.page.text_content(selector)

    def frame(self) -> dict:
        keys = ("data-ymax", "data-plot-top", "data-plot-height", "data-plot-left", "data-plot-width")
        return {k[5:]: float(self.attr("#hist-svg", k)) for k in keys}

    def bars(self) -> dict[int, float]:
        """Densities shown by the data bars, read back from their geometry."""
        f = self.frame()
        rects = self.page.eval_on_selector_all(
            "#hist-svg rect.bin", "els => els.map(e => [Number(e.dataset.bin), Number(e.getAttribute('height'))])")
        return {b: hgt / f["plot-height"] * f["ymax"] for b, hgt in rects}

    def curve(self, selector: str) -> tuple[np.ndarray, np.ndarray]:
        """(x in cosine units, density) of an SVG path, read back from its coordinates."""
        f = self.frame()
        nums = np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", self.attr(selector, "d"))]).reshape(-1, 2)
        x = (nums[:, 0] - f["plot-left"]) / f["plot-width"] * 2 - 1
        y = (f["plot-top"] + f["plot-height"] - nums[:, 1]) / f["plot-height"] * f["ymax"]
        return x, y

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        return path


def _parquet(run_dir: Path, name: str):
    """A table of the run; for tables with variants, the raw states' rows (what the page opens on)."""
    df = pq.read_table(run_dir / name).to_pandas()
    return df[df.variant == "raw"] if "variant" in df.columns else df


def _density(hist, layer, site, source) -> np.ndarray:
    h = hist[(hist.layer == layer) & (hist.site == site) & (hist.source == source)].sort_values("bin_left")
    return h.density.to_numpy()


def _chart_values(page: Opened, svg: str, path: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(x, y, tolerance) of a line chart's SVG path, read back from its coordinates through the axis ranges the
    chart carries (`lineChart` in common.js). Coordinates are written to 0.01 px of a ~160 px plot: the tolerance,
    2e-4 of the y range, is in y's units (on a log axis, in log y)."""
    a = {k: float(page.attr(svg, f"data-{k}")) for k in ("x0", "x1", "y0", "y1", "ylog", "plot-left", "plot-top",
                                                          "plot-width", "plot-height")}
    nums = np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", page.attr(f"{svg} {path}", "d"))]).reshape(-1, 2)
    x = a["x0"] + (nums[:, 0] - a["plot-left"]) / a["plot-width"] * (a["x1"] - a["x0"])
    frac = (a["plot-top"] + a["plot-height"] - nums[:, 1]) / a["plot-height"]
    if a["ylog"]:
        return x, np.exp(np.log(a["y0"]) + frac * np.log(a["y1"] / a["y0"])), 2e-4 * np.log(a["y1"] / a["y0"])
    return x, a["y0"] + frac * (a["y1"] - a["y0"]), 2e-4 * (a["y1"] - a["y0"])


def _check_profiles(page: Opened, summary, series: str, columns) -> int:
    """Every depth-profile curve and band of one series (a site, or a run on the comparison page) against its
    summary rows (`summary`: one site's raw rows); returns the number of curves checked."""
    checked = 0
    for panel in panels_for(columns):
        svg = f'#profile-charts svg[data-panel="{panel.key}"]'
        for c in panel.curves:
            rows = summary[["layer", c.column]].dropna().sort_values("layer")
            rows = rows[rows[c.column] > 0] if panel.log else rows
            x, y, tol = _chart_values(page, svg, f'path.line[data-series="{series}"][data-col="{c.column}"]')
            ly = np.log if panel.log else np.asarray
            np.testing.assert_allclose(x, rows.layer, atol=1e-3)
            np.testing.assert_allclose(ly(y), ly(rows[c.column].to_numpy()), atol=tol)
            checked += 1
            if c.low:  # the band: the upper ends left to right, then the lower ends back
                ends = summary[["layer", c.low, c.high]].dropna().sort_values("layer")
                bx, by, tol = _chart_values(page, svg, f'path.band[data-series="{series}"][data-col="{c.column}"]')
                n = len(ends)
                assert len(bx) == 2 * n and n > 0
                np.testing.assert_allclose(bx[:n], ends.layer, atol=1e-3)
                np.testing.assert_allclose(ly(by[:n]), ly(ends[c.high].to_numpy()), atol=tol)
                np.testing.assert_allclose(ly(by[n:][::-1]), ly(ends[c.low].to_numpy()), atol=tol)
    return checked


# ---------------------------------------------------------------------------------------------------------


def test_sanity_check_matches_the_language_model(run_a, tiny_gpt2):
    """sanity.parquet holds the top-k next tokens of the causal LM, recomputed here independently."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    table = _parquet(run_a, "sanity.parquet")
    assert list(table.columns) == ["prompt", "rank", "token", "token_id", "probability"]
    model = GPT2LMHeadModel.from_pretrained(tiny_gpt2).eval()
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    for prompt in PROMPTS:
        rows = table[table.prompt == prompt].sort_values("rank")
        with torch.no_grad():
            logits = model(torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1]
        probs = torch.softmax(logits.double(), -1).numpy()
        top = np.argsort(-probs)[:5]
        assert rows["rank"].tolist() == [1, 2, 3, 4, 5]
        assert rows.token_id.tolist() == top.tolist()
        np.testing.assert_allclose(rows.probability, probs[top], rtol=1e-4)
        assert rows.token.tolist() == [tok.decode([int(t)]) for t in top]
    manifest = json.loads((run_a / "manifest.json").read_text())
    assert manifest["sanity"]["applies"] is True and manifest["status"] == "complete"
    assert "sanity" in manifest["timings"]


def test_sanity_measures_match_the_language_model(run_a, tiny_gpt2, markup_corpus):
    """The manifest's next-token figures, recomputed here from `transformers`' own logits on the same tokens: the
    corpus's first 300 documents, each tokenized alone, cut into windows of the model's 128 positions, every
    token after a window's first one a target, the first 10,000 of them. The random model is no better than the
    unigram floor, computed here from the targets' counts."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(tiny_gpt2).eval()
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    assert tok("a")["input_ids"] == tok("a", add_special_tokens=False)["input_ids"]  # no special tokens
    # the file's lines, its leading byte order mark read as encoding (as the corpus reader does)
    docs = [ln for ln in markup_corpus.read_text(encoding="utf-8-sig").splitlines() if ln.strip()][:300]
    hits, nll, targets = score_windows(model, (tok(d, add_special_tokens=False)["input_ids"] for d in docs), 128, 10_000)
    n = len(targets)
    assert n == 10_000
    counts = np.bincount(targets)
    p = counts[counts > 0] / n
    sanity = json.loads((run_a / "manifest.json").read_text())["sanity"]
    assert sanity["tokens"] == n
    assert sanity["next_token_top1"] == hits / n
    # the run takes log-softmax of float32 logits, this test of float64 ones: the mean agrees to ~1e-5 nats
    np.testing.assert_allclose(sanity["cross_entropy"], nll / n, rtol=1e-5)
    np.testing.assert_allclose(sanity["perplexity"], np.exp(nll / n), rtol=1e-4)
    np.testing.assert_allclose(sanity["unigram_top1"], counts.max() / n, rtol=1e-12)
    np.testing.assert_allclose(sanity["unigram_cross_entropy"], -(p * np.log(p)).sum(), rtol=1e-9)
    assert sanity["verdict"] == "not better than chance"
    assert sanity["cross_entropy"] > sanity["unigram_cross_entropy"]  # random weights: about ln(vocab) nats


def test_report_page_is_self_contained_and_loads_clean(run_a, browser):
    page_file = run_a / "report.html"
    html = page_file.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "an external resource is referenced"
    assert "default-src 'none'" in html
    page = Opened(browser, page_file)
    page.assert_clean()
    assert page.page.locator("img").count() == 0
    assert page.page.locator("script").count() == 2  # the JSON data and the page's own script
    summary = _parquet(run_a, "summary.parquet")
    best = summary.loc[summary.w1_gaussian.idxmax()]
    assert page.page.input_value("#layer-select") == str(best.layer)  # opens where the data is least Gaussian
    assert page.page.input_value("#site-select") == best.site
    # Identity and the sanity check are on the page, as text.
    manifest = json.loads((run_a / "manifest.json").read_text())
    assert manifest["config_hash"] in page.text("#app")
    assert page.page.locator(".prompt-text").all_text_contents() == PROMPTS
    sanity = _parquet(run_a, "sanity.parquet")
    shown = page.page.locator(".sanity-prompt").nth(0).locator("td .token").all_text_contents()
    assert shown == sanity[sanity.prompt == PROMPTS[0]].sort_values("rank").token.tolist()
    measured = manifest["sanity"]
    assert page.text("#sanity-verdict").startswith(f"Verdict: {measured['verdict']}")
    assert f"{measured['tokens']:,}" in page.text("#sanity-verdict")
    assert f"{100 * measured['next_token_top1']:.1f} %" in page.text("#sanity-measures")
    page.screenshot("report-page.png")
    page.page.close()


def test_selector_and_sliders_show_the_parquet_values(run_a, browser):
    summary = _parquet(run_a, "summary.parquet")
    hist = _parquet(run_a, "histograms.parquet")
    ex = _parquet(run_a, "exemplars.parquet")
    page = Opened(browser, run_a / "report.html")
    p = page.page
    for _, row in summary.iterrows():
        p.select_option("#layer-select", str(row.layer))
        p.select_option("#site-select", row.site)
        assert page.attr("#hist-svg", "data-key") == f"{row.layer}|{row.site}|raw"
        ymax = page.frame()["ymax"]
        # Histogram bars: one per non-empty bin, heights equal to the Parquet densities.
        want = _density(hist, row.layer, row.site, "data")
        got = page.bars()
        assert sorted(got) == [i for i in range(BINS) if want[i] > 0]
        np.testing.assert_allclose([got[i] for i in sorted(got)], want[want > 0], atol=1e-3 * ymax / 100, rtol=1e-5)
        # Baseline curves at the bin centres.
        for source in ("gaussian_exact", "gaussian_fit", "gaussian_empirical"):
            x, y = page.curve(f'#hist-svg path[data-source="{source}"]')
            centres = np.linspace(-1, 1, BINS + 1)[:-1] + 1 / BINS
            np.testing.assert_allclose(x, centres, atol=1e-3)
            np.testing.assert_allclose(y, _density(hist, row.layer, row.site, source), atol=0.02 * ymax / 250, rtol=1e-4)
        # The summary row is highlighted and shows the Parquet numbers.
        tr = p.locator("#summary-table tr.selected")
        assert tr.get_attribute("data-key") == f"{row.layer}|{row.site}|raw"
        assert tr.locator('td[data-col="cos_mean"]').text_content() == f"{row.cos_mean:.3f}"
        assert tr.locator('td[data-col="d_fit"]').text_content() == f"{row.d_fit:.1f}"
        # Quantile slider: every stop shows its exemplar pair and marks its cosine.
        pairs = ex[(ex.layer == row.layer) & (ex.site == row.site)].sort_values("quantile")
        f = page.frame()
        for i, (_, pr) in enumerate(pairs.iterrows()):
            p.fill("#q-slider", str(i))
            assert float(page.attr("#q-readout", "data-quantile")) == pr["quantile"]
            assert page.text("#a-context") == pr.a_text and page.text("#b-context") == pr.b_text
            assert float(page.attr("#q-marker", "data-cos")) == pytest.approx(pr.cos, abs=1e-12)
            x = float(page.attr("#q-marker", "x1"))
            assert (x - f["plot-left"]) / f["plot-width"] * 2 - 1 == pytest.approx(pr.cos, abs=1e-6)
            assert f"sample #{pr.a_index}" in page.text("#a-meta") and f"sample #{pr.b_index}" in page.text("#b-meta")
        # Dimension slider: the fitted d and d_model buttons reproduce the run's W1 distances; any d gives the law.
        width = 2 / BINS
        p.click("#d-fit-button")
        assert float(page.attr("#d-readout", "data-d")) == pytest.approx(row.d_fit, rel=1e-12)
        assert float(page.attr("#d-readout", "data-w1")) == pytest.approx(row.w1_fit, abs=1e-4)
        p.click("#d-model-button")
        assert float(page.attr("#d-readout", "data-d")) == row.d_model
        assert float(page.attr("#d-readout", "data-w1")) == pytest.approx(row.w1_gaussian, abs=1e-4)
        for index in ("0", "40", "77"):
            p.fill("#d-slider", index)
            d = float(page.attr("#d-readout", "data-d"))
            _, y = page.curve('#hist-svg path[data-source="slider"]')
            law = law_probabilities(d, BINS) / width
            np.testing.assert_allclose(y, law, atol=0.02 * ymax / 250, rtol=2e-4)
    page.assert_clean()
    page.screenshot("report-page-after-sliders.png")
    p.close()


def test_depth_profiles_show_the_parquet_values(run_a, browser):
    """The depth-profile view: for every site, each panel's curves and intervals equal the raw rows of
    summary.parquet; the intrinsic dimension is there, finite, with its interval; the figure is drawn too."""
    summary = _parquet(run_a, "summary.parquet")
    columns = pq.read_schema(run_a / "summary.parquet").names
    assert {p.key for p in panels_for(columns)} >= {"cos", "d_fit", "pr", "id", "kurtosis"}
    for col in ("id_twonn", "id_gride"):
        assert np.isfinite(summary[[col, f"{col}_ci_low", f"{col}_ci_high"]].to_numpy(float)).all(), col
    assert (run_a / "plots" / "depth-profile.png").stat().st_size > 10_000
    page = Opened(browser, run_a / "report.html")
    counted = sum(_check_profiles(page, summary[summary.site == site], site, columns) for site in summary.site.unique())
    assert counted == summary.site.nunique() * sum(len(p.curves) for p in panels_for(columns))
    page.assert_clean()
    page.page.locator("#profiles").screenshot(path=str(ARTIFACTS / "report-depth-profiles.png"))
    page.page.close()


def test_corpus_markup_renders_as_text_and_runs_nothing(run_a, browser):
    ex = _parquet(run_a, "exemplars.parquet")
    marked = ex[ex.a_text.str.contains("<script|<img|onerror", regex=True) | ex.b_text.str.contains("<script|<img|onerror", regex=True)]
    assert len(marked) > 0, "the corpus markup should reach some exemplar contexts"
    pick = marked.iloc[0]
    page = Opened(browser, run_a / "report.html")
    p = page.page
    p.select_option("#layer-select", str(pick.layer))
    p.select_option("#site-select", pick.site)
    stops = ex[(ex.layer == pick.layer) & (ex.site == pick.site)].sort_values("quantile")["quantile"].tolist()
    p.fill("#q-slider", str(stops.index(pick["quantile"])))
    assert page.text("#a-context") == pick.a_text and page.text("#b-context") == pick.b_text
    for side in ("a", "b"):
        tags = p.eval_on_selector_all(f"#{side}-context *", "els => els.map(e => e.tagName)")
        assert set(tags) <= {"SPAN"}
    assert p.locator("img").count() == 0 and p.locator("script").count() == 2
    assert p.evaluate("typeof window.alert") == "function" and page.dialogs == []
    page.assert_clean()
    page.screenshot("report-page-markup.png")
    p.close()


def test_massive_listing_shows_the_parquet_entries(run_a, browser):
    """For every layer and site, the largest-activations listing shows exactly massive.parquet's entries, in rank
    order, with their tokens as text, and the summary's massive numbers."""
    massive = _parquet(run_a, "massive.parquet")
    summary = _parquet(run_a, "summary.parquet")
    assert len(massive) == 20 * len(summary)  # stats.massive_top entries per site
    page = Opened(browser, run_a / "report.html")
    p = page.page
    for _, row in summary.iterrows():
        p.select_option("#layer-select", str(row.layer))
        p.select_option("#site-select", row.site)
        want = massive[(massive.layer == row.layer) & (massive.site == row.site)].sort_values("rank")
        shown = p.eval_on_selector_all("#massive-table tbody tr", """els => els.map(e => ({
            rank: Number(e.dataset.rank), value: Number(e.dataset.value), coord: Number(e.dataset.coord),
            doc: Number(e.dataset.doc), window: Number(e.dataset.window), pos: Number(e.dataset.pos),
            token_id: Number(e.dataset.tokenId), massive: e.querySelector('td[data-col="massive"]').textContent,
            token: e.querySelector('td[data-col="token"] .token').textContent,
            text: e.querySelector('td[data-col="text"]').textContent}))""")
        assert [r["rank"] for r in shown] == want["rank"].tolist()
        np.testing.assert_array_equal([r["value"] for r in shown], want.value.to_numpy())
        for name in ("coord", "doc", "window", "pos", "token_id"):
            assert [r[name] for r in shown] == want[name].tolist(), name
        assert [r["token"] for r in shown] == want.token.tolist()
        assert [r["text"] for r in shown] == want.text.tolist()
        assert [r["massive"] == "yes" for r in shown] == want.massive.tolist()
        facts = page.text("#massive-facts")
        assert f"massive coordinates: {row.massive_dims or 'none'}" in facts
        assert abs(np.abs(want.value).max() - row.abs_max) == 0
        tags = p.eval_on_selector_all("#massive-table tbody td *", "els => els.map(e => e.tagName)")
        assert set(tags) <= {"SPAN"}
    page.assert_clean()
    page.screenshot("report-page-massive.png")
    p.close()


def test_report_command_redraws_the_page(run_a):
    (run_a / "report.html").unlink()
    assert cli_main(["report", str(run_a)]) == 0
    assert (run_a / "report.html").stat().st_size > 10_000


def test_compare_page_overlays_runs(run_a, run_b, browser, tmp_path):
    out = tmp_path / "compare.html"
    assert cli_main(["compare", str(run_a), str(run_b), "--out", str(out)]) == 0
    page = Opened(browser, out)
    page.assert_clean()
    p = page.page
    summaries = [_parquet(r, "summary.parquet") for r in (run_a, run_b)]
    hists = [_parquet(r, "histograms.parquet") for r in (run_a, run_b)]
    for layer in (0, 1):
        for site in ("resid_post", "mlp_out"):
            p.select_option("#row-select", str(layer))
            p.select_option("#site-select", site)
            ymax = page.frame()["ymax"]
            for i in (0, 1):
                x, y = page.curve(f'#hist-svg path[data-run="{i}"][data-source="data"]')
                want = np.repeat(_density(hists[i], layer, site, "data"), 2)  # a step line: two points per bin
                np.testing.assert_allclose(y, want, atol=0.02 * ymax / 250, rtol=1e-4)
                row = summaries[i][(summaries[i].layer == layer) & (summaries[i].site == site)].iloc[0]
                cell = p.locator(f'#compare-table tr[data-row="{layer}"] td[data-run="{i}"][data-col="cos_mean"]')
                assert cell.text_content() == f"{row.cos_mean:.3f}"
            for i in (0, 1):  # the depth profiles of the chosen site, one series per run
                columns = pq.read_schema((run_a, run_b)[i] / "summary.parquet").names
                assert _check_profiles(page, summaries[i][summaries[i].site == site], str(i), columns) >= 6
    runs = page.text("#runs-table")  # each run with the config keys where it differs from the other
    assert f"corpus.files = {PROSE}; stats.flush_every = 1; stats.second_order_fraction = 1" in runs
    page.screenshot("compare-page.png")
    p.close()


def test_compare_refuses_runs_that_do_not_align(run_a, run_b, tmp_path, capsys):
    def subset(src: Path, name: str, keep) -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("samples.parquet", "plots"))
        for f in ("summary.parquet", "histograms.parquet", "exemplars.parquet"):
            t = pq.read_table(dst / f).to_pandas()
            pq.write_table(pq.read_table(dst / f).filter(keep(t).to_numpy()), dst / f)
        return dst

    only0 = subset(run_a, "layer0", lambda t: t.layer == 0)
    only1 = subset(run_b, "layer1", lambda t: t.layer == 1)
    assert cli_main(["compare", str(only0), str(only1), "--out", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpt-stats: error: runs cannot be aligned: no layer captured by all of them") and "\n" not in err
    attn = subset(run_a, "attn", lambda t: t.site == "attn_out")
    mlp = subset(run_b, "mlp", lambda t: t.site == "mlp_out")
    assert cli_main(["compare", str(attn), str(mlp), "--out", str(tmp_path / "y.html")]) == 2
    assert "runs cannot be aligned: no site in common" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "y.html").exists()


def test_dominant_coordinate_noted_beside_the_verdict(run_a, browser, tmp_path):
    """Where summary.parquet flags a dominant coordinate (tasks/analysis/coordinates.py), the summary table's
    verdict cell and the explorer's readout name it with its two shares; rows without the flag carry no note."""
    copy = tmp_path / "run"
    shutil.copytree(run_a, copy)
    table = pq.read_table(copy / "summary.parquet")
    rows = table.to_pylist()
    flagged = next(i for i, r in enumerate(rows) if r["variant"] == "raw")
    for i, r in enumerate(rows):
        if r["variant"] == "raw":
            r.update(top_coord=i + 3, top_coord_cos_share=0.2, top_coord_var_share=0.1, top_coord_dominates=False)
    rows[flagged].update(top_coord_cos_share=0.734, top_coord_var_share=0.126, top_coord_dominates=True)
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), copy / "summary.parquet")
    assert cli_main(["report", str(copy)]) == 0
    page = Opened(browser, copy / "report.html")
    p = page.page
    note = (f" (coordinate {flagged + 3} dominates: 73 % of the mean cosine, 13 % of the variance)")
    r = rows[flagged]
    cells = p.eval_on_selector_all('#summary-table tbody tr', """els => els.map(e => [e.dataset.key,
        e.querySelector('td[data-col="verdict"]').textContent])""")
    for key, text in cells:
        want = f"{r['layer']}|{r['site']}|{r['variant']}"
        assert text.endswith(note) == (key == want), (key, text)
        assert ("dominates" in text) == (key == want)
    p.select_option("#layer-select", str(r["layer"]))
    p.select_option("#site-select", r["site"])
    p.select_option("#variant-select", "raw")
    assert page.text("#hist-stats").endswith(f"verdict: {r['verdict']}{note}")
    page.assert_clean()
    p.close()
