"""Benchmark: generation tokens/s with steering vs plain ``generate`` (smollm2-135m and its shipped SAE).

Greedy, fixed length (``min_new_tokens`` = ``max_new_tokens``), the same prompt; plain, ``add`` and ``clamp``
steering interleaved in one process; medians. Goal (issue 4): steering at most 5% slower than plain generate.

    .venv/bin/python bench/perf/steer.py [--new-tokens 64] [--batch 1] [--repeats 7]

Writes bench/perf/results/steer.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from qwenscope import load_model, load_sae, steer
from qwenscope.experiment import add_common_args, default_device, interleaved, medians, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sae", default="smollm2-135m")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    add_common_args(parser, repeats=7, out=Path(__file__).parent / "results" / "steer.json")
    args = parser.parse_args()

    device = default_device()
    model, tokenizer = load_model(args.model, device=device)
    sae = load_sae(args.sae).to(device)
    batch = tokenizer(["The history of the city begins"] * args.batch, return_tensors="pt").to(device)
    kw = {
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        "do_sample": False,
        "pad_token_id": tokenizer.eos_token_id,
    }
    variants = {
        "plain": None,
        "add (2 features)": {"features": {10: 4.0, 20: -4.0}, "mode": "add"},
        "clamp (2 features)": {"features": {10: 4.0, 20: 0.0}, "mode": "clamp"},
    }

    def run(spec) -> None:
        with torch.no_grad():
            if spec is None:
                out = model.generate(**batch, **kw)
            else:
                with steer(model, sae, spec["features"], mode=spec["mode"]):
                    out = model.generate(**batch, **kw)
        assert out.shape[1] == batch["input_ids"].shape[1] + args.new_tokens

    # warm-up, then interleaved, so drift hits every variant alike
    calls = {name: (lambda spec=spec: run(spec)) for name, spec in variants.items()}
    times = interleaved(calls, args.repeats, warmup=True)
    med = medians(times)
    tokens = args.batch * args.new_tokens
    print(f"model {args.model} on {device}, batch {args.batch}, {args.new_tokens} new tokens, median of {args.repeats}")
    print(f"{'variant':<20} {'median s':>9} {'tokens/s':>9} {'slower by':>10}")
    rows = []
    for name, t in med.items():
        slower = t / med["plain"] - 1
        print(f"{name:<20} {t:>9.3f} {tokens / t:>9.1f} {slower:>9.1%}")
        rows.append(
            {
                "variant": name,
                "median_s": t,
                "tokens_per_s": tokens / t,
                "slower_than_plain": slower,
                "runs_s": times[name],
            }
        )
    out = write_result(
        args.out,
        {
            "bench": "steer",
            "model": args.model,
            "sae": args.sae,
            "device": device,
            "batch": args.batch,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "results": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
