"""Measurement: wall-clock time of ``qwenscope eval --suite core,random`` for the working tree and for git revisions.

Each variant is the whole command in a fresh process (imports, model and SAE loading, the core suite with its
random-weight baselines, the report), run with ``python -m qwenscope`` from that source tree: the working tree, and
each ``--rev`` exported with ``git archive`` to a temporary folder. Runs are interleaved (every variant once per
repeat) so that drift on a shared machine hits them alike; medians of wall-clock time and of the child processes'
CPU time; the ratio is each variant's median over the working tree's.

    .venv/bin/python bench/perf/eval_random.py --rev HEAD~1 [--model smollm2-135m] [--n-tokens 2048] [--repeats 3]

Writes bench/perf/results/eval_random.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from qwenscope.experiment import add_common_args, write_result

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def export(rev: str, folder: Path) -> Path:
    """The ``qwenscope`` package of git revision ``rev`` under ``folder``; returns ``folder``."""
    folder.mkdir(parents=True)
    archive = folder / "src.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), rev, "qwenscope"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    archive.unlink()
    return folder


def run_once(tree: Path, command: list[str], out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``command`` run in ``tree`` (``python -m`` imports from the current folder
    first) with ``tree`` on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([*command, "--out", str(out)], cwd=tree, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", action="append", default=[], help="a git revision to time beside the working tree")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sae", default="", help="SAE source; default: the model's shipped SAE")
    parser.add_argument("--dataset", default="dataset-build:multi")
    parser.add_argument("--n-tokens", type=int, default=2048)
    add_common_args(parser, repeats=3, out=HERE / "results" / "eval_random.json")
    args = parser.parse_args()
    command = [sys.executable, "-m", "qwenscope", "eval", "--suite", "core,random", "--model", args.model]
    command += ["--sae", args.sae or args.model, "--dataset", args.dataset, "--n-tokens", str(args.n_tokens)]

    with tempfile.TemporaryDirectory() as tmp:  # absolute paths: each command runs in its tree
        trees = {"worktree": ROOT} | {rev: export(rev, Path(tmp) / f"rev{i}") for i, rev in enumerate(args.rev)}
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
        for repeat in range(args.repeats):
            for name, tree in trees.items():
                runs[name].append(run_once(tree, command, Path(tmp) / "out"))
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1][0]:.1f} s" for k, v in runs.items()))

    wall = {name: statistics.median(w for w, _ in times) for name, times in runs.items()}
    cpu = {name: statistics.median(c for _, c in times) for name, times in runs.items()}
    for name in trees:
        print(
            f"{name:>10}: median {wall[name]:6.1f} s wall, {cpu[name]:6.1f} s CPU; "
            f"{wall[name] / wall['worktree']:.2f}x the working tree's wall time"
        )
    write_result(
        args.out,
        {
            "command": " ".join(command[1:]),
            "repeats": args.repeats,
            "runs": {name: [{"wall_s": w, "cpu_s": c} for w, c in times] for name, times in runs.items()},
            "median_wall_s": wall,
            "median_cpu_s": cpu,
            "wall_ratio_to_worktree": {name: wall[name] / wall["worktree"] for name in trees},
        },
    )


if __name__ == "__main__":
    main()
