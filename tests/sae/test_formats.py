"""Readers of other formats: Qwen-Scope files of the real layout, SAELens and sparsify SAEs written by those
libraries themselves (same encode/decode as the libraries' own code), Gemma Scope params files."""

import argparse
import json
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sae_files import write_qwenscope_layer

from qwenscope import QwenscopeError, load_sae
from qwenscope.sae.releases import RELEASES


@pytest.fixture
def qwenscope_folder(tmp_path):
    folder = tmp_path / "SAE-Res-Tiny-W1K-L0_8"  # named like a release: k = 8 comes from the name
    folder.mkdir()
    files = {layer: write_qwenscope_layer(folder / f"layer{layer}.sae.pt", seed=layer) for layer in range(3)}
    (folder / "config.json").write_text("{}")
    return folder, files


def test_qwenscope_encode_is_exact(qwenscope_folder):
    folder, files = qwenscope_folder
    sae = load_sae(folder, layer=1)
    assert (sae.d_in, sae.d_sae, sae.cfg.k, sae.cfg.hookpoint) == (32, 128, 8, "resid_post.1")
    t = files[1]
    x = torch.randn(4, 6, 32)
    pre = x @ t["W_enc"].T + t["b_enc"]
    vals, idx = F.relu(pre).topk(8, dim=-1)
    # the ops encode runs: same kernels, same shapes: bit-identical
    assert torch.equal(sae.encode(x), torch.zeros_like(pre).scatter(-1, idx, vals))
    z = sae.encode(x)
    torch.testing.assert_close(sae.decode(z), z @ t["W_dec"].T + t["b_dec"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x).sae_out, z @ t["W_dec"].T + t["b_dec"], atol=1e-5, rtol=1e-5)


def test_qwenscope_layer_and_k_handling(qwenscope_folder, tmp_path):
    folder, _ = qwenscope_folder
    with pytest.raises(QwenscopeError, match="pass layer="):
        load_sae(folder)
    with pytest.raises(QwenscopeError, match="layer 7 is out of range"):
        load_sae(folder, layer=7)
    assert load_sae(folder, hookpoint="resid_post.2").cfg.hookpoint == "resid_post.2"
    loose = tmp_path / "layer5.sae.pt"
    write_qwenscope_layer(loose)
    with pytest.raises(QwenscopeError, match="pass k="):
        load_sae(loose)
    assert load_sae(loose, k=3).cfg.k == 3
    assert load_sae(loose, k=3).cfg.hookpoint == "resid_post.5"


def test_qwenscope_file_checked_against_release_table(tmp_path):
    folder = tmp_path / "SAE-Res-Qwen3-1.7B-Base-W32K-L0_50"  # real release name, but a tiny file inside
    folder.mkdir()
    write_qwenscope_layer(folder / "layer0.sae.pt")
    with pytest.raises(QwenscopeError, match="does not belong to this release"):
        load_sae(folder, layer=0)
    with pytest.raises(QwenscopeError, match="out of range for Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50"):
        load_sae(folder, layer=28)


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"W_enc": torch.zeros(2, 2), "evil": Evil()}, tmp_path / "layer0.sae.pt")
    with pytest.raises(QwenscopeError, match="could run code") as e:
        load_sae(tmp_path / "layer0.sae.pt", k=1)
    assert "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["torch.save", "legacy torch.save", "pickle.dump"])
def test_pickled_objects_are_refused_for_safety_not_called_corrupt(tmp_path, how):
    path = tmp_path / "layer0.sae.pt"
    data = {**write_qwenscope_layer(path), "args": argparse.Namespace(lr=1e-3)}  # not on torch's allowlist
    if how == "pickle.dump":
        path.write_bytes(pickle.dumps(data))
    else:
        torch.save(data, path, _use_new_zipfile_serialization=how == "torch.save")
    with pytest.raises(QwenscopeError, match=r"refusing to load .* for safety: .*argparse\.Namespace") as e:
        load_sae(path, k=4)
    assert "truncated" not in str(e.value) and "safetensors" in str(e.value) and "\n" not in str(e.value)
    path.write_bytes(pickle.dumps(data)[:-40])  # the same pickle cut short is corrupt, not refused
    with pytest.raises(QwenscopeError, match="truncated or corrupt"):
        load_sae(path, k=4)


def test_tensors_in_torch_legacy_format_load(tmp_path):
    path = tmp_path / "layer0.sae.pt"
    torch.save(write_qwenscope_layer(path), path, _use_new_zipfile_serialization=False)  # not a zip: no mmap
    assert load_sae(path, k=4).d_sae == 128


