"""What each text turns on at each hookpoint, pooled over its tokens: the input of the feature rule and the probes.

    pooled = pool_texts(model, tokenizer, texts, [sae_l3, sae_l15])
    pooled[0].fires          # scipy.sparse.csr_matrix bool (n_texts, d_sae): feature j fires on some token of text i
    pooled[0].max_acts       # csr float32 (n_texts, d_sae): j's largest activation over text i's tokens
    pooled[0].mean_acts      # ndarray float32 (n_texts, d_in): the raw hookpoint activations, averaged over tokens

"Fires" is the report's definition (section 5): active at any token. Special tokens (BOS, pads) are left out: they
are the same in every text, so a feature firing there says nothing about the text. Texts are cut to ``max_tokens``
tokens. The reading, batching and cache are the core's ``qwenscope.features.encode_texts`` (max pooling, with the
mean activations); this module only names its result as the classifier uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from torch import nn

from qwenscope import Sae
from qwenscope.features import MAX_TOKENS, EncodeConfig, encode_texts
from qwenscope.features import tokenize_texts as tokenize_texts

__all__ = ["MAX_TOKENS", "Pooled", "pool_texts", "tokenize_texts"]


@dataclass
class Pooled:
    """The pooled features of some texts at one hookpoint."""

    hookpoint: str
    max_acts: sp.csr_matrix
    """float32 (n_texts, d_sae): each feature's largest activation over the text's tokens (0: never fires)."""
    mean_acts: np.ndarray
    """float32 (n_texts, d_in): the raw activations at the hookpoint, averaged over the text's tokens."""
    n_tokens: np.ndarray
    """int (n_texts,): the tokens read per text (after the cut, special tokens left out)."""

    @property
    def fires(self) -> sp.csr_matrix:
        """bool (n_texts, d_sae): the feature is active at some token of the text."""
        out = sp.csr_matrix(self.max_acts > 0, dtype=bool)
        out.eliminate_zeros()
        return out

    def rows(self, rows: Sequence[int] | np.ndarray) -> Pooled:
        """The pooled features of some of the texts, in the order given."""
        idx = np.asarray(rows, dtype=np.int64)
        return Pooled(self.hookpoint, self.max_acts[idx], self.mean_acts[idx], self.n_tokens[idx])


def pool_texts(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    saes: Sequence[Sae],
    hookpoints: Sequence[str | None] | None = None,
    *,
    max_tokens: int = MAX_TOKENS,
    batch_size: int = 16,
    cache: bool = True,
    progress: bool = True,
) -> list[Pooled]:
    """The pooled features of ``texts`` under each SAE (one ``Pooled`` each, in order): cached results where they
    exist, one early-stopped pass for the rest. ``hookpoints``: where each SAE reads (default: its own record)."""
    cfg = EncodeConfig(pooling="max", max_tokens=max_tokens, mean_acts=True, batch_size=batch_size, cache=cache)
    encoded = encode_texts(model, tokenizer, texts, saes, hookpoints, cfg, progress=progress)
    return [Pooled(e.hookpoint, e.pooled, e.mean_acts, e.n_tokens) for e in encoded if e.mean_acts is not None]
