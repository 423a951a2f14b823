"""The qwenscope command: subcommands run end to end on a tiny Qwen3 saved with the real Qwen3 tokenizer."""

import json

import pytest
from tiny_models import save_tiny_qwen3

from qwenscope import Sae, SaeConfig
from qwenscope.cli import main


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory):
    """A 2-layer random Qwen3 with the real tokenizer's vocabulary, saved like a hub checkpoint."""
    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


def test_releases(capsys):
    assert main(["releases", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 14 and rows[0]["repo_id"] == "Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50"


def test_info(tiny_qwen3, capsys):
    assert main(["info", str(tiny_qwen3)]) == 0
    out = capsys.readouterr().out
    assert "Qwen3ForCausalLM" in out and "2 at model.layers" in out and "hidden size  64" in out
    assert "attn_out.L" in out and "model.layers.L.self_attn" in out


def test_features_json_and_table(tiny_qwen3, tmp_path, capsys):
    Sae(SaeConfig(d_in=64, d_sae=128, k=4, hookpoint="resid_post.1")).save(tmp_path / "sae")
    args = [
        "features",
        "--model",
        str(tiny_qwen3),
        "--sae",
        str(tmp_path / "sae"),
        "--text",
        "Hello world",
        "--top",
        "3",
    ]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["hookpoint"] == "resid_post.1"
    assert [t["token"] for t in data["tokens"]] == ["Hello", " world"]
    assert all(len(t["features"]) <= 3 for t in data["tokens"])
    assert main(args) == 0
    assert "top features" in capsys.readouterr().out


def test_errors_are_one_line(tiny_qwen3, tmp_path, capsys):
    Sae(SaeConfig(d_in=2048, d_sae=128, k=4, hookpoint="resid_post.1")).save(tmp_path / "big")
    code = main(["features", "--model", str(tiny_qwen3), "--sae", str(tmp_path / "big"), "--text", "hi"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # above it: progress bars of the model load
    assert code == 2 and err.startswith("error: SAE width d_in=2048 does not match")
    code = main(["features", "--model", str(tiny_qwen3), "--sae", str(tmp_path / "big"), "--text", "hi",
                 "--hookpoint", "resid_post.7"])  # fmt: skip
    assert code == 2 and "layer 7 is out of range" in capsys.readouterr().err
    assert main(["features", "--model", str(tiny_qwen3), "--sae", str(tmp_path / "big"), "--text", " "]) == 2
    assert "--text is empty" in capsys.readouterr().err
