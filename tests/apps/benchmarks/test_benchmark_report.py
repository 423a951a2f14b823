"""The results dict and the self-contained HTML report."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from qwenscope import QwenscopeError
from qwenscope.apps.benchmarks.measures import overlap, redundancy, unique_features
from qwenscope.apps.benchmarks.report import build_results, write_report


def feature_sets(n_items: int, cols: slice, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((n_items, 200), dtype=bool)
    m[:, cols] = rng.random((n_items, cols.stop - cols.start)) < 0.1
    m[:, cols.start] |= ~m.any(axis=1)
    return m


@pytest.fixture(scope="module")
def named():
    return {
        "math": feature_sets(40, slice(0, 120), 0),
        "code <x>": feature_sets(25, slice(80, 200), 1),
        "tiny": feature_sets(6, slice(0, 60), 2),
    }


def test_build_results_holds_the_measures(named):
    rng = np.random.default_rng(0)
    scores = {k: rng.normal(size=(4, m.shape[0])) + np.arange(4)[:, None] for k, m in named.items()}
    res = build_results(named, target=0.8, n_samples=50, scores=scores, describe=lambda f: {"label": f"feat {f}"})
    json.dumps(res, allow_nan=False)  # JSON-ready
    b = res["benchmarks"]["math"]
    assert b["redundancy"] == pytest.approx(redundancy(named["math"]))
    assert len(b["coverage"]["mean"]) == 40 and 0 < b["performance_redundancy"] <= 1
    assert res["overlap"]["names"] == list(named)
    assert res["overlap"]["matrix"][0][1] == pytest.approx(overlap(named["math"], named["code <x>"]))
    comp = res["compression"]["math"]
    assert comp["greedy_curve"][-1] == 1.0 and comp["greedy_curve"][comp["greedy_items"] - 1] >= 0.8
    assert comp["comparison"]["kept"] >= 0.8 and comp["comparison"]["tau"] is not None
    uniq = res["unique"]["code <x>"]
    want = unique_features(named["code <x>"], [named["math"], named["tiny"]])
    assert [r["feature"] for r in uniq] == want[:20].tolist() and uniq[0]["label"] == f"feat {want[0]}"
    assert res["rho"]["n"] == 3 and res["rho"]["low"] <= res["rho"]["rho"] <= res["rho"]["high"]


def test_write_report_is_one_self_contained_page(named, tmp_path):
    res = build_results(
        named,
        n_samples=30,
        meta={"model": "smollm2-135m", "hookpoint": "resid_post.15"},
        describe=lambda f: {"label": "<b>digits</b>", "contexts": ["1 + 1 = 2"], "density": 1e-4},
    )
    path = write_report(tmp_path / "out" / "report.html", res)
    page = path.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # coverage, overlap heat map, compression
    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch
    assert "code &lt;x&gt;" in page and "code <x>" not in page
    assert "&lt;b&gt;digits&lt;/b&gt;" in page and "1 + 1 = 2" in page
    assert "smollm2-135m" in page and f"{res['benchmarks']['math']['redundancy']:.3f}" in page


def test_report_of_one_benchmark_without_overlap(tmp_path):
    res = build_results({"only": feature_sets(10, slice(0, 50), 3)}, n_samples=20)
    assert "overlap" not in res and res["unique"]["only"] == []
    page = write_report(tmp_path / "one.html", res).read_text()
    assert page.count("data:image/png;base64,") == 2 and "Overlap" not in page


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda p: write_report(p, {}), "no benchmarks"),
        (lambda p: build_results({}), "no benchmarks"),
        (lambda p: build_results({"a": np.eye(3, dtype=bool)}, scores={"b": np.ones((2, 3))}), "'b'"),
        (lambda p: build_results({"a": np.eye(3, dtype=bool), "b": np.eye(4, dtype=bool)}), "same SAE"),
    ],
)
def test_bad_input_is_one_line(tmp_path, call, needle):
    with pytest.raises(QwenscopeError) as err:
        call(tmp_path / "r.html")
    assert needle in str(err.value) and "\n" not in str(err.value)
