"""Text to fixed-length token chunks (document packing), and the masks of positions worth training on.

Packing: documents are tokenized without special tokens and concatenated, each followed by the EOS token
(``add_eos``); the stream is cut into chunks of ``seq_len``. A document longer than ``seq_len`` spans chunks,
and the final partial chunk is dropped, so concatenating the chunks gives exactly the first
``n_chunks * seq_len`` tokens of the joined stream.

Masks say which positions to KEEP. Position 0 of every chunk is dropped by default: Qwen tokenizers add no BOS,
so position 0 is an ordinary token that the model turns into an attention sink with a huge residual norm.
Special tokens (EOS separators, chat markers, padding) are dropped too. ``norm_outlier_mask`` removes the
remaining rare huge-norm positions, as Qwen-Scope does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from qwenscope.errors import QwenscopeError
from qwenscope.models.batching import pad_ids

_TOKENIZE_BATCH = 64


def chunk_tokens(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    *,
    chat: bool = False,
    add_eos: bool = True,
) -> Iterator[Tensor]:
    """LongTensors of shape (seq_len,) packing ``texts`` (see the module doc).

    ``chat=True`` renders each text as one user message with the tokenizer's chat template first.
    """
    if seq_len < 2:
        raise QwenscopeError(f"seq_len must be at least 2, got {seq_len}")
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise QwenscopeError("the tokenizer has no EOS token to separate documents; pass add_eos=False")
    buffer: list[int] = []
    for ids in _token_lists(texts, tokenizer, chat):
        buffer.extend(ids)
        if add_eos:
            buffer.append(int(eos))
        if len(buffer) >= seq_len:
            n_full = len(buffer) // seq_len * seq_len
            block = torch.tensor(buffer[:n_full], dtype=torch.long)
            del buffer[:n_full]
            yield from block.view(-1, seq_len)  # (n_chunks, seq_len) -> rows


def _token_lists(texts: Iterable[str], tokenizer: PreTrainedTokenizerBase, chat: bool) -> Iterator[list[int]]:
    """Token ids of each text (no special tokens added), tokenized in small batches for speed."""
    batch: list[str] = []
    for text in texts:
        batch.append(render_chat(tokenizer, text) if chat else text)
        if len(batch) == _TOKENIZE_BATCH:
            yield from tokenizer(batch, add_special_tokens=False)["input_ids"]
            batch = []
    if batch:
        yield from tokenizer(batch, add_special_tokens=False)["input_ids"]


def render_chat(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """``text`` as one user message in the tokenizer's chat template (no generation prompt)."""
    if not getattr(tokenizer, "chat_template", None):
        raise QwenscopeError("the tokenizer has no chat template; use chat=False or a tokenizer with one")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
    return str(rendered)


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of every special token: BOS/EOS/PAD/... and added tokens flagged special (chat markers)."""
    ids = set(tokenizer.all_special_ids)
    for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    return sorted(i for i in ids if i is not None)


def token_mask(
    input_ids: Tensor,
    tokenizer: PreTrainedTokenizerBase,
    *,
    first_position: bool = True,
    special_tokens: bool = True,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Bool mask (same shape as ``input_ids``, (seq,) or (batch, seq)) of positions to KEEP.

    first_position: drop position 0 of each row (the attention sink).
    special_tokens: drop special tokens, including padding and EOS separators.
    attention_mask: drop positions where it is 0 (left or right padding).
    """
    keep = torch.ones_like(input_ids, dtype=torch.bool)
    if first_position:
        keep[..., 0] = False
    if special_tokens:
        specials = torch.tensor(special_token_ids(tokenizer), dtype=input_ids.dtype, device=input_ids.device)
        keep &= ~torch.isin(input_ids, specials)
    if attention_mask is not None:
        keep &= attention_mask.to(torch.bool)
    return keep


def norm_outlier_mask(acts: Tensor, m: float, *, valid: Tensor | None = None) -> Tensor:
    """Bool mask (acts.shape[:-1]) keeping positions whose L2 norm is at most ``m`` × the median norm.

    The median is taken over the ``valid`` positions (all if None), so dropped sinks do not shift it; invalid
    positions come out False.
    """
    if m <= 0:
        raise QwenscopeError(f"the outlier factor m must be positive, got {m}")
    norms = acts.float().norm(dim=-1)  # (..., d) -> (...)
    valid = torch.ones_like(norms, dtype=torch.bool) if valid is None else valid.to(torch.bool)
    if not valid.any():
        return valid.clone()
    median = norms[valid].median()
    return valid & (norms <= m * median)


@dataclass
class TokenBatch:
    """Right-padded token ids of some texts (``token_batches``)."""

    rows: list[int]
    """The texts' positions in the list given to ``token_batches``."""
    input_ids: Tensor
    attention_mask: Tensor
    lengths: Tensor
    """(batch,) real tokens per row."""


def token_batches(
    ids: Sequence[Sequence[int]], batch_size: int, max_batch_tokens: int, pad_id: int = 0, *, by_length: bool = True
) -> list[TokenBatch]:
    """Batches of items of similar length (longest first), right-padded: a real token never sees a pad.
    ``by_length=False`` keeps the items' order (consecutive items per batch)."""
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i)) if by_length else list(range(len(ids)))
    batches, start = [], 0
    while start < len(order):
        window = order[start : start + (1 if by_length else batch_size)]
        longest = max(len(ids[r]) for r in window)
        size = max(1, min(batch_size, max_batch_tokens // longest))
        rows = order[start : start + size]
        input_ids, mask = pad_ids([ids[r] for r in rows], pad_id, mask_dtype=torch.long)
        batches.append(TokenBatch(rows, input_ids, mask, mask.sum(1)))
        start += size
    return batches
