r"""Benchmark: the host memory the vLLM plugin's scheduler gate holds for its SAEs, weights against ``meta``.

Where vLLM's worker runs in a process of its own (vLLM on the CPU, or any multiprocess executor), the scheduler's
gate (``gate.py``) loads the served SAEs once more in the engine core. With ``load_saes(..., weights=False)`` each SAE
is loaded, checked and moved to the ``meta`` device, so the gate keeps configs and shapes. Each variant runs in a
fresh interpreter; the baseline is the same interpreter with the plugin imported and nothing loaded.

- ``held``: resident memory after the load (VmRSS) minus the baseline's: what the engine core keeps;
- ``peak``: the process's peak (VmHWM) minus the baseline's: the moment of the load itself.

    python bench/perf/gate_memory.py          # one 65,536 x 2,048 fp32 TopK SAE (~1 GB), ~1 min

Writes bench/perf/results/gate_memory.json.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from qwenscope.experiment import add_common_args, medians, peak_rss, write_result

RESULTS = Path(__file__).parent / "results" / "gate_memory.json"
PROBE = """
import sys
from qwenscope.vllm_plugin.engine import load_saes
if sys.argv[1] != "none":
    saes = load_saes(sys.argv[2], weights=sys.argv[1] == "weights")
with open("/proc/self/status") as f:
    result = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-in", type=int, default=2048)
    parser.add_argument("--d-sae", type=int, default=65536)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qwenscope-bench-gate"))
    add_common_args(parser, repeats=3, out=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from qwenscope import Sae, SaeConfig

    folder = args.work / f"sae-{args.d_sae}x{args.d_in}"
    if not (folder / "cfg.json").exists():
        cfg = SaeConfig(d_in=args.d_in, d_sae=args.d_sae, k=50, activation="topk", hookpoint="resid_post.14")
        Sae(cfg).save(folder)
    spec = f"sae={folder}"
    held: dict[str, list[float]] = {"none": [], "weights": [], "meta": []}
    peak: dict[str, list[float]] = {k: [] for k in held}
    for _ in range(args.repeats):
        for variant in held:
            report = peak_rss(PROBE, variant, spec)
            held[variant].append(report["result"])
            peak[variant].append(report["peak_rss_mib"])
    h, p = medians(held), medians(peak)
    rows = {v: {"held_mib": h[v] - h["none"], "peak_mib": p[v] - p["none"]} for v in ("weights", "meta")}
    size_mib = 2 * args.d_in * args.d_sae * 4 / 2**20
    print(f"\nSAE {args.d_sae} x {args.d_in} fp32 ({size_mib:.0f} MiB of weights); medians of {args.repeats}, MiB")
    print(f"{'variant':<8} {'held':>8} {'peak':>8}")
    for v, r in rows.items():
        print(f"{v:<8} {r['held_mib']:>8.0f} {r['peak_mib']:>8.0f}")
    print(f"meta / weights held: {rows['meta']['held_mib'] / rows['weights']['held_mib']:.3f}")
    write_result(
        args.out,
        {"d_in": args.d_in, "d_sae": args.d_sae, "weights_mib": size_mib, "rows": rows, "runs": {"held": held}},
    )


if __name__ == "__main__":
    main()
