"""Packing text into chunks, and the masks of positions to keep."""

from __future__ import annotations

import pytest
import torch

from qwenscope.data import chunk_tokens, norm_outlier_mask, token_mask
from qwenscope.errors import QwenscopeError

DOCS = ["short one", "x" * 45, "", "third document, médium", "a\n\nb"]


def _joined(tokenizer, docs, *, add_eos=True):
    ids = []
    for doc in docs:
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if add_eos else [])
    return torch.tensor(ids)


@pytest.mark.parametrize("seq_len", [2, 7, 16, 64])
def test_chunks_concatenate_to_the_token_stream(byte_tokenizer, seq_len):
    chunks = list(chunk_tokens(DOCS, byte_tokenizer, seq_len))
    stream = _joined(byte_tokenizer, DOCS)
    assert len(chunks) == len(stream) // seq_len
    assert all(c.shape == (seq_len,) and c.dtype == torch.long for c in chunks)
    if chunks:
        assert torch.equal(torch.cat(chunks), stream[: len(chunks) * seq_len])


def test_long_document_spans_chunks_and_eos_separates(byte_tokenizer):
    chunks = list(chunk_tokens(["y" * 30, "z" * 3], byte_tokenizer, 8))
    y, z, eos = (byte_tokenizer.convert_tokens_to_ids(c) for c in ("y", "z", "</s>"))
    flat = torch.cat(chunks).tolist()
    assert flat == [y] * 30 + [eos] + [z]  # 32 tokens of 35; the partial last chunk is dropped
    no_eos = torch.cat(list(chunk_tokens(["y" * 30, "z" * 3], byte_tokenizer, 11, add_eos=False))).tolist()
    assert no_eos == [y] * 30 + [z] * 3


def test_real_tokenizer_packing_is_exact():
    from qwenscope.models.tokenizers import qwen3_tokenizer

    tokenizer = qwen3_tokenizer()
    docs = ["Hello, world! The quick brown fox.", "你好，世界！", "def f(x):\n    return x ** 2\n"] * 5
    chunks = list(chunk_tokens(docs, tokenizer, 16))
    stream = _joined(tokenizer, docs)
    assert torch.equal(torch.cat(chunks), stream[: len(chunks) * 16])


def test_chat_renders_each_document_as_a_user_message(byte_tokenizer):
    chunks = list(chunk_tokens(["hi", "yo"], byte_tokenizer, 4, chat=True))
    user, eos = byte_tokenizer.convert_tokens_to_ids(["<|user|>", "</s>"])
    h, i, y, o = byte_tokenizer.convert_tokens_to_ids(list("hiyo"))
    # "<|user|>hi</s>" from the template, then the separator EOS
    assert torch.cat(chunks).tolist() == [user, h, i, eos, eos, user, y, o]


def test_chunking_errors(byte_tokenizer):
    with pytest.raises(QwenscopeError, match="seq_len must be at least 2"):
        list(chunk_tokens(DOCS, byte_tokenizer, 1))
    plain = byte_tokenizer.__class__(tokenizer_object=byte_tokenizer.backend_tokenizer)
    with pytest.raises(QwenscopeError, match="no EOS token.*add_eos=False"):
        list(chunk_tokens(DOCS, plain, 8))
    with pytest.raises(QwenscopeError, match="no chat template"):
        list(chunk_tokens(DOCS, plain, 8, chat=True, add_eos=False))


def test_token_mask_drops_first_position_and_specials(byte_tokenizer):
    user, eos, pad = byte_tokenizer.convert_tokens_to_ids(["<|user|>", "</s>", "<pad>"])
    ids = torch.tensor([[50, 51, eos, 52, user, 53], [60, pad, 61, 62, 63, 64]])
    keep = token_mask(ids, byte_tokenizer)
    assert keep.tolist() == [[False, True, False, True, False, True], [False, False, True, True, True, True]]
    assert token_mask(ids, byte_tokenizer, first_position=False, special_tokens=False).all()
    attention = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    keep = token_mask(ids, byte_tokenizer, first_position=False, special_tokens=False, attention_mask=attention)
    assert keep.tolist() == [[True] * 6, [False, False, True, True, True, True]]
    assert token_mask(ids[0], byte_tokenizer).tolist() == [False, True, False, True, False, True]  # 1-D input


def test_token_mask_on_a_qwen_chat_chunk():
    from qwenscope.models.tokenizers import qwen3_tokenizer

    tokenizer = qwen3_tokenizer()
    ids = next(chunk_tokens(["What is 2+2?"] * 4, tokenizer, 24, chat=True))
    kept = ids[token_mask(ids, tokenizer)]
    text = tokenizer.decode(kept)
    assert "<|im_start|>" not in text and "<|im_end|>" not in text and "<|endoftext|>" not in text
    assert "user" in text and "2+2" in text


def test_norm_outlier_mask():
    acts = torch.ones(2, 5, 3)
    acts[0, 0] *= 1000.0  # an attention sink
    acts[1, 3] *= 10.5  # just over 10x the median norm
    acts[1, 4] *= 9.5
    keep = norm_outlier_mask(acts, 10.0)
    assert keep.tolist() == [[False, True, True, True, True], [True, True, True, False, True]]
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[0, 1] = False
    keep = norm_outlier_mask(acts, 10.0, valid=valid)
    assert not keep[0, 1] and keep.sum() == 7
    assert norm_outlier_mask(acts, 2000.0).all()
    assert not norm_outlier_mask(acts, 10.0, valid=torch.zeros(2, 5, dtype=torch.bool)).any()
    with pytest.raises(QwenscopeError, match="must be positive"):
        norm_outlier_mask(acts, 0.0)


def test_norm_median_ignores_invalid_positions():
    acts = torch.ones(6, 4)
    acts[:4] *= 1000.0  # invalid (say, special) positions with huge norms would pull the median up
    valid = torch.tensor([False, False, False, False, True, True])
    acts[5] *= 50.0
    keep = norm_outlier_mask(acts, 10.0, valid=valid)
    # the median of the valid norms (2 and 100; torch takes the lower middle) is 2, so norm 100 is an outlier
    assert keep.tolist() == [False, False, False, False, True, False]
