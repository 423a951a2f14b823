"""bench/benchmarks_perf.py: its checkpoint list (six checkpoints, every shipped SAE layer)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "benchmarks_perf.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_perf", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks_perf"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("benchmarks_perf", None)


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
