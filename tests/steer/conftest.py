"""Fixtures for the steering tests: a tiny Qwen3 saved with the real Qwen3 tokenizer, and a random SAE."""

import pytest
import torch
from tiny_models import save_tiny_qwen3

from qwenscope import Sae, SaeConfig


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(model folder, SAE folder) on disk, like a user's."""
    root = tmp_path_factory.mktemp("steer-cli")
    save_tiny_qwen3(root / "model")
    torch.manual_seed(1)
    Sae(SaeConfig(d_in=64, d_sae=128, k=4, hookpoint="resid_post.0")).save(root / "sae")
    return root / "model", root / "sae"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""
