"""The Qwen-Scope evaluation recipe on files of the real layout: a tiny Qwen3 with the real tokenizer and a folder
of ``layer<N>.sae.pt`` named like a release."""

import importlib.util
import json

import pytest
from bench_scripts import bench_script
from sae_files import write_qwenscope_layer
from tiny_models import tiny_qwen3

from qwenscope import QwenscopeError


def test_the_recipe_writes_one_row_per_layer(tmp_path):
    pytest.importorskip("zstandard")
    if importlib.util.find_spec("sae_probes") is None:
        pytest.skip("could not import 'sae_probes': not installed")
    model, tokenizer = tiny_qwen3()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    release = tmp_path / "SAE-Res-Tiny-W1K-L0_8"  # the release layout; k = 8 from the name
    release.mkdir()
    for layer in (0, 1):
        write_qwenscope_layer(release / f"layer{layer}.sae.pt", d_model=64, d_sae=128, seed=layer)
    (tmp_path / "text.txt").write_text("\n\n".join(f"The river number {i} runs to the sea." for i in range(40)))
    args = ["--release", str(release), "--model", str(tmp_path / "model"), "--layers", "0,1", "--layers-per-run", "1"]
    args += ["--dataset", str(tmp_path / "text.txt"), "--n-tokens", "64", "--probe-tasks", "glue_sst2"]
    args += ["--probe-train", "8", "--probe-test", "4", "--out", str(tmp_path / "out")]
    with bench_script("evaluate_release") as recipe:
        result = recipe.main(args)
        assert set(result["rows"]) == {"resid_post.0", "resid_post.1"}
        for row in result["rows"].values():
            assert all(row[key] is not None for key, _ in recipe.COLUMNS)
            assert row["explained_variance_random"] < 1.0
        table = (tmp_path / "out" / "table.md").read_text()
        assert table.count("\n| ") == 3 and "| 0 |" in table and "| 1 |" in table  # header + two layers
        assert json.loads((tmp_path / "out" / "table.json").read_text())["rows"] == result["rows"]
        with pytest.raises(QwenscopeError, match="pass --model .* and --layers"):
            recipe.main(["--release", str(release)])
