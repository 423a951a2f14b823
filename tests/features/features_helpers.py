"""Helpers shared by the feature tests (a uniquely named module, so importing it never picks another conftest)."""

from __future__ import annotations

import torch
from tiny_models import TINY_HIDDEN

from qwenscope import Sae, SaeConfig


def make_sae(d_sae: int = 96, k: int = 6, hookpoint: str = "resid_post.1", seed: int = 0) -> Sae:
    """A random TopK SAE on the tiny models' width, with a positive encoder bias so most features fire sometimes."""
    torch.manual_seed(seed)
    sae = Sae(SaeConfig(d_in=TINY_HIDDEN, d_sae=d_sae, k=k, hookpoint=hookpoint))
    with torch.no_grad():
        sae.b_enc.uniform_(0.0, 0.3 / 3**0.5)  # relative to encoder rows of norm 1/sqrt(3) (Sae's init)
    return sae
