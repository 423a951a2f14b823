"""Helpers shared by the feature tests (a uniquely named module, so importing it never picks another conftest)."""

from __future__ import annotations

import torch
from tiny_models import TINY_HIDDEN
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from qwenscope import Sae, SaeConfig


def make_byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (ids 3..258); <pad>=0, <s>=1, </s>=2 (EOS) as in tiny_models."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        vocab[char] = 3 + i
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", bos_token="<s>")


def make_sae(d_sae: int = 96, k: int = 6, hookpoint: str = "resid_post.1", seed: int = 0) -> Sae:
    """A random TopK SAE on the tiny models' width, with a positive encoder bias so most features fire sometimes."""
    torch.manual_seed(seed)
    sae = Sae(SaeConfig(d_in=TINY_HIDDEN, d_sae=d_sae, k=k, hookpoint=hookpoint))
    with torch.no_grad():
        sae.b_enc.uniform_(0.0, 0.3)
    return sae
