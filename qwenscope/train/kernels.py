"""One TopK / BatchTopK SAE training step by hand: the loss and its gradients, with no dense (batch, d_sae) gradient.

A TopK code has k of d_sae entries per token, so the gradients of ``W_enc``, ``b_enc`` and ``W_dec`` only touch k
columns / rows per token; the dense products autograd would run (x^T @ G with G of shape (N, d_sae)) cost as much as
the forward matmul, the sparse ones below cost O(N k d_in). The only dense work is the encoder product itself, written
into a reused buffer (a fresh (N, d_sae) tensor costs page faults on every step; see docs/results/training.md).

The sparse code is kept flat: ``vals``, ``rows`` (token), ``cols`` (feature), each of length E (= N k for TopK), rows
sorted. Both weight gradients are sums over the entries of each feature, so the entries are sorted by feature once and
each gradient is one ``embedding_bag`` (a bag per feature):

    grad W_enc[:, c] = sum_{e: col c} G[e] (x - b_dec)[row e]       G: gradient of the code value, through the ReLU
    grad W_dec[c]    = sum_{e: col c} val[e] D[row e]               D: gradient of the reconstruction
    grad b_enc[c]    = sum_{e: col c} G[e],   grad b_dec = sum_rows D - W_enc grad b_enc

and the unit-norm projection of ``grad W_dec`` needs ``grad W_dec[c] . W_dec[c] = sum_{e: col c} val[e] g[e]`` (g the
code-value gradient before the ReLU mask), which is already at hand. ``tests/train/test_kernels.py`` checks all of it
against dense autograd.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class SparseCode(NamedTuple):
    """A flat sparse code of an (N, d_sae) activation matrix, entries grouped by token (rows sorted)."""

    vals: Tensor
    """(E,) activations (after the ReLU: never negative)."""
    rows: Tensor
    """(E,) token index of each entry."""
    cols: Tensor
    """(E,) feature index of each entry."""


class SaeGrads(NamedTuple):
    """Gradients of the training loss, laid out like the parameters; ``W_dec``'s already projected tangent to its
    unit-norm rows."""

    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor


class StepLoss(NamedTuple):
    fvu: Tensor
    """Sum of squared reconstruction errors over ``total_var`` (this batch's share of the FVU under DDP)."""
    auxk: Tensor
    """The AuxK loss (before its weight alpha); 0 without dead features."""
    grads: SaeGrads


def pre_acts(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None, out: Tensor | None = None) -> Tensor:
    """(x - b_dec) @ W_enc + b_enc, into ``out`` when given (a reused (N, d_sae) buffer)."""
    xc = x if b_dec is None else x - b_dec
    return torch.addmm(b_enc, xc, W_enc, out=out)


def topk_code(pre: Tensor, k: int) -> SparseCode:
    """Per-token TopK of ReLU(pre). The ReLU goes on the k values only: TopK(ReLU(p)) = ReLU(TopK(p)) up to which
    zero entries are picked, and those contribute nothing."""
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k)
    return SparseCode(vals.reshape(-1).relu_(), rows, idx.reshape(-1))


