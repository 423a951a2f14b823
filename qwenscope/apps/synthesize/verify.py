"""The check that a candidate hits its mark: the target feature fires on the candidate's text alone.

    acts = verify(model, tokenizer, sae, "resid_post.9", ["generated text", ...], [1234, 77])
    acts[i, j] > 0        # feature 1234 (j = 0) fires on some token of text i; the value is its max activation

"Fires" is the classifier's definition (``qwenscope.features.encode_texts``, max pooling): active at some
non-special token of the text, read alone (never the prompt that produced it). An empty candidate fires nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qwenscope import Sae, check_sae_fits
from qwenscope.apps.synthesize.inventory import check_ids
from qwenscope.features import MAX_TOKENS, EncodeConfig, encode_texts


def verify(
    model: Any,
    tokenizer: Any,
    sae: Sae,
    hookpoint: str | None,
    texts: Sequence[str],
    features: Sequence[int],
    *,
    max_tokens: int = MAX_TOKENS,
) -> np.ndarray:
    """(len(texts), len(features)) float32: each feature's largest activation on each text (0: it does not fire)."""
    check_ids(features, sae)
    out = np.zeros((len(texts), len(features)), np.float32)
    rows = [i for i, t in enumerate(texts) if t.strip()]
    if rows and len(features):
        hook = check_sae_fits(sae, model, hookpoint).name
        cfg = EncodeConfig(max_tokens=max_tokens, cache=False)
        pooled = encode_texts(model, tokenizer, [texts[i] for i in rows], [sae], [hook], cfg)[0]
        out[rows] = pooled.pooled[:, list(features)].toarray()
    return out
