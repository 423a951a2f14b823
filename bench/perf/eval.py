"""Benchmark: ``evaluate_saes`` throughput as a ratio to a plain forward, and the old (plain) evaluation's.

Same model (smollm2-135m, fp32, CPU unless CUDA is there), its shipped SAE (resid_post.15, d_sae 9216, k 32), the
same token batches (held-out text of dataset-build:multi packed into chunks) for every variant:

| variant | what runs per batch |
|---|---|
| ``forward`` | ``model(input_ids, attention_mask)``: one full forward, the LM head at every position |
| ``evaluate_saes`` | the package: a clean forward, then SAE-spliced and zero-ablated forwards from the hookpoint |
|  | on; the LM head at the scored positions only |
| ``old`` | the plain evaluation it replaced (bench/perf/reference_eval.py): three full forwards |

Throughput is scored tokens per second (the positions whose next-token loss counts: all but each row's first and
last); the ratio is ``forward``'s time over the variant's on the same batches (1 = as fast as a plain forward).
Interleaved runs in one process; medians of wall-clock time and of this process's CPU time (the steadier of the two
on a machine shared with other jobs). Before timing, the two evaluations' figures are compared (largest relative
difference over every metric). Goal (issue 8): ``evaluate_saes`` >= 0.3x a plain forward.

    .venv/bin/python bench/perf/eval.py [--batch 4] [--seq 256] [--batches 2] [--repeats 5] [--threads N]
        [--no-old]

Writes bench/perf/results/eval.json.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from pathlib import Path

import torch

from qwenscope import load_model, load_sae
from qwenscope.data import chunk_tokens, iter_texts
from qwenscope.evaluate import evaluate_saes
from qwenscope.experiment import (
    add_common_args,
    default_device,
    interleaved,
    load_script,
    set_threads,
    timed_cpu,
    write_result,
)

HERE = Path(__file__).resolve().parent


# the plain evaluation it replaced, beside this script: the baseline
reference_evaluate_saes = load_script(HERE / "reference_eval.py").reference_evaluate_saes


def max_rel_diff(new: dict, old: dict) -> tuple[float, str]:
    """The largest relative difference between two results' float metrics, and which."""
    worst, where = 0.0, ""
    for hp, metrics in old["hookpoints"].items():
        for key, value in metrics.items():
            if not isinstance(value, float) or not math.isfinite(value):
                continue
            diff = abs(new["hookpoints"][hp][key] - value) / max(abs(value), 1e-12)
            if diff > worst:
                worst, where = diff, f"{hp} {key}"
    return worst, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sae", default="", help="SAE source; default: the model's shipped middle-layer SAE")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batches", type=int, default=2)
    add_common_args(parser, repeats=5, threads=0, out=HERE / "results" / "eval.json")
    parser.add_argument("--no-old", action="store_true", help="skip the old evaluation (the slowest variant)")
    args = parser.parse_args()
    set_threads(args.threads)

    device = default_device()
    model, tokenizer = load_model(args.model, device=device)
    sae = load_sae(args.sae or args.model, device=device)
    saes = {sae.cfg.hookpoint: sae}
    chunks = itertools.islice(
        chunk_tokens(iter_texts("dataset-build:multi", split="test"), tokenizer, args.seq), args.batch * args.batches
    )
    tokens = torch.stack(list(chunks))  # (batch * batches, seq)
    batches = tokens.split(args.batch)

    def forward() -> None:
        with torch.no_grad():
            for ids in batches:
                ids = ids.to(device)
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)

    def new() -> dict:
        return evaluate_saes(model, saes, tokens, batch_size=args.batch, progress=False)

    def old() -> dict:
        return reference_evaluate_saes(model, saes, tokens, batch_size=args.batch)

    variants = {"forward": forward, "evaluate_saes": new, **({} if args.no_old else {"old": old})}
    results = new()  # warm-up, and the figures to compare
    diff, where = max_rel_diff(results, old()) if not args.no_old else (math.nan, "")
    forward()

    def progress(repeat: int, times: dict[str, list[tuple[float, float]]]) -> None:
        print(
            f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1][0]:.1f} s" for k, v in times.items()),
            file=sys.stderr,
            flush=True,
        )

    # interleaved, so drift hits every variant alike
    times = interleaved(variants, args.repeats, timer=timed_cpu, progress=progress)

    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    scored = results["hookpoints"][sae.cfg.hookpoint]["n_scored_tokens"]
    print(
        f"model {args.model} on {device}, {torch.get_num_threads()} threads, SAE {sae.cfg.hookpoint} d_sae "
        f"{sae.d_sae} k {sae.cfg.k}, {args.batches} batches of {args.batch} x {args.seq} tokens ({scored} scored), "
        f"median of {args.repeats}"
    )
    print(
        f"{'variant':<14} {'wall s':>8} {'scored tok/s':>13} {'vs forward':>11} {'CPU s':>8} {'vs forward (CPU)':>17}"
    )
    rows = []
    for name in variants:
        ratio, cpu_ratio = wall["forward"] / wall[name], cpu["forward"] / cpu[name]
        print(
            f"{name:<14} {wall[name]:>8.2f} {scored / wall[name]:>13.0f} {ratio:>10.2f}x {cpu[name]:>8.2f} "
            f"{cpu_ratio:>16.2f}x"
        )
        rows.append(
            {
                "variant": name,
                "median_s": wall[name],
                "scored_tokens_per_s": scored / wall[name],
                "ratio_vs_forward": ratio,
                "median_cpu_s": cpu[name],
                "ratio_vs_forward_cpu": cpu_ratio,
                "runs_s": [w for w, _ in times[name]],
                "runs_cpu_s": [c for _, c in times[name]],
            }
        )
    if not args.no_old:
        print(f"evaluate_saes vs old: largest relative difference {diff:.1e} ({where or 'every metric identical'})")
    out = write_result(
        args.out,
        {
            "bench": "eval",
            "model": args.model,
            "device": device,
            "hookpoint": sae.cfg.hookpoint,
            "d_sae": sae.d_sae,
            "k": sae.cfg.k,
            "batch": args.batch,
            "seq": args.seq,
            "batches": args.batches,
            "scored_tokens": scored,
            "repeats": args.repeats,
            "max_rel_diff_vs_old": None if math.isnan(diff) else diff,
            "max_rel_diff_at": where,
            "figures": results["hookpoints"][sae.cfg.hookpoint],
            "results": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
