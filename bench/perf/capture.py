"""Benchmark: early-stopped ``resid_post.L`` capture vs a full forward with ``output_hidden_states=True``.

Same model (smollm2-135m, fp32, CPU unless CUDA is there), same batch, interleaved runs in one process; medians.
Goal (issue 2): >= 2.5x at L = 7 and >= 1.6x at L = 15.

    .venv/bin/python bench/perf/capture.py [--batch 4] [--seq 256] [--repeats 7]

Writes bench/perf/results/capture.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from qwenscope import get_activations, load_model
from qwenscope.experiment import add_common_args, default_device, interleaved, medians, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", default="7,15")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    add_common_args(parser, repeats=7, out=Path(__file__).parent / "results" / "capture.json")
    args = parser.parse_args()

    device = default_device()
    model, tokenizer = load_model(args.model, device=device)
    ids = torch.randint(0, len(tokenizer), (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    layers = [int(x) for x in args.layers.split(",")]

    def full():
        return model(ids, output_hidden_states=True, use_cache=False)

    with torch.no_grad():
        reference = full().hidden_states
        for layer in layers:  # correctness first: the capture is the same tensor
            got = get_activations(model, ids, [f"resid_post.{layer}"])[f"resid_post.{layer}"]
            assert torch.equal(got, reference[layer + 1]), f"capture at layer {layer} differs from hidden_states"
        variants = {"full": full}
        for layer in layers:
            hp = f"resid_post.{layer}"
            variants[hp] = lambda hp=hp: get_activations(model, ids, [hp])
        full(), get_activations(model, ids, [f"resid_post.{layers[0]}"])  # warm-up
        times = interleaved(variants, args.repeats)  # interleaved, so drift hits every variant alike

    med = medians(times)
    tokens = args.batch * args.seq
    print(f"model {args.model} on {device}, batch {args.batch} x {args.seq} tokens, median of {args.repeats}")
    print(f"{'variant':<16} {'median ms':>10} {'tokens/s':>10} {'speed-up':>9}")
    rows = []
    for name, t in med.items():
        speedup = med["full"] / t
        print(f"{name:<16} {t * 1000:>10.1f} {tokens / t:>10.0f} {speedup:>8.2f}x")
        rows.append(
            {
                "variant": name,
                "median_s": t,
                "tokens_per_s": tokens / t,
                "speedup_vs_full": speedup,
                "runs_s": times[name],
            }
        )
    out = write_result(
        args.out,
        {
            "bench": "capture",
            "model": args.model,
            "device": device,
            "batch": args.batch,
            "seq": args.seq,
            "repeats": args.repeats,
            "results": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
