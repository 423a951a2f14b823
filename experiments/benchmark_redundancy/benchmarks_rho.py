"""Does the feature redundancy R_hat rank benchmarks as their performance redundancy R does? rho(R, R_hat).

Pairs the two results files: R per benchmark set from ``experiments/benchmark_redundancy/benchmarks_perf.py`` (six
checkpoints' per-item answer log-likelihoods; ``experiments/benchmark_redundancy/results/benchmarks_perf.json``) and
R_hat per benchmark set from ``experiments/benchmark_redundancy/benchmarks.py``
(``experiments/benchmark_redundancy/results/benchmarks.json``), over the sets both have (the four benchmarks and their
natural subsets), and reports Spearman rho with a bootstrap interval (resampling the sets) for every SAE and setting.
The report claims about 0.85 over 17 benchmarks and 26 checkpoints.

    .venv/bin/python experiments/benchmark_redundancy/benchmarks_rho.py

Writes experiments/benchmark_redundancy/results/benchmarks_rho.json and
experiments/benchmark_redundancy/results/benchmarks_rho.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from qwenscope.apps.benchmarks.measures import spearman_interval
from qwenscope.experiment import write_result

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--perf", default=str(RESULTS / "benchmarks_perf.json"))
    parser.add_argument("--features", default=str(RESULTS / "benchmarks.json"))
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--out", default=str(RESULTS / "benchmarks_rho.json"))
    args = parser.parse_args(argv)
    perf = json.loads(Path(args.perf).read_text())
    feats = json.loads(Path(args.features).read_text())
    r = {name: s["R"] for name, s in perf["sets"].items()}
    out: dict[str, Any] = {"bench": "benchmarks_rho", "checkpoints": perf["checkpoints"], "R": r, "runs": {}}
    print(f"{'SAE and setting':<44} {'sets':>4} {'rho(R, R_hat)':>13} {'95% bootstrap':>16}")
    for key, run in feats["runs"].items():
        names = [n for n in r if n in run["r_hat"]]
        x = np.array([r[n] for n in names])
        y = np.array([run["r_hat"][n] for n in names])
        rho, low, high = spearman_interval(x, y, n_boot=args.n_boot, seed=0)
        out["runs"][key] = {"sets": names, "R_hat": y.tolist(), "rho": rho, "low": low, "high": high}
        print(f"{key:<44} {len(names):>4} {rho:>13.3f} {f'[{low:.2f}, {high:.2f}]':>16}")
    write_result(Path(args.out), out)
    plot(out, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [k for k in out["runs"] if k.endswith("filter on")]
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.6), squeeze=False)
    for ax, key in zip(axes[0], runs):
        run = out["runs"][key]
        xs = [out["R"][n] for n in run["sets"]]
        ax.scatter(run["R_hat"], xs)
        for name, a, b in zip(run["sets"], run["R_hat"], xs):
            ax.annotate(name, (a, b), fontsize=6)
        ax.set_xlabel("R_hat (features)")
        ax.set_ylabel("R (performance, 6 checkpoints)")
        ax.set_title(
            f"{key.replace(' filter on', '')}\nrho {run['rho']:.2f} [{run['low']:.2f}, {run['high']:.2f}]", fontsize=8
        )
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
