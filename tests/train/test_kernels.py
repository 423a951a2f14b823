"""The sparse training kernels give the same outputs and gradients as dense autograd over the masked code."""

import pytest
import torch

from qwenscope.train.kernels import batch_topk_select, sparse_decode, sparse_encode, topk_select


@pytest.mark.parametrize("mode", ["topk", "batchtopk"])
@pytest.mark.parametrize("with_b_dec", [False, True])
def test_sparse_kernels_match_dense_autograd(mode, with_b_dec):
    torch.manual_seed(0)
    n, d, m, k = 64, 16, 128, 4
    x = torch.randn(n, d, dtype=torch.float64)
    W = torch.randn(d, m, dtype=torch.float64, requires_grad=True)
    b = (torch.randn(m, dtype=torch.float64) * 0.1).requires_grad_(True)
    b_dec = torch.randn(d, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(m, d, dtype=torch.float64, requires_grad=True)
    select = topk_select(k) if mode == "topk" else batch_topk_select(k)
    params = [W, b, b_dec, W_dec] if with_b_dec else [W, b, W_dec]

    code = sparse_encode(x, W, b, select, b_dec if with_b_dec else None)
    out = sparse_decode(code, W_dec, n) + b_dec
    grads = torch.autograd.grad((out - x).pow(2).sum(), params)

    pre = ((x - b_dec if with_b_dec else x) @ W + b).relu()
    if mode == "topk":
        mask = torch.zeros_like(pre).scatter(1, pre.topk(k, dim=-1).indices, 1.0)
    else:
        mask = torch.zeros(n * m, dtype=pre.dtype).scatter(0, pre.reshape(-1).topk(k * n).indices, 1.0).view(n, m)
    ref = (pre * mask) @ W_dec + b_dec
    ref_grads = torch.autograd.grad((ref - x).pow(2).sum(), params)

    torch.testing.assert_close(out, ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)
    assert code.vals.numel() == n * k
