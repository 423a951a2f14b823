"""Difference-in-means directions: the residual's mean on positive texts minus its mean on negative ones.

    dim = diff_in_means(model, tokenizer, ["The sea was calm", ...], ["The market fell", ...], "resid_post.15")

The steering and detection baseline of CAA (Rimsky et al. 2024) and AxBench (Wu et al. 2025). Means are over the
scored tokens of each set, the tokens contrastive search reads (position 0 and special tokens excluded), each token
weighing the same. ``qwenscope.sae.direction_sae`` turns the direction into a one-feature SAE that ``steer``, the
server and the CLI take like any other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qwenscope.errors import QwenscopeError
from qwenscope.features.encode import read_batches, tokenize_texts


@torch.no_grad()
def mean_activation(model: nn.Module, tokenizer, hookpoint: str, texts: Sequence[str], what: str = "texts") -> Tensor:
    """(d,) float64 on the CPU: the activation at ``hookpoint`` averaged over the scored tokens of ``texts``."""
    if isinstance(texts, str) or not texts or any(not t.strip() for t in texts):
        raise QwenscopeError(f"the {what} texts must be a non-empty list of non-empty texts")
    total: Tensor | None = None
    n = 0
    for batch in read_batches(model, tokenizer, tokenize_texts(tokenizer, texts, None), [hookpoint], skip_first=True):
        acts = batch.acts[hookpoint]
        kept = acts[batch.keep.to(acts.device)].double().sum(0).cpu()
        total = kept if total is None else total + kept
        n += int(batch.keep.sum())
    if total is None or n == 0:
        raise QwenscopeError(f"the {what} texts have no token past the first; use texts of at least two tokens")
    return total / n


def diff_in_means(
    model: nn.Module, tokenizer, positive: Sequence[str], negative: Sequence[str], hookpoint: str
) -> Tensor:
    """(d,) float32: ``mean_activation(positive) - mean_activation(negative)`` at ``hookpoint`` (the module doc)."""
    pos = mean_activation(model, tokenizer, hookpoint, positive, "positive")
    neg = mean_activation(model, tokenizer, hookpoint, negative, "negative")
    return (pos - neg).float()
