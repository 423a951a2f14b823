"""Reconstruction and sparsity metrics of an SAE: pure functions, and a streaming accumulator over many batches.

All inputs are flattened to tokens: ``x`` and ``x_hat`` of shape (..., d_in) become (n, d_in), the sparse code
``top_acts`` / ``top_indices`` of shape (..., m) becomes (n, m). Sums are taken in float64.

| metric                | definition (over the n evaluated tokens)                                         |
|-----------------------|----------------------------------------------------------------------------------|
| ``fvu``               | sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (mean over all tokens, per dimension) |
| ``explained_variance``| 1 - fvu                                                                          |
| ``mse``               | sum ||x - x_hat||^2 / (n * d_in)                                                 |
| ``l0``                | mean number of active (non-zero) features per token                              |
| ``dead_fraction``     | fraction of features that never fire                                             |
| ``dense_fraction``    | fraction of features that fire on more than ``dense_threshold`` of the tokens    |
| ``cosine_similarity`` | mean over tokens of cos(x, x_hat)                                                |
| ``relative_norm``     | mean over tokens of ||x_hat|| / ||x|| (1 is ideal; < 1 means shrinkage)           |

``SaeMetrics`` gives exactly the one-shot values over all batches together with bounded memory: the variance
about the global mean is merged batch by batch (Chan et al.'s parallel update), not recomputed from raw sums.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qwenscope.errors import QwenscopeError

DENSE_THRESHOLD = 0.1
"""A feature firing on more than this fraction of tokens counts as dense."""
_EPS = 1e-12


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1]).double()


def _check_pair(x: Tensor, x_hat: Tensor) -> None:
    if x.shape != x_hat.shape:
        raise QwenscopeError(f"x has shape {tuple(x.shape)} but x_hat has {tuple(x_hat.shape)}; they must match")


# ---------------------------------------------------------------- one-shot functions
def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2; NaN if x has no variance."""
    _check_pair(x, x_hat)
    xf, hf = _flat(x), _flat(x_hat)
    total = (xf - xf.mean(0)).pow(2).sum().item()
    return (xf - hf).pow(2).sum().item() / total if total > 0 else math.nan


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """1 - FVU."""
    return 1.0 - fvu(x, x_hat)


def l0(top_acts: Tensor) -> float:
    """Mean number of active (non-zero) features per token of a sparse code (or of dense activations)."""
    acts = top_acts.reshape(-1, top_acts.shape[-1])
    return (acts != 0).sum(-1).double().mean().item() if acts.shape[0] else math.nan


def feature_counts(top_acts: Tensor, top_indices: Tensor, d_sae: int) -> Tensor:
    """Number of tokens on which each feature fires, int64 of shape (d_sae,)."""
    if top_acts.shape != top_indices.shape:
        raise QwenscopeError(f"sparse code shapes differ: {tuple(top_acts.shape)} vs {tuple(top_indices.shape)}")
    active = top_indices.reshape(-1)[top_acts.reshape(-1) != 0]
    return torch.bincount(active.long().cpu(), minlength=d_sae)


def dead_fraction(counts: Tensor) -> float:
    """Fraction of features with a zero firing count."""
    return (counts == 0).double().mean().item()


def dense_fraction(counts: Tensor, n_tokens: int, threshold: float = DENSE_THRESHOLD) -> float:
    """Fraction of features firing on more than ``threshold`` of ``n_tokens`` tokens."""
    return (counts.double() > threshold * n_tokens).double().mean().item()


def cosine_similarity(x: Tensor, x_hat: Tensor) -> float:
    """Mean over tokens of cos(x, x_hat) (0 where either vector is zero)."""
    _check_pair(x, x_hat)
    return _cosines(_flat(x), _flat(x_hat)).mean().item()


def relative_norm(x: Tensor, x_hat: Tensor) -> float:
    """Mean over tokens of ||x_hat|| / ||x||."""
    _check_pair(x, x_hat)
    return _norm_ratios(_flat(x), _flat(x_hat)).mean().item()


def _cosines(xf: Tensor, hf: Tensor) -> Tensor:
    return (xf * hf).sum(-1) / (xf.norm(dim=-1) * hf.norm(dim=-1)).clamp_min(_EPS)


def _norm_ratios(xf: Tensor, hf: Tensor) -> Tensor:
    return hf.norm(dim=-1) / xf.norm(dim=-1).clamp_min(_EPS)


