"""Metric functions on hand-checkable values, and the streaming accumulator against one-shot computation."""

import math

import pytest
import torch

from qwenscope import QwenscopeError
from qwenscope.evaluate import SaeMetrics
from qwenscope.evaluate.metrics import (
    cosine_similarity,
    dead_fraction,
    dense_fraction,
    explained_variance,
    feature_counts,
    fvu,
    l0,
    relative_norm,
)

X = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean (2, 0): total variance 1 + 1 = 2, sum ||x||^2 = 10
ACTS = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])  # 2 then 1 active: L0 1.5
IDS = torch.tensor([[0, 1, 2], [0, 1, 3]])  # features 0, 2, 3 fire once; 1 (only zero values) and 4 never


def test_perfect_reconstruction():
    assert fvu(X, X) == 0.0
    assert explained_variance(X, X) == 1.0
    assert cosine_similarity(X, X) == pytest.approx(1.0)
    assert relative_norm(X, X) == pytest.approx(1.0)


def test_hand_computed_values():
    mean = X.mean(0).expand_as(X)
    assert fvu(X, mean) == pytest.approx(1.0)  # predicting the mean explains nothing
    assert fvu(X, torch.zeros_like(X)) == pytest.approx(10 / 2)
    assert explained_variance(X, torch.zeros_like(X)) == pytest.approx(-4.0)
    assert fvu(X, X + torch.tensor([1.0, 0.0])) == pytest.approx(2 / 2)  # error 1 per token
    assert relative_norm(X, 2 * X) == pytest.approx(2.0)
    assert cosine_similarity(X, 2 * X) == pytest.approx(1.0)
    assert cosine_similarity(X, torch.zeros_like(X)) == 0.0
    x_hat = torch.tensor([[0.0, 1.0], [3.0, 3.0]])  # cos 0 and 1/sqrt(2)
    assert cosine_similarity(X, x_hat) == pytest.approx((0 + 2**-0.5) / 2)
    assert math.isnan(fvu(X[:1], X[:1]))  # one token has no variance


def test_sparsity_counts():
    assert l0(ACTS) == 1.5
    counts = feature_counts(ACTS, IDS, d_sae=5)
    assert counts.tolist() == [1, 0, 1, 1, 0]
    assert dead_fraction(counts) == pytest.approx(2 / 5)
    assert dense_fraction(counts, n_tokens=2) == pytest.approx(3 / 5)  # fire on 50% > 10%
    assert dense_fraction(counts, n_tokens=2, threshold=0.5) == 0.0  # 50% is not > 50%


def test_accumulator_hand_values():
    m = SaeMetrics(d_sae=5)
    m.update(X, X, ACTS, IDS)
    r = m.compute()
    assert r["n_tokens"] == 2 and r["fvu"] == 0.0 and r["explained_variance"] == 1.0 and r["mse"] == 0.0
    assert r["l0"] == 1.5 and r["n_dead"] == 2 and r["dead_fraction"] == 0.4 and r["n_dense"] == 3
    assert r["cosine_similarity"] == pytest.approx(1.0) and r["relative_norm"] == pytest.approx(1.0)


def _random_batches(n=600, d=16, d_sae=40, m=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = 1000.0 + torch.randn(n, d, generator=gen, dtype=torch.float64)  # a big mean: naive sums would cancel
    x_hat = x + 0.3 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    acts = torch.rand(n, m, generator=gen) * (torch.rand(n, m, generator=gen) > 0.3)
    ids = torch.randint(0, d_sae - 5, (n, m), generator=gen)  # the last 5 features are dead
    return x, x_hat, acts, ids


def test_streaming_equals_one_shot():
    x, x_hat, acts, ids = _random_batches()
    m = SaeMetrics(d_sae=40, dense_threshold=0.1)
    for start, stop in [(0, 1), (1, 1), (1, 100), (100, 437), (437, 600)]:  # uneven, one empty
        m.update(x[start:stop], x_hat[start:stop], acts[start:stop], ids[start:stop])
    r = m.compute()
    counts = feature_counts(acts, ids, 40)
    assert r["n_tokens"] == 600
    assert r["fvu"] == pytest.approx(fvu(x, x_hat), rel=1e-9)
    assert r["explained_variance"] == pytest.approx(explained_variance(x, x_hat), rel=1e-9)
    assert r["mse"] == pytest.approx((x - x_hat).pow(2).mean().item(), rel=1e-9)
    assert r["l0"] == pytest.approx(l0(acts), rel=1e-12)
    assert r["dead_fraction"] == dead_fraction(counts) and r["n_dead"] >= 5
    assert r["dense_fraction"] == dense_fraction(counts, 600, 0.1)
    assert r["cosine_similarity"] == pytest.approx(cosine_similarity(x, x_hat), rel=1e-12)
    assert r["relative_norm"] == pytest.approx(relative_norm(x, x_hat), rel=1e-12)
    assert torch.equal(m.counts, counts)


def test_streaming_with_mask_and_leading_dims():
    x, x_hat, acts, ids = _random_batches(n=60)
    mask = torch.rand(60, generator=torch.Generator().manual_seed(1)) > 0.5
    m = SaeMetrics(d_sae=40)
    m.update(
        x.reshape(6, 10, -1),
        x_hat.reshape(6, 10, -1),
        acts.reshape(6, 10, -1),
        ids.reshape(6, 10, -1),
        mask=mask.reshape(6, 10),
    )
    one = SaeMetrics(d_sae=40)
    one.update(x[mask], x_hat[mask], acts[mask], ids[mask])
    assert m.compute() == one.compute()
    assert m.n_tokens == int(mask.sum())


def test_sae_forward_feeds_the_accumulator(identity_sae):
    sae = identity_sae(d_in=8)
    x = torch.randn(3, 5, 8)
    out = sae(x)
    m = SaeMetrics(sae.d_sae)
    m.update(x, out.sae_out, out.top_acts, out.top_indices)
    r = m.compute()
    assert r["fvu"] == 0.0 and r["l0"] == 8.0  # exactly one of relu(x_i), relu(-x_i) is non-zero
    assert r["fvu"] == pytest.approx(out.fvu.item())


def test_empty_accumulator_and_errors():
    r = SaeMetrics(d_sae=3).compute()
    assert r["n_tokens"] == 0 and math.isnan(r["fvu"])
    with pytest.raises(QwenscopeError, match="must match"):
        fvu(X, X[:1])
    with pytest.raises(QwenscopeError, match="d_sae"):
        SaeMetrics(d_sae=0)
    with pytest.raises(QwenscopeError, match="dense_threshold"):
        SaeMetrics(d_sae=3, dense_threshold=2.0)
    m = SaeMetrics(d_sae=5)
    m.update(X, X, ACTS, IDS)
    with pytest.raises(QwenscopeError, match="width"):
        m.update(torch.ones(2, 3), torch.ones(2, 3), ACTS, IDS)
    with pytest.raises(QwenscopeError, match="leading dims"):
        m.update(X, X, ACTS[:1], IDS[:1])
