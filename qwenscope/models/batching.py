"""Padding rows of token ids (or per-token flags) into one (batch, seq) tensor, right or left, with the attention
mask. Right padding is for scoring (a real token never attends to a pad); left padding is for generation (every row
ends at the last column, where the next token is predicted)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from qwenscope.errors import QwenscopeError

Row = Sequence[int] | Sequence[bool] | Tensor


def pad_rows(
    rows: Sequence[Row], value: int | bool = 0, *, dtype: torch.dtype = torch.long, left: bool = False
) -> Tensor:
    """(B, S) tensor of ``dtype``, S the longest row: each row's values, the rest ``value`` (after the row, or
    before it with ``left=True``). Rows may be lists or 1-D tensors (on any device; the result is on the CPU)."""
    if not rows:
        raise QwenscopeError("no rows to pad; pass at least one sequence")
    tensors = [torch.as_tensor(r).reshape(-1).cpu() for r in rows]
    width = max(t.numel() for t in tensors)
    out = torch.full((len(tensors), width), value, dtype=dtype)
    for i, t in enumerate(tensors):
        span = slice(width - t.numel(), width) if left else slice(0, t.numel())
        out[i, span] = t.to(dtype)
    return out


def pad_ids(
    seqs: Sequence[Row], pad_id: int = 0, *, left: bool = False, mask_dtype: torch.dtype = torch.bool
) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)``, both (B, S): long ids padded with ``pad_id`` and a mask that is 1 at real
    tokens (bool by default; ``mask_dtype=torch.long`` for the form ``generate`` and the tokenizers return)."""
    ids = pad_rows(seqs, pad_id, left=left)
    ones = [torch.ones(torch.as_tensor(s).numel(), dtype=mask_dtype) for s in seqs]
    return ids, pad_rows(ones, 0, dtype=mask_dtype, left=left)
