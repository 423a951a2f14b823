"""bench/perf/steer_op.py on the CPU at tiny shapes: the cases it times are the ones it names (idle on row 0, add-only
rows, two clamped features per row), and a run times every shape and mode against its baselines."""

import argparse

import pytest
import torch
from bench_scripts import bench_script


@pytest.fixture
def bench():
    with bench_script("steer_op") as module:
        yield module


def test_cases_steer_as_named(bench):
    d, n, rows, slots = 16, 12, 5, 4
    idle = bench.make_case(d, n, rows, slots, "idle", torch.float32, "cpu", 0)
    add = bench.make_case(d, n, rows, slots, "add", torch.float32, "cpu", 0)
    clamp = bench.make_case(d, n, rows, slots, "clamp2", torch.float32, "cpu", 0)
    assert torch.equal(idle[1], torch.zeros(n, dtype=torch.int32))
    assert add[1].min() >= 1 and add[1].max() <= rows - 1  # every token steered, never by row 0
    assert torch.equal(add[1][:4], add[1][:1].expand(4))  # a request's tokens share a row
    assert not add[3].any() and not add[6].any()  # add only: no encoder or decoder rows
    used = clamp[3].abs().sum(-1) > 0  # (rows, slots)
    assert not used[0].any() and used[1:, :2].all() and not used[:, 2:].any()
    assert not torch.equal(bench.steer_body(*clamp), bench.steer_body(*clamp[:3], *add[3:]))  # the clamps bite


def test_a_run_times_every_shape_and_mode(bench):
    args = argparse.Namespace(device="cpu", d=[16, 24], tokens=[4], rows=5, slots=4, iters=2, repeats=1, seed=0)
    result = bench.run(args)
    assert result["bodies"] == ["torch"]  # Triton needs a GPU
    assert [(c["d"], c["mode"]) for c in result["cases"]] == [(d, m) for d in (16, 24) for m in bench.MODES]
    for case in result["cases"]:
        assert set(case["us_per_call"]) == {"copy", "mlp", "torch"} and min(case["us_per_call"].values()) > 0
        assert case["share_of_mlp"]["torch"] == case["us_per_call"]["torch"] / case["us_per_call"]["mlp"]
    lines = bench.table(result).splitlines()
    assert len(lines) == 2 + len(result["cases"]) and "torch/mlp" in lines[0]
    assert [(f["streams"], f["hooked_layers"]) for f in result["fill"]] == [(s, n) for s in (1, 8, 32) for n in (1, 4)]
    assert all(f["us_per_step"] > 0 for f in result["fill"])
