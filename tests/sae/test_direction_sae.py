"""A residual direction as a one-feature SAE: it reads the projection coefficient, and steer's modes move along it."""

import pytest
import torch
from tiny_models import build_tiny

from qwenscope import QwenscopeError, load_sae, splice, steer
from qwenscope.sae import direction_sae


def test_the_feature_is_the_direction_read_by_projection(tmp_path):
    v = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    sae = direction_sae(v, "resid_post.1", model="tiny")
    h = torch.tensor([[6.0, 8.0, -2.0]])
    # h . v0 / |v0|^2 = 50 / 25 = 2; h . v1 / |v1|^2 = -4 / 4 = -1, which the ReLU reads as 0
    torch.testing.assert_close(sae.encode(h), torch.tensor([[2.0, 0.0]]))
    torch.testing.assert_close(sae.decode(torch.tensor([[1.0, 0.0]])), v[:1])
    sae.save(tmp_path / "dim")
    again = load_sae(tmp_path / "dim")
    assert again.cfg.activation == "relu" and again.cfg.hookpoint == "resid_post.1" and again.cfg.model == "tiny"
    torch.testing.assert_close(again.W_dec, v)


def test_steer_adds_clamps_and_ablates_along_the_direction():
    model = build_tiny("llama", num_layers=2)
    ids = torch.randint(3, 250, (2, 7), generator=torch.Generator().manual_seed(0))
    seen: dict[str, torch.Tensor] = {}

    def grab(h):
        seen["h"] = h.detach().clone()
        return h

    with splice(model, "resid_post.0", grab), torch.no_grad():
        model(ids)
    h = seen["h"]
    v = torch.randn(1, 64, generator=torch.Generator().manual_seed(1))
    sae = direction_sae(v, "resid_post.0")
    coef = (h @ v[0]) / v[0].pow(2).sum()  # (2, 7)

    def steered(**kwargs):
        with steer(model, sae, **kwargs), splice(model, "resid_post.0", grab), torch.no_grad():
            model(ids)
        return seen["h"]

    # add: strength 1 adds the vector itself (float32 adds on other kernels: not bit for bit)
    torch.testing.assert_close(steered(features={0: 1.0}), h + v[0], atol=1e-5, rtol=1e-5)
    clamped = steered(features={0: 2.5}, mode="clamp")  # the coefficient along v now reads 2.5 (where it was > 0)
    want = h + (2.5 - coef.clamp_min(0))[..., None] * v[0]
    torch.testing.assert_close(clamped, want, atol=1e-4, rtol=1e-5)
    ablated = steered(features=[0], mode="ablate")  # the positive part of the projection is gone
    torch.testing.assert_close(ablated, h - coef.clamp_min(0)[..., None] * v[0], atol=1e-4, rtol=1e-5)
    assert ((ablated @ v[0]) <= 1e-4).all()


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(1, 4), torch.tensor([[1.0, float("nan")]]), torch.ones(4), torch.ones(0, 4)],
)
def test_bad_directions_are_one_line_errors(bad):
    with pytest.raises(QwenscopeError) as err:
        direction_sae(bad, "resid_post.0")
    assert "\n" not in str(err.value)
