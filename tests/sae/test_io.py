"""Our folder format: save -> load is bit-exact; damaged files give one clear line."""

import json

import pytest
import torch

from qwenscope import QwenscopeError, Sae, SaeConfig, load_sae


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_round_trip_is_bit_exact(tmp_path, activation):
    torch.manual_seed(0)
    cfg = SaeConfig(
        d_in=8,
        d_sae=32,
        k=4 if activation == "topk" else None,
        activation=activation,
        hookpoint="resid_post.2",
        model="tiny",
    )
    sae = Sae(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    sae.save(tmp_path / "resid_post.2")
    for loaded in (Sae.load(tmp_path / "resid_post.2"), load_sae(tmp_path, hookpoint="resid_post.2")):
        assert loaded.cfg == cfg
        for name, p in sae.state_dict().items():
            assert torch.equal(p, loaded.state_dict()[name]), name
        x = torch.randn(3, 8)
        # the same weights saved and loaded: same kernels, same shapes: bit-identical
        assert torch.equal(loaded.encode(x), sae.encode(x))


def test_fp16_file_loads_as_fp32_on_cpu(tmp_path):
    sae = Sae(SaeConfig(d_in=8, d_sae=16, k=2)).half()
    sae.save(tmp_path)
    loaded = load_sae(tmp_path)
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded.W_dec, sae.W_dec.float())
    assert load_sae(tmp_path, dtype=torch.float16).dtype == torch.float16


def test_default_dtype_never_keeps_float16_whose_range_residuals_exceed():
    from qwenscope.sae.io import default_dtype

    assert default_dtype(torch.float16, "cpu") == torch.float32
    assert default_dtype(torch.float16, "cuda") == torch.float32  # gemma3's residual stream exceeds 65504
    assert default_dtype(torch.bfloat16, "cpu") == torch.float32
    assert default_dtype(torch.bfloat16, "cuda") == torch.bfloat16
    assert default_dtype(torch.float32, "cuda") == torch.float32
    big = torch.full((1, 8), 7e4)
    sae = Sae(SaeConfig(d_in=8, d_sae=16, k=2)).half()
    assert not torch.isfinite(sae.pre_acts(big)).all()  # why: a float16 SAE turns such inputs into inf


def test_truncated_file(tmp_path):
    Sae(SaeConfig(d_in=8, d_sae=16, k=2)).save(tmp_path)
    weights = tmp_path / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(QwenscopeError, match="truncated or corrupt") as e:
        load_sae(tmp_path)
    assert "\n" not in str(e.value)


def test_config_that_does_not_match_weights(tmp_path):
    Sae(SaeConfig(d_in=8, d_sae=16, k=2)).save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 32}))
    with pytest.raises(QwenscopeError, match="does not match its config"):
        load_sae(tmp_path)


def test_missing_and_unknown(tmp_path):
    with pytest.raises(QwenscopeError, match="not an existing file or folder"):
        load_sae(tmp_path / "nope")
    (tmp_path / "weird").mkdir()
    (tmp_path / "weird" / "x.bin").write_bytes(b"123")
    with pytest.raises(QwenscopeError, match="unknown SAE format"):
        load_sae(tmp_path / "weird")
    with pytest.raises(QwenscopeError, match="unknown SAE file type"):
        load_sae(tmp_path / "weird" / "x.bin")


def test_multi_hookpoint_folder_asks_for_hookpoint(tmp_path):
    for hp in ("resid_post.1", "resid_post.2"):
        Sae(SaeConfig(d_in=8, d_sae=16, k=2, hookpoint=hp)).save(tmp_path / hp)
    with pytest.raises(QwenscopeError, match="pass hookpoint="):
        load_sae(tmp_path)
    assert load_sae(tmp_path, layer=2).cfg.hookpoint == "resid_post.2"
