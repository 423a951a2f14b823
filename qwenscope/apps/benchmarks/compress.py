"""Benchmark compression: the fewest items that keep a share of the footprint, against random subsets of that size.

``greedy_cover`` is greedy maximum coverage: it repeatedly takes the item that adds the most not-yet-covered
features (optionally weighted, e.g. by rarity 1/d_j) until the subset's footprint reaches ``target`` x |F(D)|.
Greedy carries the classic guarantee for maximum coverage: with k items it covers at least (1 - 1/e) of what the
best k items cover. ``random_needed`` says how many items a random order needs for the same share, and
``compare_with_random`` puts a subset beside random subsets of its size: footprint kept and, when per-item scores
exist, how well the subset keeps the models' ranking (Kendall tau-b of the models' mean scores on the subset
against the full benchmark). Matrices are as in ``measures`` (bool, items x features).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qwenscope import QwenscopeError
from qwenscope.apps.benchmarks.measures import (
    _level,
    _nonempty,
    _prefix_curves,
    _random_ranks,
    _score_matrix,
    _tau_b,
    as_matrix,
    coverage_mc,
    feature_counts,
)
from qwenscope.util import atomic_write

__all__ = ["Comparison", "compare_with_random", "export_subset", "greedy_cover", "random_needed"]


def _needed(target: float, size: int) -> int:
    """The number of footprint features that ``target`` asks for (at least 1)."""
    if not (isinstance(target, int | float) and 0.0 < target <= 1.0):
        raise QwenscopeError(f"target must be a share of the footprint in (0, 1], got {target}")
    return max(1, math.ceil(target * size - 1e-9))


def _feature_weights(weights: str | Sequence[float] | np.ndarray | None, counts: np.ndarray) -> np.ndarray:
    if weights is None:
        return (counts > 0).astype(np.float64)
    if isinstance(weights, str):
        if weights != "rarity":
            raise QwenscopeError(f"unknown weights {weights!r}: use None, 'rarity' or one weight per feature")
        return np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != counts.shape:
        raise QwenscopeError(f"weights must hold one value per feature ({counts.size}), got shape {w.shape}")
    if not np.isfinite(w).all() or (w[counts > 0] <= 0).any():
        raise QwenscopeError("weights must be finite and positive on every footprint feature")
    return np.where(counts > 0, w, 0.0)


def greedy_cover(m: Any, target: float = 0.9, weights: str | Sequence[float] | np.ndarray | None = None) -> list[int]:
    """The items, in pick order, of a greedy subset whose footprint reaches ``target`` x |F(D)|.

    Each step takes the item adding the largest total weight of uncovered features (ties: the lowest index).
    ``weights``: None (each feature counts 1: the fewest items), ``"rarity"`` (1/d_j: rare features first) or an
    array with one positive weight per feature. The stop is always the unweighted footprint share, so a weighted
    subset keeps the same guarantee and may need a few more items.
    """
    csr = as_matrix(m)
    size = _nonempty(csr, "benchmark")
    need = _needed(target, size)
    counts = feature_counts(csr)
    uncovered = _feature_weights(weights, counts)
    covered = np.zeros(csr.shape[1], dtype=bool)
    mat = csr.astype(np.float64)
    picked: list[int] = []
    n_covered = 0
    while n_covered < need:
        item = int(np.argmax(mat @ uncovered))
        feats = csr.indices[csr.indptr[item] : csr.indptr[item + 1]]
        new = feats[~covered[feats]]
        covered[new] = True
        uncovered[new] = 0.0
        n_covered += new.size
        picked.append(item)
    return picked


def random_needed(m: Any, target: float, n_samples: int = 200, seed: int = 0) -> np.ndarray:
    """For each of ``n_samples`` seeded random orders of the items, how many items its prefix needs to reach
    ``target`` x |F(D)| (ints, one per order)."""
    csr = as_matrix(m)
    need = _needed(target, _nonempty(csr, "benchmark"))
    if n_samples < 1:
        raise QwenscopeError(f"n_samples must be at least 1, got {n_samples}")
    curves = _prefix_curves(csr.tocsc(), _random_ranks(csr.shape[0], n_samples, seed))
    return np.argmax(curves >= need, axis=1) + 1


@dataclass(frozen=True)
class Comparison:
    """A subset against random subsets of the same size (``compare_with_random``)."""

    n_items: int
    """Items in the subset."""
    n_total: int
    """Items in the benchmark."""
    footprint: int
    """|F(D)| of the whole benchmark."""
    kept: float
    """Share of |F(D)| that the subset's footprint keeps."""
    random_kept_mean: float
    """Mean share kept by random subsets of the same size."""
    random_kept_low: float
    """Lower end of the random subsets' band ((1 - level) / 2 percentile)."""
    random_kept_high: float
    """Upper end of the band."""
    level: float
    """The band's central share."""
    tau: float | None = None
    """Kendall tau-b between the models' mean scores on the subset and on the full benchmark (scores given)."""
    random_tau_mean: float | None = None
    """The same for random subsets of the same size: mean."""
    random_tau_low: float | None = None
    """Lower end of the random subsets' tau band."""
    random_tau_high: float | None = None
    """Upper end of the random subsets' tau band."""

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return asdict(self)


