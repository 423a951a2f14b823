"""Smoke test of bench/perf/train.py: every library's step runs on the real shapes, trains, and the JSON is complete."""

import json

import pytest
from bench_scripts import bench_script

pytest.importorskip("sae_lens")
pytest.importorskip("sparsify")


@pytest.fixture
def bench():
    with bench_script("train") as module:
        yield module


def test_bench_train_tiny_run(tmp_path, bench):
    out = tmp_path / "train.json"
    argv = ["--synthetic", "--steps", "3", "--repeats", "1", "--batch-size", "256", "--peak-size", "128"]
    libs = ["qwenscope", "sparsify", "saelens"]  # saelens-sparse differs from saelens by one config flag
    argv += ["--libraries", ",".join(libs), "--out", str(out)]
    assert bench.main(argv) == 0  # 1 when a library's loss does not go down
    result = json.loads(out.read_text())
    assert result["settings"]["d_in"] == 576 and result["settings"]["d_sae"] == 9216 and result["settings"]["k"] == 32
    assert result["settings"]["auxk_modes"] == ["off", "on"]
    for mode in ("off", "on"):  # AuxK off and on, each library in both
        block = result["auxk"][mode]
        assert list(block["results"]) == libs
        for row in block["results"].values():
            assert row["loss_decreased"] and row["tokens_per_s"] > 0 and len(row["step_s"]) == 3
        assert set(block["ratios_tokens_per_s"]) == {"qwenscope/sparsify", "qwenscope/saelens"}
    assert result["auxk"]["off"]["qwenscope_flops"]["per_step"] == 2 * 256 * 576 * 9216 + 8 * 256 * 32 * 576
    assert result["peak"]["median_gflops_per_s"] > 0
