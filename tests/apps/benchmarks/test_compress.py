"""Compression: greedy maximum coverage against random subsets, the ranking kept, and the JSONL export."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from qwenscope import QwenscopeError
from qwenscope.apps.benchmarks.compress import compare_with_random, export_subset, greedy_cover, random_needed
from qwenscope.apps.benchmarks.measures import feature_counts, footprint_curve


def hubs_and_fillers(seed: int = 0) -> np.ndarray:
    """10 hub items with 10 features each (disjoint) and 90 fillers that each repeat one hub feature."""
    rng = np.random.default_rng(seed)
    m = np.zeros((100, 100), dtype=bool)
    for h in range(10):
        m[h * 10, h * 10 : h * 10 + 10] = True  # hubs scattered among the fillers
    fillers = [i for i in range(100) if i % 10]
    m[fillers, rng.integers(0, 100, len(fillers))] = True
    return m


def test_greedy_beats_random_by_far_on_a_constructed_case():
    m = hubs_and_fillers()
    picked = greedy_cover(m, target=0.9)
    assert sorted(picked) == list(range(0, 90, 10))  # 9 hubs give 90 of 100 features
    needed = random_needed(m, 0.9, n_samples=200, seed=0)
    assert len(picked) * 2 <= np.median(needed)
    kept = compare_with_random(m, picked, n_samples=200, seed=0)
    assert kept.kept == pytest.approx(0.9) and kept.random_kept_high < kept.kept
    assert kept.random_kept_low <= kept.random_kept_mean <= kept.random_kept_high


def test_greedy_takes_the_largest_gain_each_step_and_stops_at_target():
    rng = np.random.default_rng(3)
    m = rng.random((40, 60)) < 0.08
    m[:, 0] |= ~m.any(axis=1)
    size = np.count_nonzero(feature_counts(m))
    for target in (0.5, 0.9, 1.0):
        picked = greedy_cover(m, target=target)
        covered = np.zeros(60, dtype=bool)
        for item in picked:
            gains = (m & ~covered).sum(axis=1)
            assert gains[item] == gains.max() and item == int(np.argmax(gains))
            covered |= m[item]
        curve = footprint_curve(m, picked)
        assert curve[-1] >= target * size - 1e-9
        assert len(picked) == 1 or curve[-2] < target * size - 1e-9  # no item more than needed
    assert footprint_curve(m, greedy_cover(m, 1.0))[-1] == size


def test_rarity_weights_prefer_rare_features():
    m = np.zeros((5, 6), dtype=bool)
    m[0, [0, 1, 2]] = True  # three common features
    m[1:4, [0, 1, 2]] = True
    m[4, [3, 4]] = True  # two features no other item has
    assert greedy_cover(m, 0.6) == [0]  # 3 of 5 features: the largest plain gain
    assert greedy_cover(m, 0.6, weights="rarity") == [4, 0]  # weight 2 > 3 x 1/4
    w = np.ones(6)
    w[3] = 10.0
    assert greedy_cover(m, 0.6, weights=w) == [4, 0]


def test_random_needed_is_seeded_and_exact_for_disjoint_items():
    np.testing.assert_array_equal(random_needed(np.eye(10, dtype=bool), 0.5, n_samples=30), np.full(30, 5))
    m = hubs_and_fillers()
    np.testing.assert_array_equal(random_needed(m, 0.8, seed=4), random_needed(m, 0.8, seed=4))
    assert ((random_needed(m, 0.8) >= 8) & (random_needed(m, 0.8) <= 100)).all()


def test_ranking_kept_by_a_subset():
    rng = np.random.default_rng(0)
    m = hubs_and_fillers()
    skill = np.linspace(0.0, 1.0, 6)[:, None]
    scores = skill + rng.normal(scale=1.0, size=(6, 100))
    whole = compare_with_random(m, range(100), n_samples=50, scores=scores)
    assert whole.tau == 1.0 and whole.kept == 1.0 and whole.random_tau_mean == 1.0
    few = compare_with_random(m, [0, 10, 20], n_samples=300, seed=1, scores=SimpleNamespace(scores=scores))
    assert few.random_tau_low <= few.random_tau_mean <= few.random_tau_high
    assert few.random_tau_mean < 0.9  # three noisy items rank six models poorly on average
    assert set(few.as_dict()) >= {"kept", "tau", "random_tau_mean", "random_kept_mean"}
    assert compare_with_random(m, [0], n_samples=10).tau is None


def test_export_subset_keeps_original_ids(tmp_path):
    items = [SimpleNamespace(id=f"gsm8k/{i}", text=f"q{i}", answer=str(i), meta={"k": i}) for i in range(5)]
    out = export_subset(SimpleNamespace(items=items), [3, 0], tmp_path / "sub" / "small.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"id": "gsm8k/3", "index": 3, "text": "q3", "answer": "3", "meta": {"k": 3}},
        {"id": "gsm8k/0", "index": 0, "text": "q0", "answer": "0", "meta": {"k": 0}},
    ]
    out = export_subset(["a", "b", "c"], np.array([2]), tmp_path / "ids.jsonl")
    assert json.loads(out.read_text()) == {"id": "c", "index": 2}


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: greedy_cover(np.eye(3, dtype=bool), target=0.0), "(0, 1]"),
        (lambda: greedy_cover(np.eye(3, dtype=bool), target=1.5), "(0, 1]"),
        (lambda: greedy_cover(np.eye(3, dtype=bool), weights="often"), "unknown weights"),
        (lambda: greedy_cover(np.eye(3, dtype=bool), weights=np.ones(2)), "one value per feature"),
        (lambda: greedy_cover(np.zeros((0, 3), dtype=bool)), "no items"),
        (lambda: random_needed(np.eye(3, dtype=bool), 2.0), "(0, 1]"),
        (lambda: compare_with_random(np.eye(3, dtype=bool), [0, 0]), "twice"),
        (lambda: compare_with_random(np.eye(3, dtype=bool), [5]), "0..2"),
        (lambda: compare_with_random(np.eye(3, dtype=bool), [0], scores=np.ones((2, 4))), "score every item"),
        (lambda: export_subset([], [0], "x.jsonl"), "no items"),
        (lambda: export_subset([1, 2], [0], "x.jsonl"), "Benchmark"),
    ],
)
def test_bad_input_is_one_line(call, needle):
    with pytest.raises(QwenscopeError) as err:
        call()
    assert needle in str(err.value) and "\n" not in str(err.value)
