"""bench/perf/vllm_serve.py without servers: the loads' bodies (each stream its own steering, within the table) and
the summary of runs (medians, ratios, exactness) written, printed and plotted as a run would."""

import argparse
import json
from pathlib import Path

import pytest
from bench_scripts import bench_script

from qwenscope.experiment import write_result

PERF = Path(__file__).resolve().parents[2] / "bench" / "perf"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(PERF))  # it imports serve.py beside it, as running it as a script does
    with bench_script("vllm_serve") as module:
        yield module


def args(**kw) -> argparse.Namespace:
    base = {
        "name": "m",
        "hookpoint": "resid_post.15",
        "features": list(range(10, 90, 10)),
        "strength": 2.0,
        "clamp": 5.0,
    }
    return argparse.Namespace(**(base | {"max_tokens": 8, "streams": [1, 8], "hf_streams": 16, "device": "cpu"} | kw))


def test_every_stream_steers_with_its_own_steering_and_idle_with_none(bench):
    a = args()
    assert "steering" not in bench.body(a, "idle", 3, 0)
    adds = {json.dumps(bench.body(a, "add", i, 0)["steering"]) for i in range(bench.N_STEERINGS)}
    assert len(adds) == bench.N_STEERINGS  # as many rows as steerings, then they repeat
    assert bench.body(a, "add", 0, 0)["steering"] == bench.body(a, "add", bench.N_STEERINGS, 0)["steering"]
    clamp = bench.body(a, "clamp2", 1, 2)["steering"][0]
    assert clamp["mode"] == "clamp" and clamp["acts"] == "own" and len(clamp["features"]) == 2


def test_the_summary_gives_medians_ratios_and_exactness(bench, tmp_path, capsys):
    a = args()

    def runs(*tps):
        return [{"stream_tokens_per_s": t, "tokens_per_s": 0.0, "crosstalk": 0, "errors": 0} for t in tps]

    measured = {f"{m}@{s}": runs(100.0 * s, 90.0 * s, 95.0 * s) for m in ("plain", "idle", "add") for s in (1, 8)}
    measured |= {f"clamp2@{s}": runs(80.0 * s, 85.0 * s, 70.0 * s) for s in (1, 8)}
    measured |= {"add@16": runs(1000.0, 1100.0, 900.0), "hf@16": runs(200.0, 250.0, 150.0)}
    result = bench.summarize(a, measured, 10, [{"prompt": "x"}])
    assert result["tokens_per_s"]["plain@8"] == 760.0 and result["ratios"]["clamp2/plain@8"] == pytest.approx(80 / 95)
    assert result["ratios"]["add/hf@16"] == 5.0
    assert result["exactness"] == {
        "requests": 10,
        "equal_to_hf": 9,
        "first_differing": {"prompt": "x"},
        "dtype": "float32",
    }
    result["config"] = vars(a)
    write_result(tmp_path / "vllm_serve.json", result)
    bench.report(result)
    bench.plot(result, tmp_path / "vllm_serve.png")
    assert "9 of 10 requests" in capsys.readouterr().out and (tmp_path / "vllm_serve.png").stat().st_size > 0


def test_each_repeat_turns_the_order_within_each_stream_count(bench):
    loads = [
        ("plain", "idle", 8),
        ("plugin", "idle", 8),
        ("plugin", "add", 8),
        ("plugin", "add", 16),
        ("hf", "add", 16),
    ]
    assert bench.rotated(loads, 0) == loads
    firsts = {bench.rotated(loads, r)[0] for r in range(3)}
    assert firsts == {("plain", "idle", 8), ("plugin", "idle", 8), ("plugin", "add", 8)}
    assert bench.rotated(loads, 1)[3:] == [("hf", "add", 16), ("plugin", "add", 16)]
    assert sorted(bench.rotated(loads, 2)) == sorted(loads)
