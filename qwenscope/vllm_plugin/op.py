"""``qwenscope::steer``: one custom op that edits the residual stream of a batch of tokens, each by its own row.

    out = torch.ops.qwenscope.steer(hidden, rows, *table.tensors())      # hidden (T, d), rows (T,) int

For token t with row r = rows[t] (0 = not steered):

    h   = hidden[t] + add[r]                                   (in hidden's dtype)
    pre = h · enc[r, j] + bias[r, j]                           (j over the row's slots, in the table's dtype)
    a_j = relu(pre_j) · (pre_j > threshold[r, j])              the feature's own activation (``Sae.own_acts``)
    out = h + Σ_j (target[r, j] − a_j) · dec[r, j]

which is ``qwenscope.steer`` of the row's add entries, then its clamp / ablate entry with ``acts="own"``. Unsteered
tokens come out equal to ``hidden``. A functional op (no input is mutated) with a fake implementation, so
``torch.compile`` traces it as one opaque node; this body is plain torch (CPU, and any device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.library.custom_op("qwenscope::steer", mutates_args=())
def steer_op(
    hidden: Tensor, rows: Tensor, add: Tensor, enc: Tensor, bias: Tensor, threshold: Tensor, dec: Tensor, target: Tensor
) -> Tensor:
    """hidden (T, d), rows (T,) int, add (R, d), enc and dec (R, M, d), bias, threshold and target (R, M)."""
    out = hidden.clone()
    r = rows.long()
    for row in torch.unique(r).tolist():
        if row == 0:
            continue
        idx = (r == row).nonzero().squeeze(1)
        h = hidden.index_select(0, idx) + add[row].to(hidden.dtype)  # (n, d)
        pre = h.to(enc.dtype) @ enc[row].T + bias[row]  # (n, M)
        acts = F.relu(pre) * (pre > threshold[row])
        delta = (target[row] - acts) @ dec[row]  # (n, d); empty slots have zero decoder rows
        out.index_copy_(0, idx, h + delta.to(hidden.dtype))
    return out


@steer_op.register_fake
def _steer_fake(
    hidden: Tensor, rows: Tensor, add: Tensor, enc: Tensor, bias: Tensor, threshold: Tensor, dec: Tensor, target: Tensor
) -> Tensor:
    torch._check(rows.shape[0] == hidden.shape[0])
    return torch.empty_like(hidden)


def steer_hidden(hidden: Tensor, rows: Tensor, tables: tuple[Tensor, ...]) -> Tensor:
    """``qwenscope::steer`` on hidden states of any leading shape (..., d), ``rows`` of shape (...)."""
    d = hidden.shape[-1]
    out = torch.ops.qwenscope.steer(hidden.reshape(-1, d), rows.reshape(-1), *tables)
    return out.reshape(hidden.shape)
