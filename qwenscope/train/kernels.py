"""Sparse autograd for TopK / BatchTopK SAE training: no dense gradient where a sparse one suffices.

A TopK code has k of d_sae entries per token, so the gradients of ``W_enc``, ``b_enc`` and ``W_dec`` only touch
k columns / rows per token. The dense products autograd would run (x^T @ G with G of shape (N, d_sae)) cost as
much as the forward matmul; the sparse ones below cost O(N k d_in).

The sparse code is kept flat: ``vals``, ``rows`` (token), ``cols`` (feature), each of length E (= N k for TopK).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

_CHUNK = 1 << 15  # entries per chunk when gathering decoder rows (bounds memory at _CHUNK x d_in floats)


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
    """relu(x @ W_enc + b_enc) at selected entries; the selection is computed in forward, without gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, select: Any) -> tuple[Tensor, Tensor, Tensor]:
        pre = torch.addmm(b_enc, x, W_enc).relu_()  # (N, d_sae)
        vals, rows, cols = select(pre)
        ctx.save_for_backward(x, W_enc, vals, rows, cols)
        ctx.d_sae = W_enc.shape[1]
        ctx.mark_non_differentiable(rows, cols)
        return vals, rows, cols

    @staticmethod
    def backward(ctx: Any, g_vals: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        x, W_enc, vals, rows, cols = ctx.saved_tensors
        g = g_vals * (vals > 0)  # through the ReLU
        n = x.shape[0]
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_W = torch.sparse.mm(_coo(g, cols, rows, (ctx.d_sae, n)), x).T  # (d_in, d_sae)
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(ctx.d_sae, dtype=g.dtype, device=g.device).index_add_(0, cols, g)
        if ctx.needs_input_grad[0]:
            grad_x = torch.sparse.mm(_coo(g, rows, cols, (n, ctx.d_sae)), W_enc.T)
        return grad_x, grad_W, grad_b, None


class _Decode(torch.autograd.Function):
    """sum_e vals[e] * W_dec[cols[e]] into row rows[e]: the decoder product of a sparse code."""

    @staticmethod
    def forward(ctx: Any, vals: Tensor, rows: Tensor, cols: Tensor, W_dec: Tensor, n: int) -> Tensor:
        ctx.save_for_backward(vals, rows, cols, W_dec)
        ctx.n = n
        return torch.sparse.mm(_coo(vals, rows, cols, (n, W_dec.shape[0])), W_dec)

    @staticmethod
    def backward(ctx: Any, g_out: Tensor) -> tuple[Tensor | None, ...]:
        vals, rows, cols, W_dec = ctx.saved_tensors
        grad_vals = grad_W = None
        if ctx.needs_input_grad[0]:  # grad_vals[e] = <g_out[rows[e]], W_dec[cols[e]]>, chunked to bound memory
            grad_vals = torch.empty_like(vals)
            for s in range(0, vals.numel(), _CHUNK):
                e = slice(s, s + _CHUNK)
                grad_vals[e] = (g_out[rows[e]] * W_dec[cols[e]]).sum(-1)
        if ctx.needs_input_grad[3]:
            grad_W = torch.sparse.mm(_coo(vals, cols, rows, (W_dec.shape[0], ctx.n)), g_out)
        return grad_vals, None, None, grad_W, None


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
        return vals, flat // pre.shape[1], flat % pre.shape[1]

    return select


def sparse_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, select) -> SparseCode:
    """The sparse code of ``x`` (N, d_in) under ``select`` (topk_select / batch_topk_select), differentiable."""
    return SparseCode(*_Encode.apply(x, W_enc, b_enc, select))


def sparse_decode(code: SparseCode, W_dec: Tensor, n: int) -> Tensor:
    """(n, d_in) reconstruction without b_dec, differentiable with respect to the code's values and W_dec."""
    return _Decode.apply(code.vals, code.rows, code.cols, W_dec, n)
