"""``qwenscope::steer``: one custom op that edits the residual stream of a batch of tokens, each by its own row.

    out = torch.ops.qwenscope.steer(hidden, rows, *table.tensors())      # hidden (T, d), rows (T,) int

For token t with row r = rows[t] (0 = not steered):

    h   = hidden[t] + add[r]                                   (in hidden's dtype)
    pre = h · enc[r, j] + bias[r, j]                           (j over the row's slots, in the table's dtype)
    a_j = relu(pre_j) · (pre_j > threshold[r, j])              the feature's own activation (``Sae.own_acts``)
    out = h + Σ_j (target[r, j] − a_j) · dec[r, j]

which is ``qwenscope.steer`` of the row's add entries, then its clamp / ablate entry with ``acts="own"``. Unsteered
tokens come out equal to ``hidden``. A functional op (no input is mutated) with a fake implementation, so
``torch.compile`` traces it as one opaque node. The body is plain torch on any device and never syncs with the host
(no data-dependent shape, no ``.item()``), so a CUDA graph can capture it: every token's pre-activations are read
against all R·M encoder rows of the table in one (T, d) x (d, R·M) product and its own row's M kept, and the delta is
one (T, R·M) x (R·M, d) product with every other row's coefficients zero. Its cost grows with the table, not with
the SAE: with R = 64 rows and M = 8 slots at d = 4096 it is ~8 MFLOP per token, against ~400 MFLOP for the decoder
layer itself. On CUDA, where Triton imports, the op runs ``kernel.steer_triton`` instead, which reads only each
token's own row (``QWENSCOPE_STEER_KERNEL=torch`` keeps this body there too).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from qwenscope.errors import QwenscopeError
from qwenscope.vllm_plugin.kernel import HAVE_TRITON, steer_triton

KERNEL_ENV = "QWENSCOPE_STEER_KERNEL"
logger = logging.getLogger(__name__)


@torch.library.custom_op("qwenscope::steer", mutates_args=())
def steer_op(
    hidden: Tensor, rows: Tensor, add: Tensor, enc: Tensor, bias: Tensor, threshold: Tensor, dec: Tensor, target: Tensor
) -> Tensor:
    """hidden (T, d), rows (T,) int, add (R, d), enc and dec (R, M, d), bias, threshold and target (R, M)."""
    return steer_body(hidden, rows, add, enc, bias, threshold, dec, target)


def steer_body(
    hidden: Tensor, rows: Tensor, add: Tensor, enc: Tensor, bias: Tensor, threshold: Tensor, dec: Tensor, target: Tensor
) -> Tensor:
    """The op's body (the module doc): static shapes only, no host sync."""
    n, d = hidden.shape
    n_rows, m = bias.shape
    r = rows.long()
    h = hidden + add.index_select(0, r).to(hidden.dtype)  # row 0 adds zeros: unsteered tokens stay bit-exact
    pick = r.view(n, 1, 1).expand(n, 1, m)
    pre = (h.to(enc.dtype) @ enc.reshape(n_rows * m, d).T).view(n, n_rows, m).gather(1, pick).squeeze(1) + bias[r]
    coef = target[r] - F.relu(pre) * (pre > threshold[r])  # (T, M); row 0 and empty slots have zero decoder rows
    spread = torch.zeros(n, n_rows, m, dtype=coef.dtype, device=coef.device).scatter_(1, pick, coef.unsqueeze(1))
    return h + (spread.view(n, n_rows * m) @ dec.reshape(n_rows * m, d)).to(hidden.dtype)


@steer_op.register_fake
def _steer_fake(
    hidden: Tensor, rows: Tensor, add: Tensor, enc: Tensor, bias: Tensor, threshold: Tensor, dec: Tensor, target: Tensor
) -> Tensor:
    torch._check(rows.shape[0] == hidden.shape[0])
    return torch.empty_like(hidden)


def cuda_kernel() -> str:
    """The op's body on CUDA tensors: "triton" (where Triton imports) or "torch" (``QWENSCOPE_STEER_KERNEL``)."""
    choice = os.environ.get(KERNEL_ENV, "triton" if HAVE_TRITON else "torch")
    if choice not in ("triton", "torch"):
        raise QwenscopeError(f"{KERNEL_ENV}={choice!r}: use 'triton' or 'torch'")
    if choice == "triton" and not HAVE_TRITON:
        raise QwenscopeError(
            f"{KERNEL_ENV}=triton but Triton does not import here: pip install triton, or set it to 'torch'"
        )
    return choice


class _CudaSteer:
    """The op's CUDA kernel: the Triton kernel, falling back to the torch body, with a warning, when it fails before it
    has ever run (it is compiled for this GPU at the first call, vLLM's profile run, before any graph is captured).
    With ``QWENSCOPE_STEER_KERNEL=triton`` set explicitly a failure is raised instead."""

    def __init__(self, explicit: bool) -> None:
        self.explicit, self.ran, self.failed = explicit, False, False

    def __call__(
        self,
        hidden: Tensor,
        rows: Tensor,
        add: Tensor,
        enc: Tensor,
        bias: Tensor,
        threshold: Tensor,
        dec: Tensor,
        target: Tensor,
    ) -> Tensor:
        args = (hidden, rows, add, enc, bias, threshold, dec, target)
        if self.failed:
            return steer_body(*args)
        try:
            out = steer_triton(*args)
        except Exception as e:
            if self.ran or self.explicit:
                raise
            self.failed = True
            logger.warning(
                "the Triton steering kernel failed on its first call (%s: %s); steering runs the torch body "
                "(set %s=torch to choose it and silence this)",
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
                KERNEL_ENV,
            )
            return steer_body(*args)
        self.ran = True
        return out


if cuda_kernel() == "triton":
    steer_op.register_kernel("cuda")(_CudaSteer(explicit=KERNEL_ENV in os.environ))


def steer_hidden(hidden: Tensor, rows: Tensor, tables: tuple[Tensor, ...]) -> Tensor:
    """``qwenscope::steer`` on hidden states of any leading shape (..., d), ``rows`` of shape (...)."""
    d = hidden.shape[-1]
    out = torch.ops.qwenscope.steer(hidden.reshape(-1, d), rows.reshape(-1), *tables)
    return out.reshape(hidden.shape)
