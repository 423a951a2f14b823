"""The HTML report of the comparison and the analyses, and the plain-text table for the CLI."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from qwenscope import QwenscopeError
from qwenscope.apps.classify.metrics import classification_scores
from qwenscope.apps.classify.report import format_table, write_report


def scores(seed: int, noise: float) -> dict:
    rng = np.random.default_rng(seed)
    y = (rng.random(200) < 0.4).astype(int)
    score = y + noise * rng.normal(size=200)
    return classification_scores(y, (score > 0.5).astype(int), score, n_boot=100)


@pytest.fixture(scope="module")
def results():
    comparison = [
        {"method": "feature rule", "k": 5} | scores(0, 0.45),
        {"method": "sae-probe", "features": 16384} | scores(1, 0.3),
        {"method": "tfidf <char>", "features": "char 2-5 grams"} | scores(2, 0.6),
    ]
    comparison[0]["auroc"] = comparison[0]["auroc_ci"] = None  # the rule has no score
    return {
        "title": "Offensive fortunes",
        "meta": {"model": "gemma3-270m", "hookpoint": "resid_post.9"},
        "comparison": comparison,
        "k_curve": {
            "k": list(range(1, 11)),
            "f1": list(np.linspace(0.5, 0.8, 10)),
            "f1_ci": [[f - 0.05, f + 0.05] for f in np.linspace(0.5, 0.8, 10)],
        },
        "efficiency": {
            "fractions": [0.01, 0.1, 0.5, 1.0],
            "n_train": [12, 120, 600, 1200],
            "methods": {"feature rule": [0.4, 0.7, 0.78, 0.8], "sae-probe": [0.3, 0.6, 0.8, 0.85]},
        },
        "transfer": [
            {"train": "es", "test": "it", "method": "feature rule", "f1": 0.61, "f1_ci": [0.5, 0.7]},
            {"train": "it", "test": "es", "method": "feature rule", "f1": 0.55},
            {"train": "es", "test": "it", "method": "tfidf <char>", "f1": 0.432},
        ],
    }


def test_report_holds_the_table_values_and_the_plots(results, tmp_path):
    json.dumps(results, allow_nan=False)  # the layout is JSON-ready
    page = write_report(results, tmp_path / "out" / "report.html").read_text()
    images = re.findall(r'<img alt="" src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2  # F1 vs K, data efficiency
    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch
    for row in results["comparison"]:
        lo, hi = row["f1_ci"]
        assert f"{row['f1']:.3f} [{lo:.3f}, {hi:.3f}]" in page
        assert f"{row['precision']:.3f}" in page and f"{row['recall']:.3f}" in page
    assert f"{results['comparison'][1]['auroc']:.3f}" in page and "K = 5" in page and "16384" in page
    best = max(results["comparison"], key=lambda r: r["f1"])
    assert f"<b>{best['f1']:.3f}" in page  # the highest F1 in bold
    assert "tfidf &lt;char&gt;" in page and "tfidf <char>" not in page
    assert "es → it" in page and "it → es" in page and "0.610 [0.500, 0.700]" in page and "0.432" in page
    assert "10% (120)" in page and "gemma3-270m" in page and "Offensive fortunes" in page


def test_comparison_alone_draws_no_plot(results, tmp_path):
    page = write_report({"comparison": results["comparison"]}, tmp_path / "r.html").read_text()
    assert "<img" not in page and "Data efficiency" not in page and "Comparison" in page


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({}, "no comparison"),
        ({"comparison": [{"method": "x"}]}, "'f1'"),
        ({"comparison": [{"method": "x", "f1": 0.5}], "k_curve": {"k": [1, 2], "f1": [0.5]}}, "one F1 per K"),
        ({"comparison": [{"method": "x", "f1": 0.5}], "transfer": [{"train": "es", "f1": 0.5}]}, "transfer row"),
    ],
)
def test_bad_results_are_one_line(bad, needle, tmp_path):
    with pytest.raises(QwenscopeError, match=needle) as err:
        write_report(bad, tmp_path / "r.html")
    assert "\n" not in str(err.value)


def test_format_table_aligns_the_columns(results):
    text = format_table(results["comparison"])
    lines = text.splitlines()
    assert len(lines) == 2 + len(results["comparison"])
    assert lines[0].split()[:2] == ["method", "K"] and set(lines[1]) <= {"-", " "}
    row = results["comparison"][1]
    assert lines[3].startswith("sae-probe") and "16384" in lines[3]
    assert f"{row['f1']:.3f} [{row['f1_ci'][0]:.3f}, {row['f1_ci'][1]:.3f}]" in lines[3]
    assert lines[2].rstrip().endswith("-")  # the feature rule has no AUROC
    ends = {len(line) for line in lines[1:] if not line.endswith("-")}
    assert len(ends) == 1  # numbers right-aligned to one column edge
    with pytest.raises(QwenscopeError, match="no comparison"):
        format_table([])
