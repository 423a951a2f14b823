"""The feature measures against brute force: c_n over all subsets, tau/rho against scipy, R by enumeration."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats

from qwenscope import QwenscopeError
from qwenscope.apps.benchmarks.measures import (
    Coverage,
    coverage_exact,
    coverage_mc,
    feature_counts,
    footprint,
    footprint_curve,
    kendall_tau,
    overlap,
    overlap_matrix,
    performance_redundancy,
    redundancy,
    spearman,
    spearman_interval,
    symmetric_overlap,
    unique_features,
)


def random_sets(n_items: int, d_sae: int, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.random((n_items, d_sae)) < density
    m[:, 0] |= ~m.any(axis=1)  # every item fires something
    return m


def brute_coverage(m: np.ndarray) -> np.ndarray:
    """c_n as the mean of |F(S)| / |F(D)| over every subset S of size n."""
    n_items, size = m.shape[0], m.any(axis=0).sum()
    return (
        np.array(
            [
                np.mean([m[list(s)].any(axis=0).sum() for s in itertools.combinations(range(n_items), n)])
                for n in range(1, n_items + 1)
            ]
        )
        / size
    )


@pytest.mark.parametrize(("n_items", "density", "seed"), [(5, 0.3, 0), (8, 0.15, 1), (12, 0.1, 2), (12, 0.05, 3)])
def test_coverage_exact_equals_enumeration_and_lies_in_mc_band(n_items, density, seed):
    m = random_sets(n_items, 40, density, seed)
    want = brute_coverage(m)
    got = coverage_exact(m)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    mc = coverage_mc(m, n_samples=400, seed=seed)
    assert isinstance(mc, Coverage)
    np.testing.assert_array_equal(mc.ns, np.arange(1, n_items + 1))
    assert np.all(mc.low <= want + 1e-12) and np.all(want <= mc.high + 1e-12)
    assert np.abs(mc.mean - want).max() < 0.05  # 400 samples: the mean is close, not only inside the band


def test_coverage_exact_at_chosen_sizes_and_sparse_input():
    m = random_sets(12, 30, 0.2, 7)
    full = coverage_exact(m)
    np.testing.assert_allclose(coverage_exact(sp.csr_matrix(m), ns=[1, 4, 12]), full[[0, 3, 11]], atol=1e-15)
    assert coverage_exact(m, ns=[12])[0] == pytest.approx(1.0, abs=1e-12)


def test_coverage_is_stable_for_thousands_of_items_and_duplication_raises_redundancy():
    m = sp.random(1319, 9216, density=30 / 9216, format="csr", random_state=0, dtype=np.float64) > 0
    c = coverage_exact(m)
    d = feature_counts(m)
    size = np.count_nonzero(d)
    assert np.isfinite(c).all()
    assert np.all(np.diff(c) >= -1e-12)  # rises monotonically
    assert c[-1] == pytest.approx(1.0, abs=1e-12)
    assert c[0] == pytest.approx(d.sum() / 1319 / size, abs=1e-12)  # c_1 = mean |F(x)| / |F(D)|
    assert np.diff(c)[:10].mean() > np.diff(c)[-10:].mean()  # and flattens
    doubled = sp.vstack([m, m]).tocsr()
    c2 = coverage_exact(doubled)
    assert np.isfinite(c2).all() and c2[-1] == pytest.approx(1.0, abs=1e-12)
    assert redundancy(doubled) > redundancy(m)


def test_redundancy_extremes():
    assert redundancy(np.ones((7, 5), dtype=bool)) == pytest.approx(1.0, abs=1e-12)  # every item the same
    disjoint = np.eye(6, dtype=bool)  # c_n = n / N
    np.testing.assert_allclose(coverage_exact(disjoint), np.arange(1, 7) / 6, atol=1e-12)
    assert redundancy(disjoint) == pytest.approx(7 / 12, abs=1e-12)
    assert redundancy(np.array([[True, False]])) == 1.0


def test_coverage_mc_is_seeded():
    m = random_sets(50, 60, 0.05, 0)
    a, b, c = coverage_mc(m, seed=3), coverage_mc(m, seed=3), coverage_mc(m, seed=4)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert not np.array_equal(a.mean, c.mean)
    assert np.all(a.low <= a.mean) and np.all(a.mean <= a.high)
    assert set(a.as_dict()) == {"ns", "mean", "low", "high"}


def test_footprint_and_curve_accept_every_input_form():
    m = np.zeros((3, 10), dtype=bool)
    m[0, [7, 2]] = True
    m[2, [2, 9]] = True
    for form in (m, sp.csr_matrix(m), m.astype(np.float32), SimpleNamespace(matrix=sp.csr_matrix(m))):
        np.testing.assert_array_equal(footprint(form), [2, 7, 9])
    np.testing.assert_array_equal(footprint_curve(m, [2, 1, 0]), [2, 2, 3])
    np.testing.assert_array_equal(feature_counts(m)[[2, 7, 9]], [2, 1, 1])


def test_overlap_properties():
    rng = np.random.default_rng(0)
    a, b = rng.random((20, 50)) < 0.05, rng.random((30, 50)) < 0.03
    a[0, 0] = b[0, 0] = True
    fa, fb = set(footprint(a)), set(footprint(b))
    inter = len(fa & fb)
    assert overlap(a, b) == pytest.approx(inter / len(fa))
    assert overlap(a, b) * len(fa) == pytest.approx(overlap(b, a) * len(fb))
    assert symmetric_overlap(a, b) == symmetric_overlap(b, a) == pytest.approx(inter / min(len(fa), len(fb)))
    assert symmetric_overlap(a, b) >= max(overlap(a, b), overlap(b, a))
    assert overlap(a, a) == 1.0
    assert symmetric_overlap(a, a[:5]) == 1.0  # a subset's footprint lies inside
    assert overlap(np.eye(4, dtype=bool)[:2], np.eye(4, dtype=bool)[2:]) == 0.0
    names, mat = overlap_matrix({"a": a, "b": b, "c": a[:5]})
    assert names == ["a", "b", "c"]
    assert mat[0, 1] == pytest.approx(overlap(a, b)) and mat[1, 0] == pytest.approx(overlap(b, a))
    assert mat[2, 0] == 1.0 and np.allclose(np.diag(mat), 1.0)
    _, sym = overlap_matrix({"a": a, "b": b, "c": a[:5]}, symmetric=True)
    np.testing.assert_allclose(sym, sym.T)
    assert sym[0, 2] == 1.0


def test_unique_features_are_in_no_other_and_ordered_by_use():
    target = np.zeros((4, 8), dtype=bool)
    target[:, 1] = True  # shared
    target[:3, 5] = True  # unique, 3 items
    target[0, 3] = target[1, 6] = True  # unique, 1 item each
    other = np.zeros((2, 8), dtype=bool)
    other[0, 1] = other[1, 4] = True
    np.testing.assert_array_equal(unique_features(target, [other]), [5, 3, 6])
    np.testing.assert_array_equal(unique_features(target, []), [1, 5, 3, 6])
    assert unique_features(target, [target]).size == 0


def test_kendall_and_spearman_equal_scipy_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(2, 30))
        levels = int(rng.integers(2, 6)) if trial % 2 else 10**6  # half with many ties
        x, y = rng.integers(0, levels, n).astype(float), rng.integers(0, levels, n).astype(float)
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        assert kendall_tau(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)
        assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0 and spearman([1, 2, 3], [10, 20, 35]) == 1.0


def brute_performance_redundancy(scores: np.ndarray) -> float:
    p = scores.mean(axis=1)
    per_n = []
    for n in range(1, scores.shape[1] + 1):
        taus = []
        for s in itertools.combinations(range(scores.shape[1]), n):
            tau = scipy.stats.kendalltau(p, scores[:, list(s)].mean(axis=1)).statistic
            taus.append(0.0 if np.isnan(tau) else tau)  # all models tie on S: tau 0
        per_n.append(np.mean(taus))
    return float(np.mean(per_n))


def test_performance_redundancy_equals_enumeration():
    rng = np.random.default_rng(1)
    acc = (rng.random((5, 7)) < np.linspace(0.2, 0.8, 5)[:, None]).astype(float)  # 0/1 accuracies: many ties
    want = brute_performance_redundancy(acc)
    assert performance_redundancy(acc, n_samples=200) == pytest.approx(want, abs=1e-12)  # C(7, n) <= 35: exact
    loglik = rng.normal(size=(4, 10)) + np.arange(4)[:, None] * 0.3
    want = brute_performance_redundancy(loglik)
    got = performance_redundancy(SimpleNamespace(scores=loglik), n_samples=300, seed=0)  # sampled for 3 <= n <= 7
    assert got == pytest.approx(want, abs=0.02)
    assert performance_redundancy(loglik, ns=[10]) == 1.0  # the full set ranks the models as p does


def test_performance_redundancy_is_higher_for_consistent_items():
    rng = np.random.default_rng(2)
    skill = np.arange(5, dtype=float)[:, None]
    consistent = skill + 0.1 * rng.normal(size=(5, 40))
    noisy = skill + 3.0 * rng.normal(size=(5, 40))
    assert performance_redundancy(consistent, n_samples=50) == pytest.approx(1.0)  # every item ranks them alike
    assert performance_redundancy(noisy, n_samples=50) < 0.9


def test_spearman_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=17)
    y = x + 0.5 * rng.normal(size=17)
    rho, low, high = spearman_interval(x, y, n_boot=500, seed=1)
    assert rho == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert -1 <= low < rho < high <= 1
    assert spearman_interval(x, y, n_boot=500, seed=1) == (rho, low, high)
    assert spearman_interval(x, 2 * x + 1, n_boot=200) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: footprint(np.zeros((0, 5), dtype=bool)), "no items"),
        (lambda: coverage_exact(np.zeros((3, 5), dtype=bool)), "empty footprint"),
        (lambda: coverage_exact(np.zeros((2, 3, 4), dtype=bool)), "2-D"),
        (lambda: coverage_exact(np.eye(3, dtype=bool), ns=[0, 2]), "1..3"),
        (lambda: coverage_mc(np.eye(3, dtype=bool), level=1.5), "level"),
        (lambda: overlap(np.eye(3, dtype=bool), np.eye(4, dtype=bool)), "same SAE"),
        (lambda: overlap_matrix({"a": np.eye(3, dtype=bool), "b": np.eye(4, dtype=bool)}), "same SAE"),
        (lambda: unique_features(np.eye(3, dtype=bool), [np.eye(4, dtype=bool)]), "same SAE"),
        (lambda: kendall_tau([1, 2, 3], [1, 2]), "same length"),
        (lambda: performance_redundancy(np.ones((3, 4))), "same mean score"),
        (lambda: performance_redundancy(np.ones(4)), "n_models"),
        (lambda: spearman_interval([1, 2], [2, 1]), "at least 3"),
    ],
)
def test_bad_input_is_one_line(call, needle):
    with pytest.raises(QwenscopeError) as err:
        call()
    assert needle in str(err.value) and "\n" not in str(err.value)
