"""What a benchmark's SAE features say about it: footprint, coverage, redundancy, overlap, unique features, and the
performance redundancy of per-item scores that the feature measures are checked against.

Every function is pure and takes a benchmark's feature sets as a boolean matrix ``m`` of shape (n_items, d_sae):
row i is F(x_i). Anything ``scipy.sparse.csr_matrix(x, dtype=bool)`` accepts works (a CSR matrix, a dense bool
numpy array), and so does an object with a ``matrix`` attribute (helper A's ``FeatureSets``).

Definitions (Qwen-Scope report §4; N = number of items, d_j = number of items whose F contains feature j):

- F(x) = {j : z_j(x) > 0} at the sample's last token (default), or max-pooled over all its tokens (option).
- Footprint F(D) = union of F(x); |F(D)| its size.
- Coverage c_n = E_{S subset of D, |S| = n} |F(S)| / |F(D)|. Closed form (exact, no sampling):
  E|F(S)| = sum_j [1 - C(N - d_j, n) / C(N, n)] (hypergeometric: the chance that none of feature j's d_j items is
  drawn); also a seeded Monte-Carlo estimate with a band (percentile band of single random subsets' coverage).
- Redundancy R_hat(D) = (1/N) sum_{n=1..N} c_n: the area under the normalised coverage curve. The report writes it
  with c_n unnormalised, divided by |F(D)|; ours is that divided by N so that it lies in (0, 1]. Higher = more
  redundant (the curve saturates with few items).
- Overlap: asymmetric O(D1 -> D2) = |F(D1) ∩ F(D2)| / |F(D1)|; symmetric = |F(D1) ∩ F(D2)| / min(|F(D1)|, |F(D2)|).
- Performance redundancy R(D) = (1/|ns|) sum_{n in ns} E_{|S|=n}[Kendall-tau(p, p_hat(S))], p = per-model mean score
  on D, p_hat(S) on S (tau-b; a subset where all models tie counts as tau 0). Spearman rho(R, R_hat) across
  benchmarks with a bootstrap interval (resampling benchmarks).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln

from qwenscope import QwenscopeError

__all__ = [
    "Coverage",
    "as_matrix",
    "coverage_exact",
    "coverage_mc",
    "feature_counts",
    "footprint",
    "footprint_curve",
    "kendall_tau",
    "overlap",
    "overlap_matrix",
    "performance_redundancy",
    "redundancy",
    "spearman",
    "spearman_interval",
    "symmetric_overlap",
    "unique_features",
]


@dataclass(frozen=True)
class Coverage:
    """A Monte-Carlo coverage curve (``coverage_mc``)."""

    ns: np.ndarray
    """Subset sizes n (ints, ascending)."""
    mean: np.ndarray
    """Mean of |F(S)| / |F(D)| over the random subsets of each size: the estimate of c_n."""
    low: np.ndarray
    """Lower end of the band: the (1 - level) / 2 percentile of single random subsets' coverage."""
    high: np.ndarray
    """Upper end of the band: the (1 + level) / 2 percentile."""

    def as_dict(self) -> dict[str, list[float] | list[int]]:
        """Plain lists, for JSON."""
        return {
            "ns": [int(n) for n in self.ns],
            "mean": self.mean.tolist(),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
        }


# ---------------------------------------------------------------- input


def as_matrix(m: Any, name: str = "benchmark") -> sp.csr_matrix:
    """``m`` as a canonical bool CSR matrix (no explicit False, no duplicates); one-line error when unusable."""
    m = getattr(m, "matrix", m)
    if isinstance(m, np.ndarray) and m.ndim != 2:
        raise QwenscopeError(f"{name}: feature sets must be a 2-D matrix (items x features), got {m.ndim}-D")
    try:
        csr = sp.csr_matrix(m, dtype=bool)
    except (TypeError, ValueError) as exc:
        raise QwenscopeError(
            f"{name}: feature sets must be a 2-D bool matrix (items x features), got "
            f"{type(m).__name__} ({str(exc).splitlines()[0] if str(exc) else 'unreadable'})"
        ) from None
    if csr.shape[0] == 0:
        raise QwenscopeError(f"{name} has no items: give a benchmark with at least one item")
    if csr.shape[1] == 0:
        raise QwenscopeError(f"{name} has zero feature columns: the matrix must be (n_items, d_sae)")
    csr.sum_duplicates()
    csr.eliminate_zeros()
    return csr


