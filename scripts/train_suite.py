"""Train and evaluate the embedded SAE suite in one run: cache activations, train, evaluate, save fp16 copies.

    python scripts/train_suite.py --model smollm2-135m --hookpoints resid_post.3,resid_post.15,resid_post.25 \
        --dataset mix:default --tokens 4000000 --steps 2000 --device cuda --out runs/smollm2 \
        --eval fortunes-en=fortunes:en --eval synthetic=dataset-build:multi

The same steps as `qwenscope cache`, `qwenscope train` and `qwenscope eval` (library calls, fp32 model on any
device: those commands run on the CPU), so the shipped SAEs can be rebuilt on a GPU in minutes. Text sources for
evaluation are read with their held-out ``test`` split (a JSONL file is read whole: write only test documents).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from qwenscope.data import ActivationStream, StreamConfig, chunk_tokens, iter_texts, write_cache
from qwenscope.evaluate.model_eval import evaluate_saes
from qwenscope.models.load import load_model
from qwenscope.sae.io import save_sae
from qwenscope.train.cli import TrainCommand, _cache_batches
from qwenscope.train.config import TrainConfig
from qwenscope.train.trainer import Trainer

logger = logging.getLogger("train_suite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hookpoints", required=True)
    parser.add_argument("--dataset", default="mix:default")
    parser.add_argument("--tokens", type=int, default=4_000_000, help="activations cached per hookpoint")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--expansion-factor", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--forward-batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval", action="append", default=[], metavar="NAME=SOURCE")
    parser.add_argument("--eval-tokens", type=int, default=32768)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    timings: dict[str, float] = {}

    model, tokenizer = load_model(args.model, device=args.device, dtype=torch.float32)
    hookpoints = [h.strip() for h in args.hookpoints.split(",")]
    start = time.perf_counter()
    cfg = StreamConfig(
        seq_len=256,
        batch_size=args.forward_batch,
        out_batch=4096,
        buffer_tokens=262144,
        outlier_m=10.0,
        max_tokens=args.tokens,
        repeat=True,
        split="train",
    )
    write_cache(ActivationStream(model, tokenizer, args.dataset, hookpoints, cfg), out / "acts", args.tokens)
    timings["cache_s"] = time.perf_counter() - start

    start = time.perf_counter()
    train_cfg = TrainConfig(
        expansion_factor=(args.expansion_factor,),
        k=(args.k,),
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        decay_start=0.7,
        dead_tokens=1_000_000,
        save_every=max(args.steps // 4, 1),
    )
    d_in, _model, batches = _cache_batches(
        TrainCommand(out=str(out / "saes"), activations=str(out / "acts")), train_cfg
    )
    trainer = Trainer(train_cfg, d_in, out / "saes", model=args.model, device=args.device)
    trainer.fit(batches(trainer.step))
    timings["train_s"] = time.perf_counter() - start

    saes = {s.hookpoint: s.sae.eval() for s in trainer.states}
    results: dict[str, dict] = {}
    for spec in args.eval:
        name, _, source = spec.partition("=")
        start = time.perf_counter()
        split = "all" if Path(source).exists() else "test"
        chunks = chunk_tokens(iter_texts(source, split=split), tokenizer, 256)
        with torch.no_grad():
            results[name] = evaluate_saes(model, saes, chunks, batch_size=16, n_tokens=args.eval_tokens, progress=False)
        timings[f"eval_{name}_s"] = time.perf_counter() - start
    for hookpoint, sae in saes.items():
        folder = out / "ship" / hookpoint
        save_sae(sae.to(torch.float16).cpu(), folder)
        summary = {name: res["hookpoints"][hookpoint] for name, res in results.items()}
        (folder / "eval.json").write_text(json.dumps({"evaluated_on": summary, "timings": timings}, indent=1))
    summary = {"timings": timings, "results": {n: r["hookpoints"] for n, r in results.items()}, "args": vars(args)}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