def test_truncated_qwenscope_file(tmp_path):
    path = tmp_path / "layer0.sae.pt"
    write_qwenscope_layer(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(QwenscopeError, match="truncated or corrupt"):
        load_sae(path, k=4)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(QwenscopeError, match="truncated or corrupt"):
        load_sae(path, k=4)


def test_releases_table():
    assert len(RELEASES) == 14
    r = RELEASES["Qwen/SAE-Res-Qwen3-30B-A3B-Base-W128K-L0_100"]
    assert (r.n_layers, r.d_model, r.d_sae, r.k, r.moe) == (48, 2048, 131072, 100, True)
    r = RELEASES["Qwen/SAE-Res-Qwen3.5-27B-W80K-L0_50"]
    assert (r.backbone, r.n_layers, r.d_model, r.d_sae) == ("Qwen/Qwen3.5-27B", 64, 5120, 81920)


# ---------------------------------------------------------------- SAELens, written by SAELens itself
def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("arch", ["topk", "topk_rescaled", "standard", "jumprelu"])
def test_saelens_sae_matches_saelens(tmp_path, arch):
    sae_lens = pytest.importorskip("sae_lens")
    meta = sae_lens.saes.sae.SAEMetadata(hook_name="blocks.3.hook_resid_post", model_name="tiny-model")
    if arch.startswith("topk"):
        cfg = sae_lens.TopKSAEConfig(
            d_in=32, d_sae=96, k=6, rescale_acts_by_decoder_norm=arch == "topk_rescaled", metadata=meta
        )
        theirs = sae_lens.TopKSAE(cfg)
    elif arch == "standard":
        theirs = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=32, d_sae=96, metadata=meta))
    else:
        theirs = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=32, d_sae=96, metadata=meta))
    _randomize(theirs)
    if arch == "jumprelu":
        with torch.no_grad():
            theirs.threshold.uniform_(0, 1)
    theirs.save_model(tmp_path)
    ours = load_sae(tmp_path)
    assert ours.cfg.hookpoint == "resid_post.3" and ours.cfg.model == "tiny-model"
    x = torch.randn(5, 7, 32)
    with torch.no_grad():
        z_theirs = theirs.encode(x)
        torch.testing.assert_close(ours.encode(x), z_theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(z_theirs), theirs.decode(z_theirs), atol=1e-5, rtol=1e-5)
        assert (z_theirs != 0).any()


# ---------------------------------------------------------------- sparsify, written by sparsify itself
def test_sparsify_sae_matches_sparsify(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    theirs = sparsify.SparseCoder(32, sparsify.SparseCoderConfig(num_latents=96, k=6))
    _randomize(theirs)
    theirs.save_to_disk(tmp_path / "layers.4")
    ours = load_sae(tmp_path, hookpoint="resid_post.4")  # sparsify names the folder after the module
    assert ours.cfg.hookpoint == "resid_post.4" and ours.cfg.apply_b_dec_to_input
    x = torch.randn(40, 32)
    with torch.no_grad():
        acts, idx, _ = theirs.encode(x)
        dense_theirs = torch.zeros(40, 96).scatter(-1, idx, acts)
        torch.testing.assert_close(ours.encode(x), dense_theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode((acts, idx)), theirs.decode(acts, idx), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x).sae_out, theirs(x).sae_out, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- Gemma Scope
def test_gemmascope_npz(tmp_path):
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_12" / "width_16k" / "average_l0_40"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    p = {
        "W_enc": rng.normal(size=(32, 64)),
        "W_dec": rng.normal(size=(64, 32)),
        "b_enc": rng.normal(size=64),
        "b_dec": rng.normal(size=32),
        "threshold": rng.uniform(0, 1, size=64),
    }
    np.savez(folder / "params.npz", **{k: v.astype(np.float32) for k, v in p.items()})
    sae = load_sae(folder)
    assert sae.cfg.activation == "jumprelu" and sae.cfg.hookpoint == "resid_post.12"
    x = torch.randn(3, 32)
    pre = x.numpy() @ p["W_enc"].astype(np.float32) + p["b_enc"].astype(np.float32)
    expected = np.maximum(pre, 0) * (pre > p["threshold"].astype(np.float32))
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), expected, atol=1e-5, rtol=1e-5)
    (folder / "params.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(QwenscopeError, match="truncated or corrupt"):
        load_sae(folder)
    np.savez(folder / "params.npz", **{**p, "threshold": np.array([argparse.Namespace()], dtype=object)})
    with pytest.raises(QwenscopeError, match="for safety: .*numpy object array"):
        load_sae(folder)


def test_saelens_cfg_corrupt_json(tmp_path):
    (tmp_path / "cfg.json").write_text("{not json")
    (tmp_path / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(QwenscopeError, match="not valid JSON"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "gated", "d_in": 4, "d_sae": 8}))
    with pytest.raises(QwenscopeError, match="not supported"):
        load_sae(tmp_path)
