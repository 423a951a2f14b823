"""Evaluation analysis (Qwen-Scope report, section 4): what a benchmark covers, how redundant it is, how benchmarks
overlap, and how to shrink one, from the SAE features its samples turn on. Built only on the core's public API.

    bench = load_benchmark("gsm8k")                                   # data.py: bundled, JSONL, CSV, hf:
    [fs] = feature_sets(model, tokenizer, bench, [SaeSpec(sae, "smollm2-135m")])   # features.py
    redundancy(fs.matrix), coverage_exact(fs.matrix)                  # measures.py
    greedy_cover(fs.matrix, target=0.9)                               # compress.py
    write_report("report.html", results)                              # report.py
    load_scores(["scores.csv"], bench.ids)                            # scores.py

Modules: data (benchmarks in), features (sample feature sets), measures (footprint, coverage, redundancy, overlap,
performance redundancy), compress (greedy subsets against random ones), report (the HTML report), scores (per-item
scores), cli (``qwenscope benchmarks``). The names of measures, compress, report and scores are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from qwenscope.apps.benchmarks.data import (
    BUNDLED,
    Benchmark,
    Item,
    content_hash,
    from_records,
    list_benchmarks,
    load_benchmark,
    subsets,
)
from qwenscope.apps.benchmarks.features import FeatureSetConfig, FeatureSets, SaeSpec, feature_sets

_LAZY = {
    **dict.fromkeys(
        (
            "footprint",
            "coverage_exact",
            "coverage_mc",
            "Coverage",
            "redundancy",
            "overlap",
            "symmetric_overlap",
            "overlap_matrix",
            "unique_features",
            "kendall_tau",
            "spearman",
            "performance_redundancy",
            "spearman_interval",
        ),
        "measures",
    ),
    **dict.fromkeys(("greedy_cover", "random_needed", "compare_with_random", "export_subset"), "compress"),
    "write_report": "report",
    **dict.fromkeys(("ScoreMatrix", "load_scores", "answer_loglik"), "scores"),
}
"""Names of the other modules, imported when first used (``from qwenscope.apps.benchmarks import redundancy``)."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUNDLED",
    "Benchmark",
    "FeatureSetConfig",
    "FeatureSets",
    "Item",
    "SaeSpec",
    "content_hash",
    "feature_sets",
    "from_records",
    "list_benchmarks",
    "load_benchmark",
    "subsets",
    *_LAZY,
]