# ---------------------------------------------------------------- streaming
class SaeMetrics:
    """Accumulates the metrics of the module doc over batches; ``compute()`` gives them as a dict of floats.

        metrics = SaeMetrics(sae.d_sae)
        for x in batches:                      # (..., d_in)
            out = sae(x)
            metrics.update(x, out.sae_out, out.top_acts, out.top_indices)
        metrics.compute()                      # {"explained_variance": ..., "l0": ..., ...}

    Memory is O(d_in + d_sae) whatever the number of tokens.
    """

    def __init__(self, d_sae: int, dense_threshold: float = DENSE_THRESHOLD) -> None:
        if d_sae <= 0:
            raise QwenscopeError(f"d_sae must be positive, got {d_sae}")
        if not 0 <= dense_threshold <= 1:
            raise QwenscopeError(f"dense_threshold is a fraction of tokens in [0, 1], got {dense_threshold}")
        self.d_sae = d_sae
        self.dense_threshold = dense_threshold
        self.n_tokens = 0
        self.counts = torch.zeros(d_sae, dtype=torch.long)
        """How many tokens each feature fired on so far."""
        self._mean: Tensor | None = None  # (d_in,) float64, running mean of x
        self._m2 = 0.0  # sum ||x - running mean||^2
        self._sq_err = 0.0  # sum ||x - x_hat||^2
        self._cos = 0.0
        self._ratio = 0.0
        self._active = 0
        self._d_in = 0

    def update(
        self, x: Tensor, x_hat: Tensor, top_acts: Tensor, top_indices: Tensor, mask: Tensor | None = None
    ) -> None:
        """Add a batch; ``mask`` (shape ``x.shape[:-1]``, True = count this token) selects tokens."""
        _check_pair(x, x_hat)
        if top_acts.shape[:-1] != x.shape[:-1]:
            raise QwenscopeError(
                f"sparse code has shape {tuple(top_acts.shape)} but x has {tuple(x.shape)}; leading dims must match"
            )
        if mask is not None:
            mask = mask.to(x.device, torch.bool)
            x, x_hat, top_acts, top_indices = x[mask], x_hat[mask], top_acts[mask], top_indices[mask]
        xf, hf = _flat(x), _flat(x_hat)
        n = xf.shape[0]
        if n == 0:
            return
        if self._mean is not None and xf.shape[1] != self._d_in:
            raise QwenscopeError(f"batch has width {xf.shape[1]} but earlier batches had {self._d_in}")
        self._merge_variance(xf)
        self._sq_err += (xf - hf).pow(2).sum().item()
        self._cos += _cosines(xf, hf).sum().item()
        self._ratio += _norm_ratios(xf, hf).sum().item()
        self._active += int((top_acts != 0).sum().item())
        self.counts += feature_counts(top_acts, top_indices, self.d_sae)
        self.n_tokens += n

    def _merge_variance(self, xf: Tensor) -> None:
        """Chan's parallel update of (n, mean, M2) with a batch's own (n_b, mean_b, M2_b)."""
        n_b = xf.shape[0]
        mean_b = xf.mean(0)
        m2_b = (xf - mean_b).pow(2).sum().item()
        if self._mean is None:
            self._mean, self._m2, self._d_in = mean_b, m2_b, xf.shape[1]
            return
        n_a, n = self.n_tokens, self.n_tokens + n_b
        delta = mean_b - self._mean
        self._m2 += m2_b + delta.pow(2).sum().item() * n_a * n_b / n
        self._mean = self._mean + delta * (n_b / n)

    def compute(self) -> dict[str, float]:
        """The metrics so far (NaN where undefined, e.g. before any token or with a single token for FVU)."""
        n = self.n_tokens
        if n == 0:
            nan = math.nan
            return {
                "n_tokens": 0,
                "fvu": nan,
                "explained_variance": nan,
                "mse": nan,
                "l0": nan,
                "dead_fraction": nan,
                "n_dead": 0,
                "dense_fraction": nan,
                "n_dense": 0,
                "cosine_similarity": nan,
                "relative_norm": nan,
            }
        fvu_ = self._sq_err / self._m2 if self._m2 > 0 else math.nan
        n_dense = int((self.counts.double() > self.dense_threshold * n).sum().item())
        n_dead = int((self.counts == 0).sum().item())
        return {
            "n_tokens": n,
            "fvu": fvu_,
            "explained_variance": 1.0 - fvu_,
            "mse": self._sq_err / (n * self._d_in),
            "l0": self._active / n,
            "dead_fraction": n_dead / self.d_sae,
            "n_dead": n_dead,
            "dense_fraction": n_dense / self.d_sae,
            "n_dense": n_dense,
            "cosine_similarity": self._cos / n,
            "relative_norm": self._ratio / n,
        }
