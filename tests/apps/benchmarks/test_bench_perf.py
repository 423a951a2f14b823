"""experiments/benchmark_redundancy/benchmarks_perf.py: its checkpoint list (six checkpoints, every shipped SAE
layer)."""

import pytest
from bench_scripts import bench_script


@pytest.fixture(scope="module")
def bench():
    with bench_script("benchmarks_perf") as module:
        yield module


def test_six_checkpoints_cover_every_shipped_sae_layer(bench):
    assert len(bench.CHECKPOINTS) == 6
    assert {hp for model, hp in bench.CHECKPOINTS.values() if model == "smollm2-135m"} == {
        None,
        "resid_post.3",
        "resid_post.15",
        "resid_post.25",
    }
    assert {hp for model, hp in bench.CHECKPOINTS.values() if model == "gemma3-270m"} == {None, "resid_post.9"}
    assert len({bench.file_name(c) for c in bench.CHECKPOINTS}) == 6  # one score file each
