"""Fixtures for the feature tests: a tiny Llama, a byte-level tokenizer that fits its vocabulary, a random TopK SAE."""

from __future__ import annotations

import pytest
from features_helpers import make_sae
from tiny_models import build_tiny, make_byte_tokenizer
from transformers import PreTrainedTokenizerFast

from qwenscope import Sae


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def byte_tokenizer() -> PreTrainedTokenizerFast:
    return make_byte_tokenizer()


@pytest.fixture(scope="session")
def llama():
    """A 2-layer random Llama (hidden 64, vocab 512); session-scoped, do not change its weights."""
    return build_tiny("llama", num_layers=2)


@pytest.fixture(scope="session")
def sae() -> Sae:
    return make_sae()


@pytest.fixture(scope="session")
def docs() -> list[str]:
    """~60 short documents, ~3,500 byte tokens."""
    return [f"Doc {i}: " + " ".join(f"w{(i * 7 + j) % 31}" for j in range(5 + i % 11)) for i in range(60)]
