"""Run alignment for `gpt-stats compare`, and the page builder's escaping, without a browser."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from tasks.report.compare import align_layers, align_sites, config_differences
from tasks.errors import UserError
from tasks.report.page import ASSETS, embed_json, render


def fake_run(n_layers: int, layers, sites=("resid_post", "attn_out", "mlp_out")) -> dict:
    return {"identity": {"model": {"n_layers": n_layers}}, "layers": list(layers), "sites": list(sites)}


def test_same_depth_aligns_on_common_layers():
    label, rows = align_layers([fake_run(12, range(12)), fake_run(12, [0, 5, 11])], ["A", "B"])
    assert label == "layer" and [r.layers for r in rows] == [(0, 0), (5, 5), (11, 11)]


def test_other_depths_align_on_relative_depth():
    small, xl = fake_run(12, range(12)), fake_run(48, range(48))
    label, rows = align_layers([small, xl], ["A", "B"])
    assert label.startswith("relative depth") and len(rows) == 12
    for r in rows:
        a, b = r.layers
        assert Fraction(a + 1, 12) == Fraction(b + 1, 48) and r.x == pytest.approx((a + 1) / 12)
    assert (2, 11) in [r.layers for r in rows] and (11, 47) in [r.layers for r in rows]


def test_unalignable_runs_are_refused_with_one_line():
    with pytest.raises(UserError, match=r"no layer captured by all of them \(A has layers \[0\] of 12; B has layers \[5\] of 12\)"):
        align_layers([fake_run(12, [0]), fake_run(12, [5])], ["A", "B"])
    with pytest.raises(UserError, match="same relative depth"):
        align_layers([fake_run(12, [0]), fake_run(48, [0, 1, 2])], ["A", "B"])
    with pytest.raises(UserError, match="no site in common"):
        align_sites([fake_run(2, [0], ["attn_out"]), fake_run(2, [0], ["mlp_out"])], ["A", "B"])
    assert align_sites([fake_run(2, [0]), fake_run(2, [0], ["mlp_out", "attn_out"])], ["A", "B"]) == ["attn_out", "mlp_out"]


def test_config_differences_name_what_was_varied():
    a = {"model": {"name": "gpt2"}, "run": {"seed": 0, "out": "x"}, "cluster": {"actors": 1}}
    b = {"model": {"name": "gpt2-xl"}, "run": {"seed": 0, "out": "y"}, "cluster": {"actors": 4}}
    assert config_differences([a, b]) == [{"model.name": "gpt2"}, {"model.name": "gpt2-xl"}]


def test_embedded_json_cannot_close_the_script_element():
    text = "</script><script>alert(1)</script><!-- & <img src=x onerror=alert(1)> \u2028"
    blob = embed_json({"t": text})
    assert "<" not in blob and ">" not in blob and "&" not in blob
    assert json.loads(blob) == {"t": text}
    assert json.loads(embed_json({"x": [1.0, float("nan"), float("inf")]})) == {"x": [1.0, None, None]}
    page = render("report", "<title>", {"t": "{{SCRIPT}} {{DATA}}"})
    assert page.count("{{SCRIPT}}") == 1 and "<title>&lt;title&gt;</title>" in page


def test_page_scripts_never_write_markup():
    for js in ASSETS.glob("*.js"):
        code = js.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "fetch(", "XMLHttpRequest"):
            assert sink not in code, (js.name, sink)