def _subset_indices(subset: Sequence[int] | np.ndarray, n_items: int) -> np.ndarray:
    idx = np.asarray(list(subset), dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0:
        raise QwenscopeError("the subset is empty: give at least one item index")
    if idx.min() < 0 or idx.max() >= n_items:
        raise QwenscopeError(f"subset indices must lie in 0..{n_items - 1}, got {idx.min()}..{idx.max()}")
    if np.unique(idx).size != idx.size:
        raise QwenscopeError("the subset lists an item twice: give distinct item indices")
    return idx


def compare_with_random(
    m: Any,
    subset: Sequence[int] | np.ndarray,
    n_samples: int = 200,
    seed: int = 0,
    scores: Any = None,
    level: float = 0.95,
) -> Comparison:
    """Footprint kept by ``subset`` (item indices) against ``n_samples`` seeded random subsets of its size; with
    ``scores`` ((n_models, n_items) or a ``ScoreMatrix``), also how well each keeps the models' ranking
    (tau-b to the full benchmark's mean scores; all models tied on a subset counts as tau 0)."""
    csr = as_matrix(m)
    size = _nonempty(csr, "benchmark")
    n_total = csr.shape[0]
    idx = _subset_indices(subset, n_total)
    tail = (1.0 - _level(level)) / 2 * 100
    kept = np.count_nonzero(feature_counts(csr[idx])) / size
    rand = coverage_mc(csr, ns=[idx.size], n_samples=n_samples, seed=seed, level=level)
    out: dict[str, Any] = {
        "n_items": int(idx.size),
        "n_total": n_total,
        "footprint": size,
        "kept": float(kept),
        "random_kept_mean": float(rand.mean[0]),
        "random_kept_low": float(rand.low[0]),
        "random_kept_high": float(rand.high[0]),
        "level": float(level),
    }
    if scores is not None:
        arr = _score_matrix(scores)
        if arr.shape[1] != n_total:
            raise QwenscopeError(f"scores cover {arr.shape[1]} items but the benchmark has {n_total}: score every item")
        p = arr.mean(axis=1)
        orders = _random_ranks(n_total, n_samples, seed + 1)[:, : idx.size]  # (n_samples, k) random subsets
        taus = np.nan_to_num(_tau_b(p[None, :], arr[:, orders].mean(axis=2).T), nan=0.0)
        tau = np.nan_to_num(_tau_b(p, arr[:, idx].mean(axis=1)), nan=0.0)
        out |= {
            "tau": float(tau),
            "random_tau_mean": float(taus.mean()),
            "random_tau_low": float(np.percentile(taus, tail)),
            "random_tau_high": float(np.percentile(taus, 100 - tail)),
        }
    return Comparison(**out)


def _item_record(item: Any, index: int) -> dict[str, Any]:
    if isinstance(item, str):
        return {"id": item, "index": index}
    if not hasattr(item, "id"):
        raise QwenscopeError(f"export_subset takes a Benchmark, its items or their ids, got {type(item).__name__}")
    rec = {"id": item.id, "index": index}
    for key in ("text", "answer", "meta"):
        if hasattr(item, key):
            rec[key] = getattr(item, key)
    return rec


def export_subset(benchmark_items_or_ids: Any, subset: Sequence[int] | np.ndarray, path: str | Path) -> Path:
    """Write the subset as JSONL, one item per line in subset order: its original ``id``, its ``index`` in the
    benchmark and, for items, ``text``, ``answer`` and ``meta``. Takes a ``Benchmark`` (its ``items``), a list of
    items or a list of ids. Returns the path (written atomically; folders created)."""
    items = list(getattr(benchmark_items_or_ids, "items", benchmark_items_or_ids))
    if not items:
        raise QwenscopeError("the benchmark has no items to export")
    idx = _subset_indices(subset, len(items))
    lines = [json.dumps(_item_record(items[i], int(i)), ensure_ascii=False, default=str) for i in idx]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n", encoding="utf-8"))
