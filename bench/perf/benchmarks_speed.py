"""Benchmark: feature sets of every GSM8K test item (1,319) in one early-stopped pass, against a plain capture pass
over the same token batches in the same run.

``features``: ``feature_sets`` end to end, uncached (tokenising, batching by length, the forward stopped after
the hookpoint, the SAE at each item's last token, the sparse matrix, the density filter). ``capture``: only
``get_activations`` over the same right-padded batches (the forward, stopped after the hookpoint). Interleaved
repeats, medians; throughput = real (non-pad) tokens per second; goal: features >= 0.8x capture.

    .venv/bin/python bench/perf/benchmarks_speed.py [--repeats 3] [--limit N] [--batch-size 16]

Writes bench/perf/results/benchmarks_speed.json.
"""

from __future__ import annotations

import argparse
import platform

import torch

from qwenscope import get_activations, load_model, load_sae
from qwenscope.apps.benchmarks.data import load_benchmark
from qwenscope.apps.benchmarks.features import FeatureSetConfig, SaeSpec, feature_sets, tokenize
from qwenscope.data.tokens import token_batches
from qwenscope.experiment import add_common_args, interleaved, medians, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hookpoint", default="resid_post.15")
    parser.add_argument("--benchmark", default="gsm8k")
    parser.add_argument("--limit", type=int, default=0, help="first N items only (quick runs)")
    parser.add_argument("--batch-size", type=int, default=16)
    add_common_args(parser, repeats=3, out="bench/perf/results/benchmarks_speed.json")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    sae = load_sae(args.model, hookpoint=args.hookpoint)
    bench = load_benchmark(args.benchmark)
    if args.limit:
        bench = bench.subset(f"{bench.name}[:{args.limit}]", range(min(args.limit, len(bench))))
    spec = SaeSpec(sae, args.model, args.hookpoint)
    cfg = FeatureSetConfig(batch_size=args.batch_size, cache=False)
    ids = tokenize(tokenizer, bench.texts)
    batches = token_batches(ids, cfg.batch_size, cfg.max_batch_tokens)
    n_tokens = sum(map(len, ids))
    padded = sum(b.input_ids.numel() for b in batches)

    def features() -> object:
        return feature_sets(model, tokenizer, bench, [spec], cfg)[0]

    def capture() -> None:
        for b in batches:
            get_activations(model, {"input_ids": b.input_ids, "attention_mask": b.attention_mask}, [args.hookpoint])

    first = features()  # warm-up; also decodes the shipped feature statistics once
    capture()

    def progress(r: int, times: dict[str, list[float]]) -> None:
        print(", ".join(f"repeat {r + 1}/{args.repeats} {k}: {v[-1]:.1f} s" for k, v in times.items()), flush=True)

    # interleaved, so drift on the shared CPU hits both alike
    times = interleaved({"capture": capture, "features": features}, args.repeats, progress=progress)
    med = medians(times)
    ratio = med["capture"] / med["features"]
    result = {
        "model": args.model,
        "hookpoint": args.hookpoint,
        "benchmark": bench.name,
        "items": len(bench),
        "tokens": n_tokens,
        "padded_tokens": padded,
        "batches": len(batches),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "times_s": times,
        "median_s": med,
        "tokens_per_s": {k: n_tokens / v for k, v in med.items()},
        "throughput_ratio": ratio,
        "goal": 0.8,
        "footprint": int((first.matrix.sum(0) > 0).sum()),
        "dropped": len(first.meta["dropped"]),  # type: ignore[attr-defined]
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(f"\n{bench.name}: {len(bench)} items, {n_tokens} tokens ({padded} padded) in {len(batches)} batches")
    print(f"{'pass':<10} {'median s':>9} {'tokens/s':>9}")
    for k in ("capture", "features"):
        print(f"{k:<10} {med[k]:>9.1f} {n_tokens / med[k]:>9.0f}")
    print(f"feature sets at {ratio:.2f}x the plain capture throughput (goal >= 0.8x)")
    print(f"wrote {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
