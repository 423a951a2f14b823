"""The hand-written training step (loss, sparse gradients, AuxK, decoder projection) equals dense autograd."""

import pytest
import torch

from qwenscope.train import kernels


def _dense_reference(x, W, b, W_dec, b_dec, mode, k, with_b_dec, dead, k_aux, aux_weight, total_var):
    """The loss as the masked dense computation autograd differentiates, and its gradients (W_dec's projected)."""
    params = [p.detach().clone().requires_grad_(True) for p in (W, b, W_dec, b_dec)]
    W, b, W_dec, b_dec = params
    pre = ((x - b_dec if with_b_dec else x) @ W + b).relu()
    n, m = pre.shape
    if mode == "topk":
        mask = torch.zeros_like(pre).scatter(1, pre.topk(k, dim=-1).indices, 1.0)
    else:
        mask = torch.zeros(n * m, dtype=pre.dtype).scatter(0, pre.reshape(-1).topk(k * n).indices, 1.0).view(n, m)
    err = x - ((pre * mask) @ W_dec + b_dec)
    fvu = err.pow(2).sum() / total_var
    loss, auxk = fvu, torch.zeros((), dtype=x.dtype)
    if dead is not None:
        dead_pre = torch.where(dead, pre, torch.zeros(()))
        aux_mask = torch.zeros_like(pre).scatter(1, dead_pre.topk(k_aux, dim=-1).indices, 1.0)
        auxk = ((dead_pre * aux_mask) @ W_dec - err.detach()).pow(2).sum() / total_var
        loss = loss + aux_weight * auxk
    grads = list(torch.autograd.grad(loss, params))
    grads[2] = grads[2] - (grads[2] * W_dec).sum(-1, keepdim=True) * W_dec
    return fvu.detach(), auxk.detach(), grads


@pytest.mark.parametrize(
    ("mode", "with_b_dec", "n_dead", "k_aux", "aux_kind"),
    [
        ("topk", True, 0, 0, None),
        ("topk", False, 0, 0, None),
        ("batchtopk", True, 0, 0, None),
        ("topk", True, 12, 12, kernels.DeadCode),  # every dead feature in the AuxK code
        ("topk", True, 40, 8, kernels.DeadCode),  # top 8 of 40 dead, as a dense block
        ("batchtopk", False, 40, 8, kernels.DeadCode),
        ("topk", True, 40, 4, kernels.SparseCode),  # 40 > 8 x 4 dead: a flat code
        ("topk", False, 40, 4, kernels.SparseCode),
    ],
)
def test_step_matches_dense_autograd(mode, with_b_dec, n_dead, k_aux, aux_kind):
    torch.manual_seed(0)
    n, d, m, k = 64, 16, 128, 4
    x = torch.randn(n, d, dtype=torch.float64) + 1
    W = torch.randn(d, m, dtype=torch.float64)
    b = torch.randn(m, dtype=torch.float64) * 0.1
    b_dec = torch.randn(d, dtype=torch.float64) * 0.5
    W_dec = torch.nn.functional.normalize(torch.randn(m, d, dtype=torch.float64), dim=-1)
    total_var = (x - x.mean(0)).pow(2).sum()
    dead = torch.zeros(m, dtype=torch.bool)
    dead[torch.randperm(m)[:n_dead]] = True

    pre = kernels.pre_acts(x, W, b, b_dec if with_b_dec else None, out=torch.empty(n, m, dtype=torch.float64))
    main = kernels.topk_code(pre, k) if mode == "topk" else kernels.batch_topk_code(pre, k)
    ids = dead.nonzero().squeeze(1)
    aux = kernels.dead_topk_code(pre.index_select(1, ids), ids, k_aux) if n_dead else None
    assert aux is None if aux_kind is None else isinstance(aux, aux_kind)
    got = kernels.loss_and_grads(
        x, W, b_dec, W_dec, main, total_var, aux=aux, aux_weight=0.25, b_dec_in_input=with_b_dec
    )
    fvu, auxk, want = _dense_reference(
        x, W, b, W_dec, b_dec, mode, k, with_b_dec, dead if n_dead else None, k_aux, 0.25, total_var
    )

    torch.testing.assert_close(got.fvu, fvu)
    torch.testing.assert_close(got.auxk, auxk)
    assert (auxk > 0) == (n_dead > 0)
    for name, g, ref in zip(("W_enc", "b_enc", "W_dec", "b_dec"), got.grads, want):
        assert g.shape == ref.shape and g.is_contiguous(), name
        torch.testing.assert_close(g, ref, msg=name)
    assert main.vals.numel() == n * k and (main.vals >= 0).all()
    assert torch.equal(main.rows, main.rows.sort().values)  # grouped by token, as the decoder's bags need


@pytest.mark.parametrize("mode", ["topk", "batchtopk"])
def test_bf16_candidates_rescored_exactly_give_the_exact_code(mode):
    torch.manual_seed(1)
    n, d, m, k = 96, 32, 256, 8
    x = torch.randn(n, d) * 3
    W = torch.randn(d, m) / d**0.5
    b, b_dec = torch.randn(m) * 0.1, torch.randn(d)
    pre = kernels.pre_acts(x, W, b, b_dec)
    exact = kernels.topk_code(pre, k) if mode == "topk" else kernels.batch_topk_code(pre, k)
    approx = kernels.lowp_pre_acts(x, W, b, b_dec, torch.bfloat16)
    assert approx.dtype == torch.bfloat16 and (approx.float() - pre).abs().max() > 1e-3  # really approximate
    got = kernels.candidate_code(approx, x, W, b, b_dec, k, mode)

    assert torch.equal(got.rows, got.rows.sort().values)
    dense_got = torch.zeros(n, m).index_put_((got.rows, got.cols), got.vals)
    dense_exact = torch.zeros(n, m).index_put_((exact.rows, exact.cols), exact.vals)
    torch.testing.assert_close(dense_got, dense_exact, rtol=1e-5, atol=1e-5)  # same features, exact fp32 values


def test_exact_pre_acts_at_entries():
    torch.manual_seed(2)
    x, W, b, b_dec = torch.randn(10, 16), torch.randn(16, 40), torch.randn(40), torch.randn(16)
    rows = torch.arange(10).repeat_interleave(3)
    cols = torch.randint(0, 40, (30,))
    got = kernels.exact_pre_acts_at(x, W, b, b_dec, rows, cols)
    torch.testing.assert_close(got, kernels.pre_acts(x, W, b, b_dec)[rows, cols])
