"""The Triton kernel of ``qwenscope::steer`` on CUDA: one program per token, reading only its own row.

The op's plain torch body (``op.steer_body``) reads every token against all R·M encoder rows of the table and keeps
its own row's M, so its cost grows with the table; this kernel loads the token's row index and touches only that
row's add vector and M encoder and decoder rows, in two passes over the hidden size:

    pass 1:  pre_j = Σ_i (hidden[t, i] + add[r, i]) · enc[r, j, i]       (fp32 accumulation) + bias[r, j]
             coef_j = target[r, j] − relu(pre_j) · (pre_j > threshold[r, j])
    pass 2:  out[t, i] = (hidden[t, i] + add[r, i]) + Σ_j coef_j · dec[r, j, i]

Unsteered tokens (row 0) are copied and skip both passes. As in the body, ``add`` and the delta are rounded to the
hidden states' dtype before they are added, and each sum is rounded to it (every elementwise step runs in fp32 and is
cast explicitly, which is also what lets Triton's interpreter, whose bf16 arithmetic is wrong, check bf16); the
products and sums run in fp32 (the body runs them in the table's dtype), so the two agree to fp32 rounding, not bit
for bit: the reduction order differs. It launches no host sync
and has static shapes, so a CUDA graph captures it. ``op.py`` registers it as the op's CUDA kernel where Triton
imports, unless ``QWENSCOPE_STEER_KERNEL=torch`` keeps the torch body. Tested on the CPU with Triton's interpreter
(``TRITON_INTERPRET=1``, ``tests/vllm_plugin/test_kernel.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the op's torch body runs everywhere
    triton = None

HAVE_TRITON = triton is not None


if triton is not None:

    @triton.jit
    def _added(h_row, a_row, start, d, BLOCK_D: tl.constexpr):
        """One block of a token's hidden states plus its add vector, rounded to their dtype: (cols, mask, h)."""
        cols = start + tl.arange(0, BLOCK_D)
        cmask = cols < d
        x = tl.load(h_row + cols, mask=cmask, other=0.0)
        a = tl.load(a_row + cols, mask=cmask, other=0.0).to(x.dtype)
        return cols, cmask, (x.to(tl.float32) + a.to(tl.float32)).to(x.dtype)

    @triton.jit
    def _steer_kernel(
        hidden_ptr,
        rows_ptr,
        add_ptr,
        enc_ptr,
        bias_ptr,
        threshold_ptr,
        dec_ptr,
        target_ptr,
        out_ptr,
        d,
        M: tl.constexpr,
        M_PAD: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        t = tl.program_id(0).to(tl.int64)
        r = tl.load(rows_ptr + t).to(tl.int64)
        h_row = hidden_ptr + t * d
        o_row = out_ptr + t * d
        if r == 0:  # not steered: the hidden states, unchanged
            for start in range(0, d, BLOCK_D):
                cols = start + tl.arange(0, BLOCK_D)
                cmask = cols < d
                tl.store(o_row + cols, tl.load(h_row + cols, mask=cmask), mask=cmask)
        else:
            slots = tl.arange(0, M_PAD)
            smask = slots < M
            a_row = add_ptr + r * d
            e_rows = enc_ptr + r * M * d + slots[:, None] * d
            d_rows = dec_ptr + r * M * d + slots[:, None] * d
            acc = tl.zeros([M_PAD], dtype=tl.float32)
            for start in range(0, d, BLOCK_D):
                cols, cmask, h = _added(h_row, a_row, start, d, BLOCK_D)
                e = tl.load(e_rows + cols[None, :], mask=smask[:, None] & cmask[None, :], other=0.0)
                acc += tl.sum(h.to(tl.float32)[None, :] * e.to(tl.float32), axis=1)
            s = r * M + slots
            pre = acc + tl.load(bias_ptr + s, mask=smask, other=0.0).to(tl.float32)
            threshold = tl.load(threshold_ptr + s, mask=smask, other=0.0).to(tl.float32)
            target = tl.load(target_ptr + s, mask=smask, other=0.0).to(tl.float32)
            coef = target - tl.where(pre > threshold, tl.maximum(pre, 0.0), 0.0)
            for start in range(0, d, BLOCK_D):
                cols, cmask, h = _added(h_row, a_row, start, d, BLOCK_D)
                w = tl.load(d_rows + cols[None, :], mask=smask[:, None] & cmask[None, :], other=0.0)
                delta = tl.sum(coef[:, None] * w.to(tl.float32), axis=0)
                out = h.to(tl.float32) + delta.to(h.dtype).to(tl.float32)
                tl.store(o_row + cols, out.to(h.dtype), mask=cmask)


def steer_triton(
    hidden: Tensor, rows: Tensor, add: Tensor, enc: Tensor, bias: Tensor, threshold: Tensor, dec: Tensor, target: Tensor
) -> Tensor:
    """``qwenscope::steer`` by the Triton kernel (the module doc); same arguments and result as ``op.steer_body``."""
    if triton is None:
        raise RuntimeError("the Triton steering kernel needs Triton (pip install triton), or use op.steer_body")
    n, d = hidden.shape
    m = bias.shape[1]
    hidden = hidden.contiguous()
    out = torch.empty_like(hidden)
    if n == 0:
        return out
    _steer_kernel[(n,)](
        hidden,
        rows.contiguous(),
        add.contiguous(),
        enc.contiguous(),
        bias.contiguous(),
        threshold.contiguous(),
        dec.contiguous(),
        target.contiguous(),
        out,
        d,
        M=m,
        M_PAD=triton.next_power_of_2(m),
        BLOCK_D=min(triton.next_power_of_2(d), 1024),
    )
    return out
