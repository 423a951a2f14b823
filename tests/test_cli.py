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


def test_features_show_densities_and_leave_out_always_on_ones(tiny_qwen3, tmp_path, capsys, monkeypatch):
    """With a feature store for the SAE (cached by ``qwenscope stats``), every listed feature has its density and an
    always-on feature is left out of the per-token lists (listed apart); without one, densities are unknown."""
    import torch

    from qwenscope.features.density import MAX_DENSITY, density_text

    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    sae = Sae(SaeConfig(d_in=64, d_sae=128, k=4, hookpoint="resid_post.1"))
    with torch.no_grad():
        sae.b_enc[7] = 50.0  # fires on every token, with the largest activation
    sae.save(tmp_path / "sae")
    text = "Hello world, the cat sat on the mat. Привет, 中文!"
    args = ["features", "--model", str(tiny_qwen3), "--sae", str(tmp_path / "sae"), "--text", text, "--top", "3"]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["store"] is None and all(f["density"] is None for t in data["tokens"] for f in t["features"])
    assert any(f["id"] == 7 for t in data["tokens"] for f in t["features"])  # no store: nothing is left out
    assert "".join(t["token"] for t in data["tokens"]) == text  # whole characters, none broken

    (tmp_path / "docs.txt").write_text("\n\n".join(f"Line {i}: the cat sat on mat {i % 7}." for i in range(200)))
    stats = [
        "stats",
        "--model",
        str(tiny_qwen3),
        "--sae",
        str(tmp_path / "sae"),
        "--dataset",
        str(tmp_path / "docs.txt"),
        "--split",
        "all",
        "--n-tokens",
        "600",
        "--seq-len",
        "32",
    ]
    assert main(stats) == 0
    assert f"always-on (density > {density_text(MAX_DENSITY)} of tokens): " in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    listed = [f for t in data["tokens"] for f in t["features"]]
    assert data["store"] and listed and all(f["id"] != 7 and 0 <= f["density"] <= MAX_DENSITY for f in listed)
    always_on = data["always_on"]  # densest first: the forced one, then random ones above the threshold
    assert (
        always_on[0]["id"] == 7 and always_on[0]["density"] > 0.9 and all(a["density"] > MAX_DENSITY for a in always_on)
    )
    assert main([*args, "--max-density", "1", "--top", "4", "--json"]) == 0  # k=4: every firing feature
    everything = json.loads(capsys.readouterr().out)["tokens"]
    dense = {a["id"] for a in always_on}
    for kept, every in zip(data["tokens"], everything):  # the slots of always-on features go to the next ones
        assert [f["id"] for f in kept["features"]] == [f["id"] for f in every["features"] if f["id"] not in dense][:3]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"left out: {len(always_on)} always-on features" in out and "#7 (" in out and "%)" in out.splitlines()[-1]
    assert any(f["id"] == 7 for t in everything for f in t["features"])


def test_errors_are_one_line(tiny_qwen3, tmp_path, capsys):
    Sae(SaeConfig(d_in=2048, d_sae=128, k=4, hookpoint="resid_post.1")).save(tmp_path / "big")
    code = main(["features", "--model", str(tiny_qwen3), "--sae", str(tmp_path / "big"), "--text", "hi"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # above it: progress bars of the model load
    assert code == 2 and err.startswith("error: SAE width d_in=2048 does not match")
    code = main(
        [
            "features",
            "--model",
            str(tiny_qwen3),
            "--sae",
            str(tmp_path / "big"),
            "--text",
            "hi",
            "--hookpoint",
            "resid_post.7",
        ]
    )
    assert code == 2 and "layer 7 is out of range" in capsys.readouterr().err
    assert main(["features", "--model", str(tiny_qwen3), "--sae", str(tmp_path / "big"), "--text", " "]) == 2
    assert "--text is empty" in capsys.readouterr().err
    assert (
        main(
            [
                "features",
                "--model",
                str(tiny_qwen3),
                "--sae",
                str(tmp_path / "big"),
                "--text",
                "hi",
                "--max-density",
                "0",
            ]
        )
        == 2
    )
    assert "--max-density is a share of tokens in (0, 1]" in capsys.readouterr().err


def test_an_empty_tuple_default_parses_to_an_empty_tuple():
    """`qwenscope serve` without --sae serves the model's default SAE: the empty default must not become ("",)."""
    import argparse

    from qwenscope.cli_args import add_dataclass_args, from_args
    from qwenscope.serve.api import ServeConfig

    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, ServeConfig)
    assert from_args(ServeConfig, parser.parse_args([])).sae == ()
    assert from_args(ServeConfig, parser.parse_args(["--sae", "a,b"])).sae == ("a", "b")
