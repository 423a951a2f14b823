"""The real launcher end to end: `torchrun --nproc_per_node 2 -m qwenscope train` (gloo on the CPU) on a cache that
`qwenscope cache` wrote from a tiny Qwen3 gives the SAE of a one-process `qwenscope train` on the same cache."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from tiny_models import save_tiny_qwen3

from qwenscope import load_sae
from qwenscope.cli import main

TRAIN = [
    "train",
    "--expansion-factor",
    "2",
    "--k",
    "4",
    "--batch-size",
    "256",
    "--steps",
    "8",
    "--lr",
    "2e-3",
    "--warmup-steps",
    "2",
    "--save-every",
    "4",
    "--dead-tokens",
    "512",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    save_tiny_qwen3(root / "model")
    docs = [f"Document {i}: " + " ".join(f"word{(i * 7 + j) % 53}" for j in range(60)) for i in range(60)]
    (root / "docs.txt").write_text("\n\n".join(docs), encoding="utf-8")
    args = [
        "cache",
        "--model",
        str(root / "model"),
        "--hookpoints",
        "resid_post.0,resid_post.1",
        "--dataset",
        str(root / "docs.txt"),
        "--tokens",
        "2048",
        "--out",
        str(root / "acts"),
    ]
    assert main(args) == 0
    return root / "acts"


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_torchrun_two_gloo_ranks_equal_one_process(cache, tmp_path):
    assert main([*TRAIN, "--activations", str(cache), "--out", str(tmp_path / "one")]) == 0
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = tmp_path / "logs"  # each rank's own stdout and stderr, so that a failing rank says why
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "--log-dir",
        str(logs),
        "--redirects",
        "3",
        "--tee",
        "3",
        "-m",
        "qwenscope",
        *TRAIN,
        "--activations",
        str(cache),
        "--out",
        str(tmp_path / "two"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    ranks = "\n".join(f"--- {f.relative_to(logs)}\n{f.read_text()[-3000:]}" for f in sorted(logs.rglob("std*.log")))
    assert done.returncode == 0, f"{done.stderr[-2000:]}\n{ranks}"
    for name in ("resid_post.0", "resid_post.1"):
        one, two = load_sae(tmp_path / "one" / name), load_sae(tmp_path / "two" / name)
        for key, value in one.state_dict().items():
            # two ranks vs one process: gradients all-reduced in another order, fp32 ~1e-6 after the steps
            torch.testing.assert_close(two.state_dict()[key], value, atol=1e-5, rtol=1e-5, msg=f"{name} {key}")
    assert (tmp_path / "two" / "metrics.jsonl").read_text().count("\n") == 1  # log_every 10: the last step only
    assert done.stdout.count("SAEs in") == 1  # rank 0 reports for both
