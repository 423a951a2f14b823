"""Fixtures for the vLLM plugin's CPU pieces: small SAEs of each activation over a tiny model's width (64)."""

import pytest
import torch

from qwenscope import Sae, SaeConfig


def make_sae(activation: str, layer: int = 1, d_in: int = 64, d_sae: int = 256, seed: int = 0) -> Sae:
    """A random SAE with large enough encoder weights that a few features fire at every token."""
    torch.manual_seed(seed)
    k = 8 if activation in ("topk", "batchtopk") else None
    sae = Sae(SaeConfig(d_in=d_in, d_sae=d_sae, k=k, activation=activation, hookpoint=f"resid_post.{layer}"))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.b_dec.normal_(0, 0.1)
        sae.b_enc.normal_(0, 0.1)
        if sae.threshold is not None:
            sae.threshold.uniform_(0.0, 0.5)
    return sae.requires_grad_(False)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def saes() -> dict[str, Sae]:
    """id -> SAE: ReLU SAEs at layers 1 and 2, a TopK and a JumpReLU SAE at layer 1."""
    return {
        "l1": make_sae("relu", 1, seed=0),
        "l2": make_sae("relu", 2, seed=1),
        "topk": make_sae("topk", 1, seed=2),
        "jump": make_sae("jumprelu", 1, seed=3),
    }
