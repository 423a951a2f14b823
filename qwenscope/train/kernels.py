"""Sparse autograd for TopK / BatchTopK SAE training: no dense gradient where a sparse one suffices.

A TopK code has k of d_sae entries per token, so the gradients of ``W_enc``, ``b_enc`` and ``W_dec`` only touch
k columns / rows per token. The dense products autograd would run (x^T @ G with G of shape (N, d_sae)) cost as
much as the forward matmul; the sparse ones below cost O(N k d_in).

The sparse code is kept flat: ``vals``, ``rows`` (token), ``cols`` (feature), each of length E (= N k for TopK).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class SparseCode(NamedTuple):
    """A flat sparse code of an (N, d_sae) activation matrix."""

    vals: Tensor
    """(E,) activations, differentiable with respect to W_enc and b_enc."""
    rows: Tensor
    """(E,) token index of each entry."""
    cols: Tensor
    """(E,) feature index of each entry."""


def _coo(vals: Tensor, rows: Tensor, cols: Tensor, shape: tuple[int, int]) -> Tensor:
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape, check_invariants=False)


class _Encode(torch.autograd.Function):
    """relu((x - b_dec) @ W_enc + b_enc) at selected entries; the selection is computed in forward, without gradient.

    ``b_dec`` (or None) is folded into the bias, so no gradient with respect to x is ever formed:
    d/d b_dec = -W_enc @ d/d b_enc, and d/d W_enc = x^T G - b_dec (1^T G), with G the sparse gradient of the code.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None, select: Any):
        bias = b_enc if b_dec is None else b_enc - b_dec @ W_enc
        pre = torch.addmm(bias, x, W_enc).relu_()  # (N, d_sae)
        vals, rows, cols = select(pre)
        ctx.save_for_backward(x, W_enc, b_dec, vals, rows, cols)
        ctx.d_sae = W_enc.shape[1]
        ctx.mark_non_differentiable(rows, cols)
        return vals, rows, cols

    @staticmethod
    def backward(ctx: Any, g_vals: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        x, W_enc, b_dec, vals, rows, cols = ctx.saved_tensors
        if ctx.needs_input_grad[0]:
            raise RuntimeError("sparse_encode does not differentiate with respect to its input activations")
        g = g_vals * (vals > 0)  # through the ReLU
        grad_b = torch.zeros(ctx.d_sae, dtype=g.dtype, device=g.device).index_add_(0, cols, g)
        grad_W = grad_b_dec = None
        if ctx.needs_input_grad[1]:
            grad_W = torch.sparse.mm(_coo(g, cols, rows, (ctx.d_sae, x.shape[0])), x).T  # (d_in, d_sae)
            if b_dec is not None:
                grad_W = grad_W - torch.outer(b_dec, grad_b)
        if b_dec is not None and ctx.needs_input_grad[3]:
            grad_b_dec = -(W_enc @ grad_b)
        return None, grad_W, grad_b if ctx.needs_input_grad[2] else None, grad_b_dec, None


def _bag(vals: Tensor, rows: Tensor, cols: Tensor, W: Tensor, n: int) -> Tensor:
    """sum over entries e of row r: vals[e] * W[cols[e]], as one embedding_bag (rows must be sorted)."""
    offsets = torch.searchsorted(rows, torch.arange(n, device=rows.device))
    return F.embedding_bag(cols, W, offsets, mode="sum", per_sample_weights=vals)


def topk_select(k: int):
    """Per-token TopK of (already ReLU'd) pre-activations, as a flat code."""

    def select(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k)
        return vals.reshape(-1), rows, idx.reshape(-1)

    return select


def batch_topk_select(k: int):
    """TopK over the whole batch (k x N entries in all): busy tokens get more features, quiet ones fewer."""

    def select(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        vals, flat = pre.reshape(-1).topk(k * pre.shape[0], sorted=False)
        flat, order = flat.sort()  # entries grouped by token, as the decoder's embedding_bag needs
        return vals[order], flat // pre.shape[1], flat % pre.shape[1]

    return select


def sparse_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, select, b_dec: Tensor | None = None) -> SparseCode:
    """The sparse code of ``x - b_dec`` (N, d_in) under ``select`` (topk_select / batch_topk_select).

    Differentiable with respect to W_enc, b_enc and b_dec (not x: activations are data).
    """
    return SparseCode(*_Encode.apply(x, W_enc, b_enc, b_dec, select))


def sparse_decode(code: SparseCode, W_dec: Tensor, n: int) -> Tensor:
    """(n, d_in) reconstruction without b_dec, differentiable with respect to the code's values and W_dec.

    torch's own embedding_bag backward (fused per-sample-weight gradient, index_add for W_dec) is ~6x faster here than
    gathering rows by hand: 79 ms vs 480 ms for fwd+bwd at n 4096, k 32, d_sae 9216, d_in 576 on 2 cores.
    """
    return _bag(code.vals, code.rows, code.cols, W_dec, n)
