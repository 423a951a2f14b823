"""Fixtures for the data tests: a byte-level tokenizer whose ids fit the tiny models' vocabulary (512)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHAT_TEMPLATE = "{% for m in messages %}<|user|>{{ m['content'] }}</s>{% endfor %}"


def make_byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (ids 3..258); <pad>=0, <s>=1, </s>=2 (EOS) as in tiny_models; <|user|>=259."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        vocab[char] = 3 + i
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="<pad>",
        bos_token="<s>",
        extra_special_tokens=["<|user|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny-model forwards are many small ops: one thread is faster, and far faster when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def byte_tokenizer() -> PreTrainedTokenizerFast:
    return make_byte_tokenizer()


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
