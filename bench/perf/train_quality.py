"""Benchmark: does choosing the active features from a cheaper product cost SAE quality? Exact vs bf16 training.

Two parts, on real activations (a ``qwenscope cache`` folder):

1. Training at equal tokens. The same TopK SAE (d_sae = 16 d_in, k 32, AuxK on with ``--dead-tokens``) is trained
   ``--steps`` steps on the same batches in the same order twice: ``encoder="exact"`` (fp32 product, the default) and
   ``encoder="bf16"`` (a bf16 product picks k + 8 candidates per token, rescored exactly in fp32). Reported: held-out
   FVU (tokens never trained on, encoded exactly), the dead fraction at the end of training (features that fired on
   none of the last ``--dead-tokens`` tokens), features that never fire on the held-out tokens, and L0. Where the
   device lacks native bf16 products (AVX2 CPUs: torch's emulated bf16 matmul is ~300x slower than fp32), the bf16
   product is *emulated* at fp32 speed, and the JSON says so: inputs rounded to bf16, multiplied and accumulated in
   fp32, the result rounded to bf16, as a native bf16 GEMM with fp32 accumulation does up to the order of the sums.
2. Candidate recall. With the exact-trained SAE, on held-out tokens: how many of the exact top-k features each cheap
   selector keeps (and the share of the exact top-k activation mass), for bf16 and fp16 products (same emulation)
   and for a low-rank product on the top-r principal directions of the activations (the "rank-r" rows).

    .venv/bin/python bench/perf/train_quality.py --activations ACTS/resid_post.15 [--steps 200] [--batch-size 4096]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import qwenscope
from qwenscope.data import ActivationCache
from qwenscope.experiment import write_result
from qwenscope.sae.model import Sae
from qwenscope.train import TrainConfig, Trainer, kernels, precision

K = 32
EXPANSION = 16


def emulated_lowp_pre_acts(x, W_enc, b_enc, b_dec, dtype, out=None):
    """What a native low-precision GEMM with fp32 accumulation returns, at fp32 speed (see the module doc)."""
    xc = x if b_dec is None else x - b_dec
    r = torch.addmm(b_enc.to(dtype).float(), xc.to(dtype).float(), W_enc.to(dtype).float()).to(dtype)
    return r if out is None else out.copy_(r)


def load_tokens(folder: str, hookpoint: str | None, held_out: int) -> tuple[Tensor, Tensor, str]:
    cache = ActivationCache(folder, hookpoint=hookpoint)
    x = torch.cat([cache.load_shard(i) for i in range(len(cache.cfg["shards"]))])
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    if len(x) <= 2 * held_out:
        raise SystemExit(f"the cache holds {len(x)} tokens; need more than twice --held-out ({held_out})")
    return x[:-held_out], x[-held_out:], repr(cache)


def train_batches(train: Tensor, batch_size: int, steps: int) -> list[Tensor]:
    """``steps`` batches, epochs of the training tokens in seeded orders (the same list for every variant)."""
    g = torch.Generator().manual_seed(1)
    out: list[Tensor] = []
    while len(out) < steps:
        order = torch.randperm(len(train), generator=g)
        out += [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    return out[:steps]


@torch.no_grad()
def heldout_metrics(sae: Sae, x: Tensor, chunk: int = 4096) -> dict[str, float]:
    sse, fired, l0 = 0.0, torch.zeros(sae.d_sae, dtype=torch.bool), 0.0
    xf = x.float()
    for i in range(0, len(xf), chunk):
        part = xf[i : i + chunk]
        out = sae(part)
        sse += float((part - out.sae_out).pow(2).sum())
        active = out.top_acts > 0
        fired[out.top_indices[active]] = True
        l0 += float(active.sum())
    total = float((xf - xf.mean(0)).pow(2).sum())
    return {"fvu": sse / total, "never_fire": 1 - float(fired.float().mean()), "l0": l0 / len(xf)}


def train(variant: str, train_x: Tensor, idx: list[Tensor], args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    cfg = TrainConfig(
        expansion_factor=(EXPANSION,),
        k=(K,),
        batch_size=args.batch_size,
        steps=args.steps,
        warmup_steps=min(100, args.steps // 10),
        dead_tokens=args.dead_tokens,
        encoder="exact" if variant == "exact" else "bf16",
        save_every=10**9,
        log_every=10**9,
    )
    trainer = Trainer(cfg, {"resid": train_x.shape[1]}, out=Path(tmp) / variant, resume=False)
    curve = []
    t0 = time.perf_counter()
    for step, rows in enumerate(idx):
        m = trainer.train_step(train_x[rows].float())["resid"]
        if (step + 1) % max(1, args.steps // 10) == 0 or step + 1 == args.steps:
            curve.append({"step": step + 1, "fvu": m["fvu"], "dead": m["dead"], "auxk": m["auxk"]})
            print(f"  {variant:<5} step {step + 1:>5}: train fvu {m['fvu']:.4f}, dead {m['dead']:.2%}", flush=True)
    seconds = time.perf_counter() - t0
    (state,) = trainer.states
    dead_end = float((state.since_fired > args.dead_tokens).float().mean())
    return {"sae": state.sae, "seconds": seconds, "dead_fraction": dead_end, "curve": curve}


@torch.no_grad()
def recall(sae: Sae, x: Tensor, fit: Tensor, lowp: str) -> list[dict[str, Any]]:
    """Share of the exact top-k (ids, and activation mass) that each cheap selector keeps."""
    W, b = sae.W_enc.detach(), sae.b_enc.detach()
    xc = x.float() - sae.b_dec.detach()
    pre = xc @ W + b
    top_v, top_i = pre.relu().topk(K, dim=-1)
    mass = top_v.sum(-1).clamp_min(1e-12)
    rows = []

    def score(name: str, approx: Tensor, candidates: int) -> None:
        cand = approx.float().topk(candidates, dim=-1).indices
        v, j = pre.gather(1, cand).relu().topk(K, dim=-1)  # rescored exactly
        kept = (cand.gather(1, j).unsqueeze(-1) == top_i.unsqueeze(1)).any(-1).float().mean()
        rows.append(
            {
                "selector": name,
                "candidates": candidates,
                "id_recall": float(kept),
                "mass_recall": float((v.sum(-1) / mass).mean()),
            }
        )

    for dtype in (torch.bfloat16, torch.float16):
        approx = (
            kernels.lowp_pre_acts(x.float(), W, b, sae.b_dec.detach(), dtype)
            if lowp == "native"
            else emulated_lowp_pre_acts(x.float(), W, b, sae.b_dec.detach(), dtype)
        )
        for c in (K, kernels.n_candidates(K), 2 * K):
            score(str(dtype).removeprefix("torch."), approx, c)
    fc = fit.float() - sae.b_dec.detach()
    mu = fc.mean(0)
    _, vecs = torch.linalg.eigh((fc - mu).T @ (fc - mu))
    for r in (sae.d_in // 4, sae.d_in // 2, 3 * sae.d_in // 4):
        P = vecs[:, -r:]
        approx = ((xc - mu) @ P) @ (P.T @ W) + (mu @ W + b)
        for c in (kernels.n_candidates(K), 4 * K):
            score(f"rank-{r}", approx, c)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--activations", required=True, metavar="DIR", help="a `qwenscope cache` folder")
    parser.add_argument("--hookpoint", help="hookpoint inside --activations when it holds several")
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps per variant")
    parser.add_argument("--batch-size", type=int, default=4096, help="tokens per step")
    parser.add_argument("--dead-tokens", type=int, default=100_000, help="AuxK: tokens without firing = dead")
    parser.add_argument("--held-out", type=int, default=32768, help="tokens kept out of training for the FVU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_quality.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    train_x, held, data = load_tokens(args.activations, args.hookpoint, args.held_out)
    train_x, held = train_x.to(device), held.to(device)
    idx = train_batches(train_x, args.batch_size, args.steps)
    lowp = "native" if precision.hardware_bf16(device) else "emulated"
    if lowp == "emulated":
        kernels.lowp_pre_acts = emulated_lowp_pre_acts  # type: ignore[assignment]  # the trainer calls it by module
    print(f"{data}: {len(train_x)} training tokens, {len(held)} held out; bf16 product {lowp} on {device}")

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("exact", "bf16"):
            run = train(variant, train_x, idx, args, tmp)
            metrics = heldout_metrics(run["sae"], held)
            results[variant] = {
                **metrics,
                "dead_fraction": run["dead_fraction"],
                "train_seconds": run["seconds"],
                "curve": run["curve"],
            }
            if variant == "exact":
                rec = recall(run["sae"], held[:8192], train_x[:16384], lowp)
    rel = results["bf16"]["fvu"] / results["exact"]["fvu"] - 1
    tokens = args.steps * args.batch_size
    print(
        f"\nTopK SAE d_sae {EXPANSION}x d_in, k {K}, {args.steps} steps x {args.batch_size} = {tokens} tokens, "
        f"AuxK on (dead after {args.dead_tokens} tokens); bf16 product {lowp}"
    )
    print(f"{'encoder':<8} {'held-out FVU':>13} {'dead at end':>12} {'never fire (held-out)':>22} {'L0':>6}")
    for variant, r in results.items():
        print(f"{variant:<8} {r['fvu']:>13.4f} {r['dead_fraction']:>12.2%} {r['never_fire']:>22.2%} {r['l0']:>6.1f}")
    print(f"bf16 vs exact held-out FVU: {rel:+.2%} (relative)")
    print(f"\ncandidate recall on {min(8192, len(held))} held-out tokens (exact-trained SAE), exact top-{K} kept:")
    print(f"{'selector':<10} {'candidates':>10} {'id recall':>10} {'mass recall':>12}")
    for row in rec:
        print(f"{row['selector']:<10} {row['candidates']:>10} {row['id_recall']:>10.4f} {row['mass_recall']:>12.5f}")

    out = write_result(
        args.out,
        {
            "bench": "train_quality",
            "versions": {"qwenscope": qwenscope.__version__, "torch": torch.__version__},
            "data": data,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "bf16_product": lowp,
            "settings": {
                "expansion_factor": EXPANSION,
                "k": K,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "tokens": tokens,
                "dead_tokens": args.dead_tokens,
                "held_out_tokens": len(held),
                "candidates": kernels.n_candidates(K),
            },
            "results": results,
            "bf16_vs_exact_fvu_relative": rel,
            "train_seconds_per_step": {v: results[v]["train_seconds"] / args.steps for v in results},
            "recall": rec,
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