def _nonempty(csr: sp.csr_matrix, name: str) -> int:
    size = int(np.count_nonzero(feature_counts(csr)))
    if size == 0:
        raise QwenscopeError(
            f"{name} has an empty footprint (no feature fires on any item): check the hookpoint and the density filter"
        )
    return size


def _same_width(a: sp.csr_matrix, b: sp.csr_matrix, names: tuple[str, str]) -> None:
    if a.shape[1] != b.shape[1]:
        raise QwenscopeError(
            f"{names[0]} has {a.shape[1]} feature columns but {names[1]} has {b.shape[1]}: compare "
            "feature sets of the same SAE"
        )


def _sizes(ns: Sequence[int] | np.ndarray | None, n_items: int) -> np.ndarray:
    if ns is None:
        return np.arange(1, n_items + 1)
    out = np.asarray(ns)
    if out.ndim != 1 or out.size == 0 or not np.issubdtype(out.dtype, np.integer):
        raise QwenscopeError("ns must be a non-empty list of integer subset sizes")
    if out.min() < 1 or out.max() > n_items:
        raise QwenscopeError(
            f"subset sizes must lie in 1..{n_items} (the number of items), got {out.min()}..{out.max()}"
        )
    return out.astype(np.int64)


def _level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise QwenscopeError(f"level must lie in (0, 1), got {level}")
    return float(level)


# ---------------------------------------------------------------- footprint and coverage


def feature_counts(m: Any) -> np.ndarray:
    """d_j for every feature j: the number of items whose F contains j (int64, length d_sae)."""
    csr = m if isinstance(m, sp.csr_matrix) and m.dtype == bool else as_matrix(m)
    return np.bincount(csr.indices, minlength=csr.shape[1]).astype(np.int64)


def footprint(m: Any) -> np.ndarray:
    """F(D): the sorted ids of the features that fire on at least one item."""
    return np.flatnonzero(feature_counts(as_matrix(m)))


def coverage_exact(m: Any, ns: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """c_n for each n of ``ns`` (default 1..N), exact: sum_j [1 - C(N - d_j, n) / C(N, n)] / |F(D)|.

    Vectorised over the distinct values of d_j with log-binomials (``gammaln``), so it is stable and fast for
    thousands of items.
    """
    csr = as_matrix(m)
    size = _nonempty(csr, "benchmark")
    n_items = csr.shape[0]
    sizes = _sizes(ns, n_items)
    values, mult = np.unique(feature_counts(csr), return_counts=True)
    keep = values > 0
    d, mult = values[keep].astype(np.float64), mult[keep].astype(np.float64)
    n = sizes[:, None].astype(np.float64)  # (len(ns), 1)
    rest = n_items - d[None, :]  # N - d_j, (1, n_distinct)
    possible = rest >= n  # C(N - d, n) > 0
    log_ratio = (
        gammaln(np.where(possible, rest, n) + 1)
        - gammaln(np.where(possible, rest - n, 0) + 1)
        - gammaln(n_items + 1)
        + gammaln(n_items - n + 1)
    )
    miss = np.where(possible, np.exp(np.minimum(log_ratio, 0.0)), 0.0)  # P(feature j absent from S)
    return ((1.0 - miss) @ mult) / size


def footprint_curve(m: Any, order: Sequence[int] | np.ndarray) -> np.ndarray:
    """|F(first n items of ``order``)| for n = 1..len(order) (ints): the footprint grown one item at a time."""
    csr = as_matrix(m)
    order = np.asarray(order, dtype=np.int64)
    if order.ndim != 1 or order.size == 0 or order.min() < 0 or order.max() >= csr.shape[0]:
        raise QwenscopeError(f"order must list item indices in 0..{csr.shape[0] - 1}")
    if np.unique(order).size != order.size:
        raise QwenscopeError("order lists an item twice: give distinct item indices")
    return _prefix_curves(csr[order].tocsc(), np.arange(order.size)[None, :])[0]


def _prefix_curves(csc: sp.csc_matrix, ranks: np.ndarray) -> np.ndarray:
    """For each row of ``ranks`` (rank[i] = position of item i in an order), |F| of every prefix of that order.

    A feature joins the prefix at the first position among its items, so the curve is the cumulative count of
    first positions. Returns (n_orders, n_items) ints; O(nnz) per order.
    """
    n_items = csc.shape[0]
    starts = csc.indptr[:-1][np.diff(csc.indptr) > 0]  # columns that have items
    curves = np.empty((ranks.shape[0], n_items), dtype=np.int64)
    for row, rank in enumerate(ranks):
        first = np.minimum.reduceat(rank[csc.indices], starts) if starts.size else np.empty(0, np.int64)
        curves[row] = np.cumsum(np.bincount(first, minlength=n_items)[:n_items])
    return curves


def _random_ranks(n_items: int, n_samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n_items), (n_samples, 1)), axis=1)


