"""load_sae against a local server that speaks the Hugging Face Hub protocol (the real huggingface_hub code runs):
only the one SAE's files are downloaded."""

import pytest
import torch
from fake_hub import serve_repos
from sae_files import write_qwenscope_layer

from qwenscope import QwenscopeError, Sae, SaeConfig, load_sae


def test_qwenscope_repo_downloads_one_layer(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    files = {i: write_qwenscope_layer(repo / f"layer{i}.sae.pt", seed=i) for i in range(4)}
    (repo / "README.md").write_text("# tiny")
    with serve_repos({"Qwen/SAE-Res-Tiny-W1K-L0_8": repo}) as hub:
        sae = load_sae("Qwen/SAE-Res-Tiny-W1K-L0_8", layer=2)
        assert hub.downloads == ["layer2.sae.pt"]
        with pytest.raises(QwenscopeError, match="pass layer="):
            load_sae("Qwen/SAE-Res-Tiny-W1K-L0_8")
    assert (sae.cfg.k, sae.cfg.hookpoint) == (8, "resid_post.2")
    assert torch.equal(sae.W_enc, files[2]["W_enc"].T)


def test_release_repo_checks_the_table(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    write_qwenscope_layer(repo / "layer0.sae.pt")  # far too small for the real release
    with serve_repos({"Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50": repo}) as hub:
        with pytest.raises(QwenscopeError, match="out of range .* layers 0..27"):
            load_sae("Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50", layer=30)
        assert hub.downloads == []  # refused before any download
        with pytest.raises(QwenscopeError, match="does not belong to this release"):
            load_sae("Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50", layer=0)


def test_multi_hookpoint_repo_downloads_one_folder(tmp_path):
    for hp in ("resid_post.1", "resid_post.3"):
        Sae(SaeConfig(d_in=8, d_sae=16, k=2, hookpoint=hp)).save(tmp_path / "repo" / hp)
    with serve_repos({"me/my-saes": tmp_path / "repo"}) as hub:
        sae = load_sae("me/my-saes", hookpoint="resid_post.3")
        assert sorted(hub.downloads) == ["resid_post.3/cfg.json", "resid_post.3/sae.safetensors"]
        with pytest.raises(QwenscopeError, match="no SAE for 'resid_post.2'"):
            load_sae("me/my-saes", layer=2)
        with pytest.raises(QwenscopeError, match="pass hookpoint="):
            load_sae("me/my-saes")
    assert sae.cfg.hookpoint == "resid_post.3"


def test_hub_failures_are_one_line(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    write_qwenscope_layer(repo / "layer0.sae.pt")
    with serve_repos({"Qwen/SAE-Res-Tiny-W1K-L0_8": repo}):
        with pytest.raises(QwenscopeError, match=r"could not fetch .* Qwen/SAE-Res-Tiny-W1K-L0_8 .*Not ?Found") as e:
            load_sae("Qwen/SAE-Res-Tiny-W1K-L0_8", layer=3)  # no such file in the repo
        assert "\n" not in str(e.value)
        with pytest.raises(QwenscopeError, match="could not fetch an SAE from hub repo nobody/nothing"):
            load_sae("nobody/nothing", hookpoint="resid_post.1")
