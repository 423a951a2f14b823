"""Hand-built SAEs for the evaluation tests: one whose reconstruction is exact, one whose reconstruction is zero."""

import pytest
import torch
from tiny_models import TINY_HIDDEN, build_tiny

from qwenscope import Sae, SaeConfig


def make_identity_sae(d_in: int = TINY_HIDDEN, hookpoint: str | None = "resid_post.0") -> Sae:
    """d_sae = 2 d_in, W_enc = [I, -I], W_dec = [I; -I], ReLU: relu(x) - relu(-x) == x exactly."""
    sae = Sae(SaeConfig(d_in=d_in, d_sae=2 * d_in, activation="relu", hookpoint=hookpoint))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))  # (d_in, 2 d_in)
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))  # (2 d_in, d_in)
    return sae


def make_zero_sae(d_in: int = TINY_HIDDEN, hookpoint: str | None = "resid_post.1", k: int = 4) -> Sae:
    """A TopK SAE with W_dec = 0 and b_dec = 0: its reconstruction is exactly zero (= zero-ablation)."""
    torch.manual_seed(1)
    sae = Sae(SaeConfig(d_in=d_in, d_sae=32, k=k, hookpoint=hookpoint))
    with torch.no_grad():
        sae.W_dec.zero_()
    return sae


def make_random_sae(d_in: int = TINY_HIDDEN, hookpoint: str | None = "resid_post.1", seed: int = 0) -> Sae:
    torch.manual_seed(seed)
    sae = Sae(SaeConfig(d_in=d_in, d_sae=128, k=8, hookpoint=hookpoint))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.05)
        sae.b_dec.normal_(0, 0.05)
    return sae


@pytest.fixture
def identity_sae():
    return make_identity_sae


@pytest.fixture
def zero_sae():
    return make_zero_sae


@pytest.fixture
def random_sae():
    return make_random_sae


@pytest.fixture(scope="session")
def llama():
    """A 2-layer tiny Llama (fast); session-scoped, so tests must not change its weights."""
    return build_tiny("llama", num_layers=2)


@pytest.fixture(scope="session")
def token_rows():
    """(6, 12) random token ids."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(3, 512, (6, 12), generator=gen)
