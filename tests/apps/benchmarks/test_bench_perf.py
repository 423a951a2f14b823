"""bench/benchmarks_perf.py: its stand-in for measures.performance_redundancy against a brute-force enumeration of
every subset, and its checkpoint list (six checkpoints, every shipped SAE layer)."""

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau

BENCH = Path(__file__).resolve().parents[3] / "bench" / "benchmarks_perf.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_perf", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks_perf"] = module
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as error:
        if error.name != "qwenscope.apps.benchmarks.data":
            raise
        pytest.skip("bench/benchmarks_perf.py needs qwenscope.apps.benchmarks.data (helper A's, not merged yet)")
    yield module
    sys.modules.pop("benchmarks_perf", None)


def _brute_force_r(scores):
    """(1/N) sum_n mean over ALL subsets of size n of tau-b(p, p_hat(S)); a subset where all models tie gives 0."""
    n_items = scores.shape[1]
    p = scores.mean(1)
    per_n = []
    for n in range(1, n_items + 1):
        taus = []
        for subset in itertools.combinations(range(n_items), n):
            p_hat = scores[:, subset].mean(1)
            tau = kendalltau(p, p_hat).statistic
            taus.append(0.0 if np.isnan(tau) else tau)
        per_n.append(np.mean(taus))
    return float(np.mean(per_n))


def test_fallback_tau_b_matches_scipy(bench):
    rng = np.random.default_rng(0)
    p = rng.integers(0, 3, size=5).astype(float)  # ties on both sides
    rows = rng.integers(0, 3, size=(40, 5)).astype(float)
    rows[0] = 1.0  # all models tie: 0, where scipy gives NaN
    want = [0.0 if np.isnan(t := kendalltau(p, r).statistic) else t for r in rows]
    np.testing.assert_allclose(bench._tau_b(p, rows), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_fallback_r_agrees_with_enumerating_every_subset(bench, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 2, size=(4, 8)).astype(float) + rng.normal(0, 0.3, size=(4, 1))  # 1/0 plus model skill
    exact = _brute_force_r(scores)
    estimate = bench.performance_redundancy_mc(scores, n_samples=4000, seed=seed)
    assert abs(estimate - exact) < 0.01
    assert bench.performance_redundancy_mc(scores, n_samples=50, seed=3) == bench.performance_redundancy_mc(
        scores, n_samples=50, seed=3
    )  # seeded


def test_six_checkpoints_cover_every_shipped_sae_layer(bench):
    assert len(bench.CHECKPOINTS) == 6
    assert {hp for model, hp in bench.CHECKPOINTS.values() if model == "smollm2-135m"} == {
        None,
        "resid_post.3",
        "resid_post.15",
        "resid_post.25",
    }
    assert {hp for model, hp in bench.CHECKPOINTS.values() if model == "gemma3-270m"} == {None, "resid_post.9"}
    assert len({bench.file_name(c) for c in bench.CHECKPOINTS}) == 6  # one score file each