def coverage_mc(
    m: Any, ns: Sequence[int] | np.ndarray | None = None, n_samples: int = 200, seed: int = 0, level: float = 0.95
) -> Coverage:
    """c_n estimated from ``n_samples`` seeded random subsets of each size, with a percentile band.

    Each sample is a random order of the items; its first n items are a uniform random subset of size n, so one
    order gives a subset of every size (subsets of different sizes within one order are nested, those of one size
    across orders independent). The band holds the central ``level`` share of single subsets' coverage: where a
    random subset of n items is likely to land, not the error of the mean.
    """
    csr = as_matrix(m)
    size = _nonempty(csr, "benchmark")
    sizes = _sizes(ns, csr.shape[0])
    if n_samples < 1:
        raise QwenscopeError(f"n_samples must be at least 1, got {n_samples}")
    tail = (1.0 - _level(level)) / 2 * 100
    curves = _prefix_curves(csr.tocsc(), _random_ranks(csr.shape[0], n_samples, seed))[:, sizes - 1] / size
    return Coverage(
        ns=sizes,
        mean=curves.mean(axis=0),
        low=np.percentile(curves, tail, axis=0),
        high=np.percentile(curves, 100 - tail, axis=0),
    )


def redundancy(m: Any) -> float:
    """R_hat(D) = (1/N) sum_{n=1..N} c_n (exact c_n), in (0, 1]; higher = the coverage curve saturates sooner."""
    return float(coverage_exact(m).mean())


# ---------------------------------------------------------------- overlap and unique features


def _footprint_mask(m: Any, name: str) -> np.ndarray:
    csr = as_matrix(m, name)
    mask = feature_counts(csr) > 0
    _nonempty(csr, name)
    return mask


def overlap(a: Any, b: Any) -> float:
    """Asymmetric O(a -> b) = |F(a) ∩ F(b)| / |F(a)|: the share of a's footprint that b also exercises."""
    fa, fb = _footprint_mask(a, "the first benchmark"), _footprint_mask(b, "the second benchmark")
    if fa.size != fb.size:
        raise QwenscopeError(
            f"the first benchmark has {fa.size} feature columns but the second has {fb.size}: "
            "compare feature sets of the same SAE"
        )
    return float(np.count_nonzero(fa & fb) / np.count_nonzero(fa))


def symmetric_overlap(a: Any, b: Any) -> float:
    """|F(a) ∩ F(b)| / min(|F(a)|, |F(b)|): 1 when one footprint contains the other."""
    fa, fb = _footprint_mask(a, "the first benchmark"), _footprint_mask(b, "the second benchmark")
    if fa.size != fb.size:
        raise QwenscopeError(
            f"the first benchmark has {fa.size} feature columns but the second has {fb.size}: "
            "compare feature sets of the same SAE"
        )
    return float(np.count_nonzero(fa & fb) / min(np.count_nonzero(fa), np.count_nonzero(fb)))


