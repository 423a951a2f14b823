"""Fixtures for the steering tests: a tiny Qwen3 saved with the real Qwen3 tokenizer, and a random SAE."""

import pytest
import torch
from tiny_models import tiny_config
from transformers import Qwen3ForCausalLM

from qwenscope import Sae, SaeConfig
from qwenscope.models.tokenizers import qwen3_tokenizer


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(model folder, SAE folder) on disk, like a user's."""
    root = tmp_path_factory.mktemp("steer-cli")
    tokenizer = qwen3_tokenizer()
    config = tiny_config("qwen3", num_layers=2)
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    torch.manual_seed(1)
    Sae(SaeConfig(d_in=64, d_sae=128, k=4, hookpoint="resid_post.0")).save(root / "sae")
    return root / "model", root / "sae"