def batch_topk_code(pre: Tensor, k: int) -> SparseCode:
    """TopK over the whole batch (k x N entries in all): busy tokens get more features, quiet ones fewer."""
    vals, flat = pre.reshape(-1).topk(k * pre.shape[0], sorted=False)
    flat, order = flat.sort()  # entries grouped by token
    return SparseCode(vals[order].relu_(), flat // pre.shape[1], flat % pre.shape[1])


class DeadCode(NamedTuple):
    """The AuxK code as a dense (N, n_dead) block over the dead features: with k_aux of n_dead entries per token it is
    dense enough that four (N, n_dead, d_in) matrix products beat per-entry gathers (9x fewer entries than the main
    code would still be 1.2M at k_aux 288, N 4096)."""

    ids: Tensor
    """(n_dead,) feature ids, sorted."""
    acts: Tensor
    """(N, n_dead) ReLU'd activations, zero outside each token's top k_aux."""


DENSE_AUX_MAX_RATIO = 8
"""The dense AuxK block is used while n_dead <= this x k_aux, below the ratio where the dense block and the flat
code cost the same (docs/results/training.md)."""


def dead_topk_code(sub: Tensor, ids: Tensor, k_aux: int) -> SparseCode | DeadCode:
    """Per-token TopK of ReLU(sub) for AuxK, ``sub`` (N, n_dead) the pre-activations of the dead features ``ids``.

    A ``DeadCode`` while the dead features are few (the usual case), else a flat code.
    """
    if ids.numel() > DENSE_AUX_MAX_RATIO * k_aux:
        code = topk_code(sub, k_aux)
        return SparseCode(code.vals, code.rows, ids[code.cols])
    if k_aux >= ids.numel():
        return DeadCode(ids, sub.relu_())
    vals, idx = sub.topk(k_aux, dim=-1, sorted=False)
    return DeadCode(ids, torch.zeros_like(sub).scatter_(1, idx, vals.relu_()))


# ---------------------------------------------------------------------------------------------------- bf16 selection
def n_candidates(k: int) -> int:
    """Candidates per token kept from the low-precision product: k + max(8, k / 4) (40 for k 32)."""
    return k + max(8, k // 4)


def lowp_pre_acts(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None, dtype: torch.dtype, out=None):
    """The pre-activations in ``dtype`` (bf16): only good enough to choose candidates, which are then rescored."""
    xc = x if b_dec is None else x - b_dec
    return torch.addmm(b_enc.to(dtype), xc.to(dtype), W_enc.to(dtype), out=out)


def exact_pre_acts_at(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None, rows: Tensor, cols: Tensor):
    """(E,) exact fp32 pre-activations at the (row, col) entries (rows sorted): one dot product each, no dense
    product. torch's per-sample-weight gradient of an embedding_bag over W_enc's columns is exactly these dots."""
    xc = x if b_dec is None else x - b_dec
    ones = torch.ones(cols.shape[0], dtype=x.dtype, device=x.device, requires_grad=True)
    with torch.enable_grad():
        bag = F.embedding_bag(
            cols, W_enc.T.contiguous(), _offsets(rows, x.shape[0]), mode="sum", per_sample_weights=ones
        )
    return _value_grad(bag, ones, xc) + b_enc[cols]


def candidate_code(
    approx: Tensor, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None, k: int, activation: str
) -> SparseCode:
    """TopK (or BatchTopK) code chosen among the top candidates of a low-precision product ``approx``, by exact values.

    The values are exact; the selection is exact whenever the true top k are among the candidates (k + 8 of them for
    k 32; ``bench/perf/train_quality.py`` measures how many of the exact top k a bf16 product keeps,
    docs/results/train-quality.md).
    """
    n, m = approx.shape
    c = min(n_candidates(k), m)
    if activation == "topk":
        idx = approx.topk(c, dim=-1, sorted=False).indices
        rows = torch.arange(n, device=x.device).repeat_interleave(c)
        exact = exact_pre_acts_at(x, W_enc, b_enc, b_dec, rows, idx.reshape(-1)).view(n, c)
        vals, j = exact.topk(k, dim=-1, sorted=False)
        rows = torch.arange(n, device=x.device).repeat_interleave(k)
        return SparseCode(vals.reshape(-1).relu_(), rows, idx.gather(1, j).reshape(-1))
    flat = approx.reshape(-1).topk(c * n, sorted=False).indices.sort().values  # grouped by token
    rows, cols = flat // m, flat % m
    exact = exact_pre_acts_at(x, W_enc, b_enc, b_dec, rows, cols)
    vals, j = exact.topk(k * n, sorted=False)
    j, order = j.sort()  # keep the entries grouped by token
    return SparseCode(vals[order].relu_(), rows[j], cols[j])


def _offsets(rows: Tensor, n: int) -> Tensor:
    """Start of each row's entries in the (row-sorted) flat code."""
    return torch.searchsorted(rows, torch.arange(n, device=rows.device))


def _decode(code: SparseCode, W_dec: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(n, d_in) reconstruction without b_dec, and the code values as a leaf whose gradient autograd fills."""
    vals = code.vals.detach().requires_grad_(True)
    with torch.enable_grad():
        out = F.embedding_bag(code.cols, W_dec.detach(), _offsets(code.rows, n), mode="sum", per_sample_weights=vals)
    return out, vals


def _value_grad(out: Tensor, vals: Tensor, grad_out: Tensor) -> Tensor:
    """d loss / d code value, given d loss / d reconstruction: one dot product per entry (torch's own kernel)."""
    (g,) = torch.autograd.grad(out, vals, grad_out)
    return g


def _sq(t: Tensor) -> Tensor:
    flat = t.reshape(-1)
    return torch.dot(flat, flat)


def loss_and_grads(
    x: Tensor,
    W_enc: Tensor,
    b_dec: Tensor,
    W_dec: Tensor,
    main: SparseCode,
    total_var: Tensor,
    *,
    aux: SparseCode | DeadCode | None = None,
    aux_weight: float = 0.0,
    b_dec_in_input: bool = True,
) -> StepLoss:
    """FVU (+ ``aux_weight`` x AuxK) of a TopK SAE and its gradients with respect to W_enc, b_enc, W_dec, b_dec.

    ``main`` (and ``aux``, the code of the dead features) come from ``topk_code`` / ``batch_topk_code`` /
    ``dead_topk_code`` of this ``x``'s pre-activations under the same weights. The loss is
    ``|x - x_hat|^2 / total_var + aux_weight * |e_hat - (x - x_hat)|^2 / total_var``, x_hat = decode(main) + b_dec,
    e_hat = decode(aux) without b_dec and the residual x - x_hat held fixed in the AuxK term.
    """
    n = x.shape[0]
    m = W_dec.shape[0]
    x_hat, v_main = _decode(main, W_dec, n)
    err = x - x_hat.detach() - b_dec.detach()
    fvu = _sq(err) / total_var
    d_main = err * (-2 / total_var)  # d fvu / d x_hat
    g_main = _value_grad(x_hat, v_main, d_main)
    auxk = torch.zeros((), dtype=x.dtype, device=x.device)
    vals, cols, rows, rows_d, g_raw, d_all = main.vals, main.cols, main.rows, main.rows, g_main, d_main
    dense_aux = None
    if isinstance(aux, SparseCode) and aux_weight > 0:  # its entries join main's; its output gradient rows follow
        e_hat, v_aux = _decode(aux, W_dec, n)
        diff = e_hat.detach() - err
        auxk = _sq(diff) / total_var
        d_aux = diff * (2 * aux_weight / total_var)
        g_aux = _value_grad(e_hat, v_aux, d_aux)
        vals, cols, rows = torch.cat([vals, aux.vals]), torch.cat([cols, aux.cols]), torch.cat([rows, aux.rows])
        rows_d, g_raw, d_all = (
            torch.cat([main.rows, aux.rows + n]),
            torch.cat([g_main, g_aux]),
            torch.cat([d_main, d_aux]),
        )
    elif isinstance(aux, DeadCode) and aux_weight > 0:
        W_dead = W_dec.detach().index_select(0, aux.ids)
        diff = aux.acts @ W_dead - err
        auxk = _sq(diff) / total_var
        d_aux = diff * (2 * aux_weight / total_var)
        G_aux = d_aux @ W_dead.T  # d loss / d activation, every dead feature
        radial_aux = (aux.acts * G_aux).sum(0)
        G_aux.mul_(aux.acts > 0)  # through the ReLU and the TopK
        dense_aux = (aux, d_aux, G_aux, radial_aux)
    g = g_raw * (vals > 0)  # through the ReLU
    # entries sorted by feature: one bag per feature
    order = torch.argsort(cols, stable=True)
    counts = torch.bincount(cols, minlength=m)
    starts = counts.cumsum(0) - counts
    xc = x if not b_dec_in_input else x - b_dec.detach()
    g_W_enc_t = F.embedding_bag(rows[order], xc, starts, mode="sum", per_sample_weights=g[order])  # (d_sae, d_in)
    g_b_enc = torch.zeros(m, dtype=x.dtype, device=x.device).index_add_(0, cols, g)
    g_W_dec = F.embedding_bag(rows_d[order], d_all, starts, mode="sum", per_sample_weights=vals[order])
    radial = torch.zeros(m, dtype=x.dtype, device=x.device).index_add_(0, cols, vals * g_raw)  # g_W_dec[c] . W_dec[c]
    if dense_aux is not None:
        dead, d_aux, G_aux, radial_aux = dense_aux
        g_W_enc_t.index_add_(0, dead.ids, G_aux.T @ xc)
        g_b_enc.index_add_(0, dead.ids, G_aux.sum(0))
        g_W_dec.index_add_(0, dead.ids, dead.acts.T @ d_aux)
        radial.index_add_(0, dead.ids, radial_aux)
    g_W_dec.addcmul_(radial.unsqueeze(1), W_dec.detach(), value=-1)  # keep the step tangent to the unit-norm rows
    g_b_dec = d_main.sum(0)
    if b_dec_in_input:
        g_b_dec -= W_enc.detach() @ g_b_enc
    return StepLoss(fvu, auxk, SaeGrads(g_W_enc_t.T.contiguous(), g_b_enc, g_W_dec, g_b_dec))
