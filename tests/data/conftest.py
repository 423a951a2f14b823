"""Fixtures for the data tests: a byte-level tokenizer whose ids fit the tiny models' vocabulary (512)."""

from __future__ import annotations

import pytest
from tiny_models import build_tiny, make_byte_tokenizer
from transformers import PreTrainedTokenizerFast


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def byte_tokenizer() -> PreTrainedTokenizerFast:
    return make_byte_tokenizer(chat=True)  # <|user|>=259 and a chat template


@pytest.fixture(scope="session")
def tiny_llama():
    """A 4-layer random Llama (hidden 64); session-scoped, do not change its weights."""
    return build_tiny("llama", num_layers=4)


@pytest.fixture
def corpus(tmp_path):
    """A .txt file of 60 short documents (~3,000 bytes-as-tokens)."""
    docs = [f"Document number {i}: " + " ".join(f"word{(i * 7 + j) % 31}" for j in range(3 + i % 9)) for i in range(60)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path, docs