def overlap_matrix(named: dict[str, Any], symmetric: bool = False) -> tuple[list[str], np.ndarray]:
    """All pairwise overlaps: ``(names, M)`` with M[i, j] = O(names[i] -> names[j]) (or the symmetric overlap)."""
    if not named:
        raise QwenscopeError("no benchmarks given: pass at least one named feature matrix")
    names = list(named)
    masks = [_footprint_mask(named[k], k) for k in names]
    for k, mask in zip(names[1:], masks[1:]):
        if mask.size != masks[0].size:
            raise QwenscopeError(
                f"{names[0]} has {masks[0].size} feature columns but {k} has {mask.size}: compare "
                "feature sets of the same SAE"
            )
    fp = np.stack(masks).astype(np.float64)  # (B, d_sae)
    inter = fp @ fp.T
    sizes = fp.sum(axis=1)
    denom = np.minimum(sizes[:, None], sizes[None, :]) if symmetric else np.repeat(sizes[:, None], len(names), 1)
    return names, inter / denom


def unique_features(target: Any, others: Sequence[Any]) -> np.ndarray:
    """Features of F(target) in no other benchmark's footprint, most-used first (by d_j in target, then by id)."""
    csr = as_matrix(target, "the target benchmark")
    counts = feature_counts(csr)
    seen = np.zeros(csr.shape[1], dtype=bool)
    for i, other in enumerate(others):
        o = as_matrix(other, f"other benchmark {i}")
        _same_width(csr, o, ("the target benchmark", f"other benchmark {i}"))
        seen |= feature_counts(o) > 0
    ids = np.flatnonzero((counts > 0) & ~seen)
    return ids[np.lexsort((ids, -counts[ids]))]


# ---------------------------------------------------------------- rank correlations


