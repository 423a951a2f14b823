"""The SAE module: hand-checkable math for every activation, sparse == dense paths, clear shape errors."""

import pytest
import torch
import torch.nn.functional as F

from qwenscope import QwenscopeError, Sae, SaeConfig


def make(activation="topk", d_in=16, d_sae=64, k=4, seed=0, **kw) -> Sae:
    torch.manual_seed(seed)
    sae = Sae(
        SaeConfig(
            d_in=d_in, d_sae=d_sae, k=k if activation in ("topk", "batchtopk") else None, activation=activation, **kw
        )
    )
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.normal_(std=0.5)
        sae.b_dec.normal_()
        if sae.threshold is not None:
            sae.threshold.uniform_(0.0, 1.0)
    return sae


def test_topk_encode_is_topk_of_relu_exactly():
    sae = make()
    x = torch.randn(3, 5, 16)
    pre = x @ sae.W_enc + sae.b_enc
    vals, idx = F.relu(pre).topk(4, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, idx, vals)
    z = sae.encode(x)
    assert z.shape == (3, 5, 64)
    assert torch.equal(z, expected)
    assert ((z > 0).sum(-1) <= 4).all()


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk", "batchtopk"])
def test_own_acts_read_each_feature_alone(activation):
    sae = make(activation)
    x = torch.randn(3, 5, 16)
    ids = torch.tensor([0, 7, 63, 7])
    own = sae.own_acts(x, ids)
    z = sae.encode(x)[..., ids]
    if activation in ("relu", "jumprelu"):  # no competition between features: the same activations
        torch.testing.assert_close(own, z, rtol=0, atol=1e-6)
    else:  # the ReLU'd pre-activation, which encode keeps only for features in the top k
        torch.testing.assert_close(own, F.relu(sae.pre_acts(x)[..., ids]), rtol=0, atol=1e-6)
        kept = z > 0
        torch.testing.assert_close(own[kept], z[kept], rtol=0, atol=1e-6)
        assert (own > z).any()


def test_hand_set_weights():
    sae = Sae(SaeConfig(d_in=2, d_sae=3, k=1))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
        sae.b_enc.zero_()
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.0]]))
        sae.b_dec.copy_(torch.tensor([0.1, 0.2]))
    z = sae.encode(torch.tensor([[1.0, 1.5]]))  # pre = [1, 1.5, 2] -> only feature 2 survives
    assert torch.equal(z, torch.tensor([[0.0, 0.0, 2.0]]))
    assert torch.allclose(sae.decode(z), torch.tensor([[1.1, 0.2]]))


@pytest.mark.parametrize("activation", ["topk", "batchtopk", "jumprelu", "relu"])
def test_sparse_decode_equals_dense(activation):
    sae = make(activation)
    x = torch.randn(2, 7, 16)
    z = sae.encode(x)
    code = sae.encode_sparse(x)
    dense_from_sparse = torch.zeros_like(z).scatter(-1, code.top_indices, code.top_acts)
    assert torch.equal(dense_from_sparse, z)
    torch.testing.assert_close(sae.decode(code), sae.decode(z), atol=1e-5, rtol=1e-5)
    out = sae(x)
    assert out.sae_out.shape == x.shape
    torch.testing.assert_close(out.sae_out, sae.decode(z), atol=1e-5, rtol=1e-5)
    assert out.fvu.item() >= 0


def test_jumprelu_and_relu_math():
    sae = make("jumprelu")
    x = torch.randn(4, 16)
    pre = x @ sae.W_enc + sae.b_enc
    # the formula encode computes, on the same pre-activations: same kernels, same shapes: bit-identical
    assert torch.equal(sae.encode(x), F.relu(pre) * (pre > sae.threshold))
    relu = make("relu")
    # the ops encode runs: same kernels, same shapes: bit-identical
    assert torch.equal(relu.encode(x), F.relu(x @ relu.W_enc + relu.b_enc))


def test_batchtopk_keeps_k_per_token_on_average():
    sae = make("batchtopk", k=3)
    z = sae.encode(torch.randn(10, 16))
    assert (z > 0).sum().item() <= 30
    assert (z > 0).sum(-1).float().std() > 0  # not the same count per token: it is a batch-level top-k


def test_apply_b_dec_to_input():
    sae = make(apply_b_dec_to_input=True)
    x = torch.randn(4, 16)
    # the ops pre_acts runs: same kernels, same shapes: bit-identical
    assert torch.equal(sae.pre_acts(x), (x - sae.b_dec) @ sae.W_enc + sae.b_enc)


def test_leading_shapes_and_dtype():
    sae = make()
    for shape in [(16,), (5, 16), (2, 3, 16), (2, 3, 4, 16)]:
        x = torch.randn(*shape)
        assert sae.encode(x).shape == (*shape[:-1], 64)
        assert sae(x).sae_out.shape == shape
    assert sae(torch.randn(3, 16, dtype=torch.float64)).sae_out.dtype == torch.float64


def test_wrong_width_is_one_clear_line():
    sae = make()
    with pytest.raises(QwenscopeError, match=r"d_in=16") as e:
        sae.encode(torch.randn(2, 17))
    assert "\n" not in str(e.value)
    with pytest.raises(QwenscopeError, match="d_sae=64"):
        sae.decode(torch.randn(2, 63))


def test_config_validation():
    with pytest.raises(QwenscopeError, match="needs k"):
        SaeConfig(d_in=4, d_sae=8, activation="topk")
    with pytest.raises(QwenscopeError, match="unknown SAE activation"):
        SaeConfig(d_in=4, d_sae=8, k=2, activation="gelu")  # type: ignore[arg-type]
    with pytest.raises(QwenscopeError, match="between 1 and d_sae"):
        SaeConfig(d_in=4, d_sae=8, k=9)
