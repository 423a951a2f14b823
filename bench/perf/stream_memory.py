"""Peak memory of an ActivationStream does not grow with the token count: 1M vs 10M tokens.

Each count runs in a fresh process (peak RSS = VmHWM; ``qwenscope.experiment.probe_rss("stream", n)``, the probe the
memory tests run) streaming two hookpoints of a tiny random Llama over a repeated corpus (the model's size does not
change the stream's buffering; a real model would take hours for 10M tokens on a CPU). The baseline is the 1M-token run
of the same invocation.

    .venv/bin/python bench/perf/stream_memory.py                  # 1M and 10M tokens, 3 repeats each
    .venv/bin/python bench/perf/stream_memory.py --tokens 100000,1000000 --repeats 1

Writes bench/perf/results/stream_memory.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from qwenscope.experiment import add_common_args, probe_rss, write_result

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "perf" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="1000000,10000000", help="comma-separated counts; the first is the base")
    add_common_args(parser, repeats=3, out=RESULTS / "stream_memory.json")
    args = parser.parse_args()
    counts = [int(t) for t in args.tokens.split(",")]
    runs: dict[int, list[dict]] = {c: [] for c in counts}
    t0 = time.perf_counter()
    for r in range(args.repeats):  # interleaved, so a change in machine load hits every count alike
        for c in counts:
            runs[c].append(probe_rss("stream", c))
            print(
                f"repeat {r + 1}/{args.repeats}, {c:>11,} tokens: {runs[c][-1]['rss_kb'] / 1024:7.1f} MiB "
                f"({runs[c][-1]['seconds']:.0f} s)",
                flush=True,
            )
    base = statistics.median(x["rss_kb"] for x in runs[counts[0]])
    rows = []
    print(f"\n{'tokens':>12} {'streamed':>12} {'peak RSS (median)':>18} {'vs base':>8}")
    for c in counts:
        med = statistics.median(x["rss_kb"] for x in runs[c])
        rows.append(
            {
                "tokens": c,
                "streamed": runs[c][0]["n"],
                "peak_rss_mib": med / 1024,
                "ratio": med / base,
                "runs_mib": [x["rss_kb"] / 1024 for x in runs[c]],
                "seconds": statistics.median(x["seconds"] for x in runs[c]),
            }
        )
        print(f"{c:>12,} {runs[c][0]['n']:>12,} {med / 1024:>14.1f} MiB {med / base:>7.2f}x")
    out = write_result(args.out, {"rows": rows, "repeats": args.repeats, "total_seconds": time.perf_counter() - t0})
    print(f"goal: {counts[-1]:,} tokens <= 1.2x the peak of {counts[0]:,}; wrote {out}")


if __name__ == "__main__":
    main()