def _vectors(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or xa.shape != ya.shape:
        raise QwenscopeError(
            f"rank correlation needs two 1-D sequences of the same length, got shapes {xa.shape} and {ya.shape}"
        )
    if xa.size < 2:
        raise QwenscopeError(f"rank correlation needs at least 2 values, got {xa.size}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise QwenscopeError("rank correlation got NaN or infinite values: drop or fix them first")
    return xa, ya


def _tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall tau-b along the last axis (broadcast): sum sign(dx) sign(dy) / sqrt(#untied-x pairs * #untied-y).
    NaN where one side is constant."""
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    s = (sx * sy).sum(axis=(-2, -1))
    denom = np.sqrt(np.abs(sx).sum(axis=(-2, -1)) * np.abs(sy).sum(axis=(-2, -1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, s / np.where(denom > 0, denom, 1.0), np.nan)


def kendall_tau(x: Any, y: Any) -> float:
    """Kendall tau-b with ties (as ``scipy.stats.kendalltau``); NaN when x or y is constant."""
    xa, ya = _vectors(x, y)
    return float(_tau_b(xa, ya))


def _rank(a: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) along the last axis, as ``scipy.stats.rankdata``."""
    order = np.argsort(a, axis=-1, kind="stable")
    s = np.take_along_axis(a, order, axis=-1)
    n = a.shape[-1]
    pos = np.broadcast_to(np.arange(n), a.shape)
    new = np.ones(a.shape, dtype=bool)
    new[..., 1:] = s[..., 1:] != s[..., :-1]
    last = np.ones(a.shape, dtype=bool)
    last[..., :-1] = new[..., 1:]
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=-1)
    end = np.flip(np.minimum.accumulate(np.flip(np.where(last, pos, n), axis=-1), axis=-1), axis=-1)
    ranks = np.empty(a.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=-1)
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    denom = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (xc * yc).sum(axis=-1) / np.where(denom > 0, denom, 1.0), np.nan)


def spearman(x: Any, y: Any) -> float:
    """Spearman rho with ties (Pearson correlation of average ranks, as ``scipy.stats.spearmanr``); NaN when x or y
    is constant."""
    xa, ya = _vectors(x, y)
    return float(np.clip(_pearson(_rank(xa), _rank(ya)), -1.0, 1.0))


def spearman_interval(
    x: Any, y: Any, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(rho, low, high): Spearman rho of x and y (e.g. R and R_hat per benchmark) with a percentile bootstrap interval
    from ``n_boot`` seeded resamples of the pairs (benchmarks) with replacement. Resamples where one side is constant
    have no rho and are left out."""
    xa, ya = _vectors(x, y)
    if xa.size < 3:
        raise QwenscopeError(f"a bootstrap interval of rho needs at least 3 benchmarks, got {xa.size}")
    if n_boot < 1:
        raise QwenscopeError(f"n_boot must be at least 1, got {n_boot}")
    tail = (1.0 - _level(level)) / 2 * 100
    idx = np.random.default_rng(seed).integers(0, xa.size, size=(n_boot, xa.size))
    boot = _pearson(_rank(xa[idx]), _rank(ya[idx]))
    boot = boot[np.isfinite(boot)]
    rho = spearman(xa, ya)
    if boot.size == 0:
        return rho, math.nan, math.nan
    return rho, float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail))


# ---------------------------------------------------------------- performance redundancy


def _score_matrix(scores: Any) -> np.ndarray:
    arr = np.asarray(getattr(scores, "scores", scores), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
        raise QwenscopeError(f"scores must be a (n_models >= 2, n_items >= 1) matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise QwenscopeError("scores hold NaN or infinite values: score every item of every model")
    return arr


def performance_redundancy(
    scores: Any, ns: Sequence[int] | np.ndarray | None = None, n_samples: int = 200, seed: int = 0
) -> float:
    """R(D) = (1/|ns|) sum_{n in ns} E_{|S|=n}[Kendall-tau(p, p_hat(S))], ns default 1..N.

    ``scores`` is (n_models, n_items) (or a ``ScoreMatrix``); p = each model's mean score over all items, p_hat(S)
    over the subset S; tau is tau-b, and a subset on which all models tie counts as tau 0. For each n the
    expectation is exact (every subset enumerated) when C(N, n) <= ``n_samples``, otherwise the mean over
    ``n_samples`` seeded random subsets (prefixes of random orders, as in ``coverage_mc``).
    """
    arr = _score_matrix(scores)
    n_items = arr.shape[1]
    sizes = _sizes(ns, n_items)
    if n_samples < 1:
        raise QwenscopeError(f"n_samples must be at least 1, got {n_samples}")
    p = arr.mean(axis=1)
    if np.all(p == p[0]):
        raise QwenscopeError("all models have the same mean score on the benchmark: their ranking is undefined")
    exact = np.array([math.comb(n_items, int(n)) <= n_samples for n in sizes])
    per_n = np.empty(sizes.size)
    for i in np.flatnonzero(exact):
        subsets = np.array(list(itertools.combinations(range(n_items), int(sizes[i]))))  # (C, n)
        per_n[i] = _mean_tau(p, arr[:, subsets].mean(axis=2).T)
    sampled = sizes[~exact]
    if sampled.size:
        sums = np.zeros(sampled.size)
        for order in _random_ranks(n_items, n_samples, seed):  # random orders of the items
            prefix = np.cumsum(arr[:, order], axis=1)[:, sampled - 1] / sampled  # (M, len(sampled))
            sums += np.nan_to_num(_tau_b(p[None, :], prefix.T), nan=0.0)
        per_n[~exact] = sums / n_samples
    return float(per_n.mean())


def _mean_tau(p: np.ndarray, p_hat: np.ndarray, chunk: int = 4096) -> float:
    """Mean tau-b(p, row) over the rows of ``p_hat`` (a row where all models tie counts as 0)."""
    total = 0.0
    for start in range(0, p_hat.shape[0], chunk):
        total += float(np.nan_to_num(_tau_b(p[None, :], p_hat[start : start + chunk]), nan=0.0).sum())
    return total / p_hat.shape[0]
