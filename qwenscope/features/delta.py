"""Features that tell two sets of texts apart, text by text: ``Δ = P(fires | positive) − P(fires | negative)``.

    fires = encode_texts(model, tokenizer, [*positives, *negatives], [sae])[0].fires    # csr bool (n, d_sae)
    labels = np.array([1] * len(positives) + [0] * len(negatives))
    rank_features(fires, labels, "resid_post.9", k=5)      # FeatureDelta list, largest Δ first (ties: smaller id)

"Fires" is at the level of texts (active at some token of the text: ``EncodedTexts.fires``), as in the Qwen-Scope
report's classifier (section 5); ``qwenscope.features.contrastive`` compares token-level rates instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from qwenscope.errors import QwenscopeError


@dataclass
class FeatureDelta:
    """One feature and how much more often it fires on the positive texts."""

    hookpoint: str
    """Where the SAE reads."""
    id: int
    """The feature id."""
    delta: float
    """P(fires | positive) - P(fires | negative)."""
    p_pos: float
    """The share of the positive texts it fires on."""
    p_neg: float
    """The share of the negative texts it fires on."""


def check_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Labels as an int array of 0/1 with both classes present, one per text."""
    y = np.asarray(labels)
    if y.shape != (n,):
        raise QwenscopeError(f"{y.shape[0] if y.ndim else 0} labels for {n} texts; give one label per text")
    if not np.isin(y, (0, 1)).all():
        raise QwenscopeError("labels must be 0 or 1")
    if y.min() == y.max():
        raise QwenscopeError(
            f"the discovery data holds only label {int(y[0])} ({n} examples); ranking features needs both "
            "positive (1) and negative (0) examples, e.g. toxic and clean ones"
        )
    return y.astype(np.int64)


def firing_rates(fires: sp.csr_matrix, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d_sae,) P(fires | label 1) and P(fires | label 0): the share of each class's texts the feature fires on."""
    y = check_labels(labels, fires.shape[0])
    f = sp.csr_matrix(fires, dtype=bool)
    pos = np.asarray(f[y == 1].sum(axis=0)).ravel() / (y == 1).sum()
    neg = np.asarray(f[y == 0].sum(axis=0)).ravel() / (y == 0).sum()
    return pos, neg


def rank_features(fires: sp.csr_matrix, labels: np.ndarray, hookpoint: str, k: int) -> list[FeatureDelta]:
    """The ``k`` features of largest Δ at one hookpoint, largest first (ties: the smaller id)."""
    pos, neg = firing_rates(fires, labels)
    delta = pos - neg
    order = np.lexsort((np.arange(len(delta)), -delta))[:k]
    return [FeatureDelta(hookpoint, int(i), float(delta[i]), float(pos[i]), float(neg[i])) for i in order]
