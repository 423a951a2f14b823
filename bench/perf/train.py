r"""Benchmark: SAE training throughput of qwenscope vs sparsify vs SAELens on the same activations.

One process, one set of preloaded batches, the same settings for every library: d_in 576 (SmolLM2-135M), d_sae 9216
(x16), TopK k = 32, fp32, Adam at the same constant learning rate (2e-4 / sqrt(d_sae / 2^14), the default of
qwenscope and of sparsify's Adam), the same batch size. Each repeat builds a fresh SAE for every library (and AuxK
mode), takes one untimed warm-up step with each, then times ``--steps`` optimisation steps interleaved step by step
(library after library, the order rotating from step to step), so load from other processes hits all alike even on a
shared machine; the figure is the median step time over all repeats. Each library runs its own SAE module and its own
step (forward, loss, backward, optimizer step and the per-step bookkeeping of its trainer):

    qwenscope  Trainer(TrainConfig(...), {"resid_post.15": d_in}, out=tmp).train_step(x); its default exact encoder,
               and as ``qwenscope-bf16`` (not in the default list) encoder="bf16", for devices with native bf16
    sparsify   the fvu step of sparsify.Trainer: set_decoder_norm_to_unit_norm(); sae(x, x, dead_mask=...,
               total_variance=...); (fvu + auxk_alpha * auxk_loss).backward(); fire counters;
               remove_gradient_parallel_to_decoder_directions(); Adam step; zero_grad; linear LR scheduler step.
               On CUDA it runs its Triton decoder kernels, in fp32 (its forward without the bf16 autocast it is
               wrapped in), and as ``sparsify-autocast`` (not in the default list) with that autocast, as it ships.
               Its AuxK loss reaches the decoder only (its fused encoder's backward drops the pre-activations'
               gradient); qwenscope's also trains the dead features' encoder columns, as in Gao et al. (2024)
    SAELens    SAETrainer(SAETrainerConfig(...), TopKTrainingSAE(...), data_provider).step(x) (training_forward_pass,
               fire statistics, backward, clip_grad_norm_, Adam, LR scheduler), after maybe_reset_sparsity();
               its default dense path (TopK as a dense (B, d_sae) tensor, rescale_acts_by_decoder_norm=True), and as
               ``saelens-sparse`` its use_sparse_activations=True path (which needs rescale_acts_by_decoder_norm=False:
               with the rescaling its sparse backward fails, aten::view on a sparse tensor)

A broken path cannot look fast: every library must train the same shapes (asserted) and its own loss must go down
from the warm-up step to the last timed step (printed; the script exits with status 1 otherwise). The machine's
fp32 matmul peak is measured in the same run (a large square matmul, interleaved with the repeats), and
qwenscope's step is set against it with an honest FLOP count (see FLOPS_FORMULA).

AuxK is measured off and on (``--auxk both``). Off: qwenscope auxk_alpha 0, sparsify no dead mask, SAELens
aux_loss_coefficient 0. On: AuxK weight 1/32 in all three, and before every step the same fixed ``--dead-fraction``
of the features (10%, a random subset) is marked dead in each library's own counters (qwenscope and sparsify: tokens
since fired; SAELens: steps since fired), so every library does the full AuxK work (k_aux = d_in / 2 = 288 dead
features per token) on the same dead set; nothing dies on its own within a short run.

    .venv/bin/python bench/perf/train.py --activations ACTS/resid_post.15 [--steps 10] [--repeats 3] [--batch-size 4096]
    .venv/bin/python bench/perf/train.py --synthetic            # random activations when no cache exists
    .venv/bin/python bench/perf/train.py --synthetic --d-in 2048 --batch-size 8192 --device cuda \
        --libraries qwenscope,qwenscope-bf16,sparsify,sparsify-autocast

In a git worktree, run it with PYTHONPATH=. so that the worktree's qwenscope is measured (the path is printed).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qwenscope.experiment import add_common_args, set_threads, write_result

LIBRARIES = ("qwenscope", "sparsify", "saelens", "saelens-sparse")
OPTIONAL = ("qwenscope-bf16", "sparsify-autocast")  # bf16 encoders: for a GPU (~300x slower on an AVX2 CPU)
HOOKPOINT = "resid_post.15"
EXPANSION = 16
K = 32
AUXK_ALPHA = 1 / 32  # qwenscope's default; sparsify's trainer defaults to 0 (no dead mask), set to match
DEAD_TOKENS = 1_000_000  # a feature unseen for this many tokens is dead (sparsify: tokens, SAELens: steps)
FLOPS_FORMULA = (
    "2*B*d_in*d_sae (dense encoder matmul) + 8*B*k*d_in (sparse: decoder forward, decoder grads of the code "
    "values and of W_dec, encoder grad of W_enc; 2*B*k*d_in each), and with AuxK on + 8*B*k_aux*d_in (the same four "
    "over the k_aux dead-feature entries); element-wise work (bias, ReLU, TopK selection, losses, Adam, decoder "
    "renormalisation) is not counted"
)
DENSE_FORMULA = "6*B*d_in*d_sae: what a dense forward + backward of the encoder would cost; NOT work qwenscope does"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lr_for(d_sae: int) -> float:
    return 2e-4 / (d_sae / 2**14) ** 0.5


# ---------------------------------------------------------------------------------------------------- data
def synthetic_batches(n: int, batch_size: int, d_in: int, seed: int = 0) -> list[Tensor]:
    """Gaussian activations shaped like a residual stream: a power-law covariance spectrum (std of the i-th principal
    direction ~ i^-1/2) in a random basis, mean token norm ~ 24, and a shared mean of norm ~ 14."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g))
    std = torch.arange(1, d_in + 1, dtype=torch.float32) ** -0.5
    std *= 20 / std.norm()
    mean = torch.randn(d_in, generator=g) * 14 / d_in**0.5
    return [(torch.randn(batch_size, d_in, generator=g) * std) @ basis.T + mean for _ in range(n)]


def cached_batches(folder: str, hookpoint: str | None, n: int, batch_size: int) -> tuple[list[Tensor], str]:
    from qwenscope.data import ActivationCache

    cache = ActivationCache(folder, hookpoint=hookpoint)
    epochs = math.ceil(n * batch_size / cache.n_tokens)
    if epochs > 1:
        print(f"note: the cache holds {cache.n_tokens} tokens, fewer than {n} x {batch_size}; reading {epochs} epochs")
    it = cache.batches(batch_size, seed=0, epochs=epochs)
    return [next(it).contiguous() for _ in range(n)], repr(cache)


# ---------------------------------------------------------------------------------------------------- libraries
@dataclass
class Settings:
    d_in: int
    d_sae: int
    k: int
    batch_size: int
    lr: float
    device: torch.device
    tmp: str = ""
    dead: Tensor | None = None
    """AuxK on: ids of the features marked dead before every step; None: AuxK off."""


@dataclass
class Runner:
    """One freshly built SAE and its optimiser; ``step(x)`` is one optimisation step and returns its loss."""

    step: Callable[[Tensor], float]
    reconstruct: Callable[[Tensor], Tensor]
    keep: list[Any] = field(default_factory=list)


def build_qwenscope(s: Settings, encoder: str = "exact") -> Runner:
    from qwenscope.train import TrainConfig, Trainer

    cfg = TrainConfig(
        expansion_factor=(s.d_sae // s.d_in,),
        k=(s.k,),
        batch_size=s.batch_size,
        steps=10**12,
        lr=s.lr,
        warmup_steps=0,
        decay_start=1.0,
        auxk_alpha=AUXK_ALPHA if s.dead is not None else 0.0,
        dead_tokens=DEAD_TOKENS,
        seed=0,
        encoder=encoder,  # type: ignore[arg-type]
    )
    trainer = Trainer(cfg, {HOOKPOINT: s.d_in}, out=s.tmp, device=s.device, resume=False)
    (state,) = trainer.states
    sae = state.sae
    assert (sae.d_in, sae.d_sae, sae.cfg.k, sae.cfg.activation) == (s.d_in, s.d_sae, s.k, "topk"), sae.cfg
    assert sae.W_enc.dtype == torch.float32 and isinstance(state.opt, torch.optim.Adam)

    def step(x: Tensor) -> float:
        if s.dead is not None:
            state.since_fired[s.dead] = DEAD_TOKENS + 1
        out = trainer.train_step(x)[HOOKPOINT]
        assert (out["auxk"] > 0) == (s.dead is not None), out  # AuxK ran exactly when asked
        return out["loss"]

    return Runner(step, lambda x: sae(x).sae_out, [trainer])


def build_sparsify(s: Settings, autocast: bool = False) -> Runner:
    from sparsify import SparseCoder, SparseCoderConfig
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(0)
    sae = SparseCoder(s.d_in, SparseCoderConfig(expansion_factor=s.d_sae // s.d_in, k=s.k), s.device, torch.float32)
    assert (sae.d_in, sae.num_latents, sae.cfg.k, sae.cfg.activation) == (s.d_in, s.d_sae, s.k, "topk"), sae.cfg
    assert sae.cfg.normalize_decoder and not sae.cfg.transcode and not sae.cfg.multi_topk
    # sparsify.Trainer with optimizer="adam": bitsandbytes' Adam8bit if importable, else torch.optim.Adam; we use
    # torch.optim.Adam for every library. Its LR schedule is a linear warm-up/decay stepped once per step.
    opt = torch.optim.Adam(sae.parameters(), lr=s.lr)
    sched = get_linear_schedule_with_warmup(opt, 0, 10**12)
    since_fired = torch.zeros(sae.num_latents, device=s.device, dtype=torch.long)
    did_fire = torch.zeros(sae.num_latents, device=s.device, dtype=torch.bool)
    # SparseCoder.forward is wrapped in torch.autocast("cuda", bfloat16); on CUDA that is not fp32, so we call the
    # undecorated forward there, except as ``sparsify-autocast`` (its default; on CPU the decorator does nothing)
    fp32_forward = s.device.type == "cuda" and not autocast
    forward = SparseCoder.forward.__wrapped__ if fp32_forward else None  # type: ignore[attr-defined]
    n_steps = [0]

    def step(x: Tensor) -> float:
        # what sparsify.Trainer.fit's hook and loop do per batch (loss_fn="fvu", one micro step, no DDP)
        if n_steps[0] == 0:
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()
        if s.dead is not None:
            since_fired[s.dead] = DEAD_TOKENS + 1
        # its trainer passes no dead mask when auxk_alpha is 0 (AuxK off)
        dead_mask = since_fired > DEAD_TOKENS if s.dead is not None else None
        total_variance = (x - x.mean(0)).pow(2).sum()
        if forward is not None:
            out = forward(sae, x, x, dead_mask=dead_mask, total_variance=total_variance)
        else:
            out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        float(out.fvu.detach())  # its trainer accumulates the logged fvu with float() every step
        assert (float(out.auxk_loss.detach()) > 0) == (s.dead is not None), out.auxk_loss
        loss = out.fvu + AUXK_ALPHA * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sched.step()
        with torch.no_grad():
            since_fired.add_(x.shape[0])
            since_fired[did_fire] = 0
            did_fire.zero_()
        n_steps[0] += 1
        return float(loss.detach())

    def reconstruct(x: Tensor) -> Tensor:
        return sae.decode(*sae.encode(x)[:2])

    return Runner(step, reconstruct, [sae, opt])


def build_saelens(s: Settings, sparse: bool = False) -> Runner:
    from sae_lens import LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(0)
    cfg = TopKTrainingSAEConfig(
        d_in=s.d_in,
        d_sae=s.d_sae,
        k=s.k,
        dtype="float32",
        device=str(s.device),
        use_sparse_activations=sparse,
        # its sparse path fails in backward with the default decoder-norm rescaling (aten::view on a sparse tensor)
        rescale_acts_by_decoder_norm=not sparse,
        aux_loss_coefficient=AUXK_ALPHA if s.dead is not None else 0.0,
    )
    sae = TopKTrainingSAE(cfg)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (s.d_in, s.d_sae, s.k), sae.cfg
    assert tuple(sae.W_enc.shape) == (s.d_in, s.d_sae) and sae.W_enc.dtype == torch.float32
    trainer_cfg = SAETrainerConfig(
        total_training_samples=10**12 * s.batch_size,
        train_batch_size_samples=s.batch_size,
        lr=s.lr,
        lr_end=s.lr / 10,
        lr_scheduler_name="constant",
        device=str(s.device),
        autocast=False,
        dead_feature_window=max(1, DEAD_TOKENS // s.batch_size),
        feature_sampling_window=10**12,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(trainer_cfg, sae, data_provider=iter(()))
    assert isinstance(trainer.optimizer, torch.optim.Adam)

    def step(x: Tensor) -> float:
        # SAETrainer.fit's loop body without the data provider, wandb, checkpoints and progress bar
        trainer.maybe_reset_sparsity()
        if s.dead is not None:
            trainer.n_forward_passes_since_fired[s.dead] = trainer_cfg.dead_feature_window + 1
        out = trainer.step(x)
        aux = out.losses.get("auxiliary_reconstruction_loss", 0.0)
        aux = float(aux.detach()) if isinstance(aux, Tensor) else float(aux)
        assert (aux > 0) == (s.dead is not None), out.losses
        trainer.n_training_steps += 1
        return float(out.loss.detach())

    return Runner(step, lambda x: sae(x), [trainer])


BUILDERS: dict[str, Callable[[Settings], Runner]] = {
    "qwenscope": build_qwenscope,
    "qwenscope-bf16": lambda s: build_qwenscope(s, "bf16"),
    "sparsify-autocast": lambda s: build_sparsify(s, autocast=True),
    "sparsify": build_sparsify,
    "saelens": build_saelens,
    "saelens-sparse": lambda s: build_saelens(s, sparse=True),
}


def fvu(x: Tensor, x_hat: Tensor) -> float:
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def timed_round(
    jobs: list[tuple[str, str]], settings: dict[str, Settings], batches: list[Tensor], steps: int
) -> dict[tuple[str, str], dict[str, Any]]:
    """One repeat: a fresh SAE per (mode, library), one untimed warm-up step each, then ``steps`` timed steps
    interleaved step by step in a rotating order, then an untimed held-out FVU each."""
    runners = {job: BUILDERS[job[1]](settings[job[0]]) for job in jobs}
    device = next(iter(settings.values())).device
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for job, runner in runners.items():
        runs[job] = {"warmup_loss": runner.step(batches[0]), "step_s": [], "losses": []}
    sync(device)
    for i, x in enumerate(batches[1 : steps + 1]):
        for job in jobs[i % len(jobs) :] + jobs[: i % len(jobs)]:
            t0 = time.perf_counter()
            loss = runners[job].step(x)
            sync(device)
            runs[job]["step_s"].append(time.perf_counter() - t0)
            runs[job]["losses"].append(loss)
    held_out = batches[steps + 1]
    for job, run in runs.items():
        with torch.no_grad():
            run["fvu"] = fvu(held_out, runners[job].reconstruct(held_out))
        losses = [run["warmup_loss"], *run["losses"]]
        run["loss_decreased"] = all(math.isfinite(v) for v in losses) and run["losses"][-1] < run["warmup_loss"]
    del runners
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return runs


def matmul_gflops(n: int, device: torch.device) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    sync(device)
    t0 = time.perf_counter()
    torch.mm(a, b, out=c)
    sync(device)
    return 2 * n**3 / (time.perf_counter() - t0) / 1e9


# ---------------------------------------------------------------------------------------------------- main
def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"machine": platform.machine(), "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def versions() -> dict[str, str]:
    out = {}
    for dist in ("qwenscope", "torch", "eai-sparsify", "sae-lens", "transformers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def summarise(runs: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    steps = [t for run in runs for t in run["step_s"]]
    med = statistics.median(steps)
    return {
        "median_step_s": med,
        "ms_per_step": med * 1e3,
        "tokens_per_s": batch_size / med,
        "step_s": steps,
        "loss_decreased": all(run["loss_decreased"] for run in runs),
        "heldout_fvu": statistics.median(run["fvu"] for run in runs),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--activations", metavar="DIR", help="an ActivationCache folder written by `qwenscope cache`")
    source.add_argument("--synthetic", action="store_true", help="random Gaussian activations (width --d-in)")
    parser.add_argument("--d-in", type=int, default=576, help="width of --synthetic activations")
    parser.add_argument("--expansion-factor", type=int, default=EXPANSION, help="d_sae = this x d_in")
    parser.add_argument("--hookpoint", help="hookpoint inside --activations when it holds several")
    parser.add_argument("--steps", type=int, default=10, help="timed optimisation steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per library (median reported)")
    parser.add_argument("--batch-size", type=int, default=4096, help="tokens per step")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument(
        "--libraries", default=",".join(LIBRARIES), help="comma-separated subset of " + ",".join(LIBRARIES + OPTIONAL)
    )
    parser.add_argument("--auxk", choices=("off", "on", "both"), default="both", help="AuxK off, on, or both")
    parser.add_argument(
        "--dead-fraction", type=float, default=0.1, help="AuxK on: share of the features marked dead before each step"
    )
    add_common_args(parser, device="auto")
    parser.add_argument("--peak-size", type=int, default=4096, help="n of the n x n @ n x n peak matmul")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.json"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")  # SAELens sparse
    libs = [name.strip() for name in args.libraries.split(",") if name.strip()]
    unknown = sorted(set(libs) - set(LIBRARIES) - set(OPTIONAL))
    if unknown or not libs or args.steps < 1 or args.repeats < 1 or args.batch_size < 1:
        parser.error(f"bad --libraries {unknown} or a non-positive --steps/--repeats/--batch-size")
    if not 0 < args.dead_fraction <= 1:
        parser.error("--dead-fraction must be in (0, 1]")
    set_threads(args.threads)
    device = torch.device(args.device)
    modes = ["off", "on"] if args.auxk == "both" else [args.auxk]

    n_batches = args.steps + 2  # warm-up, timed steps, held-out
    t0 = time.perf_counter()
    if args.synthetic:
        batches, data = synthetic_batches(n_batches, args.batch_size, args.d_in), "synthetic Gaussian (seed 0)"
    else:
        batches, data = cached_batches(args.activations, args.hookpoint, n_batches, args.batch_size)
    batches = [x.to(device=device, dtype=torch.float32).contiguous() for x in batches]  # preloaded: no disk I/O timed
    d_in = batches[0].shape[1]
    d_sae = args.expansion_factor * d_in
    if d_in != 576:
        print(f"note: d_in is {d_in}, not 576 (SmolLM2-135M); d_sae = {args.expansion_factor} x d_in")
    g = torch.Generator().manual_seed(0)
    n_dead = max(1, round(args.dead_fraction * d_sae))
    dead = torch.randperm(d_sae, generator=g)[:n_dead].sort().values.to(device)
    k_aux = min(d_in // 2, n_dead)
    settings = {
        mode: Settings(
            d_in=d_in,
            d_sae=d_sae,
            k=K,
            batch_size=args.batch_size,
            lr=lr_for(d_sae),
            device=device,
            dead=dead if mode == "on" else None,
        )
        for mode in modes
    }
    import qwenscope

    print(f"qwenscope from {Path(qwenscope.__file__).parent}")  # the checkout measured (PYTHONPATH=. in a worktree)
    print(
        f"{len(batches)} batches of {args.batch_size} x {d_in} preloaded in {time.perf_counter() - t0:.1f} s ({data})"
    )
    if (args.steps + 1) * args.batch_size > DEAD_TOKENS:
        print(f"note: a run sees more than {DEAD_TOKENS} tokens, so features may die on their own")

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {mode: {lib: [] for lib in libs} for mode in modes}
    peak_runs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in settings.values():
            s.tmp = tmp
        for lib in libs:  # import and first-touch costs outside the timed runs
            BUILDERS[lib](settings[modes[0]])
        matmul_gflops(args.peak_size, device)  # warm-up
        jobs = [(mode, lib) for mode in modes for lib in libs]
        for r in range(args.repeats):
            order = jobs[r % len(jobs) :] + jobs[: r % len(jobs)]
            for (mode, lib), run in timed_round(order, settings, batches, args.steps).items():
                runs[mode][lib].append(run)
                print(
                    f"  repeat {r + 1}/{args.repeats} AuxK {mode:<3} {lib:<14} "
                    f"{statistics.median(run['step_s']) * 1e3:9.1f} ms/step (median of {args.steps})"
                )
            peak_runs += [matmul_gflops(args.peak_size, device) for _ in range(2)]

    B, k = args.batch_size, K
    peak = statistics.median(peak_runs)
    results: dict[str, Any] = {}
    for mode in modes:
        rows = {lib: summarise(runs[mode][lib], B) for lib in libs}
        ratios = {
            f"qwenscope/{lib}": rows["qwenscope"]["tokens_per_s"] / rows[lib]["tokens_per_s"]
            for lib in libs
            if lib != "qwenscope" and "qwenscope" in rows
        }
        flops_step = 2 * B * d_in * d_sae + 8 * B * k * d_in + (8 * B * k_aux * d_in if mode == "on" else 0)
        dense_step = 6 * B * d_in * d_sae
        qs_fraction: dict[str, Any] = {}
        if "qwenscope" in rows:
            step_s = rows["qwenscope"]["median_step_s"]
            qs_fraction = {
                "per_step": flops_step,
                "gflops_per_s": flops_step / step_s / 1e9,
                "fraction_of_peak": flops_step / step_s / 1e9 / peak,
                "dense_equivalent_per_step": dense_step,
                "dense_equivalent_gflops_per_s": dense_step / step_s / 1e9,
                "dense_equivalent_fraction_of_peak": dense_step / step_s / 1e9 / peak,
            }
        results[mode] = {"results": rows, "ratios_tokens_per_s": ratios, "qwenscope_flops": qs_fraction}

    # ------------------------------------------------------------------ report
    print(
        f"\nTopK SAE training, d_in {d_in} -> d_sae {d_sae}, k {k}, fp32, Adam lr {lr_for(d_sae):.3g}, batch {B} "
        f"tokens, {args.repeats} x {args.steps} interleaved steps (median), on {device} "
        f"({torch.get_num_threads()} threads)"
    )
    for mode in modes:
        rows = results[mode]["results"]
        what = "off" if mode == "off" else f"on ({n_dead} of {d_sae} features dead, k_aux {k_aux})"
        print(f"\nAuxK {what}")
        print(
            f"{'library':<14} {'ms/step':>9} {'tokens/s':>10} {'qwenscope x':>12} {'loss warm-up -> last':>24}"
            f" {'held-out FVU':>13} {'loss down':>9}"
        )
        for lib, row in rows.items():
            last = runs[mode][lib][-1]
            speed = rows["qwenscope"]["tokens_per_s"] / row["tokens_per_s"] if "qwenscope" in rows else float("nan")
            loss = f"{last['warmup_loss']:.4g} -> {last['losses'][-1]:.4g}"
            print(
                f"{lib:<14} {row['ms_per_step']:>9.1f} {row['tokens_per_s']:>10.0f} {speed:>11.2f}x {loss:>24}"
                f" {row['heldout_fvu']:>13.3f} {'yes' if row['loss_decreased'] else 'NO':>9}"
            )
        qs = results[mode]["qwenscope_flops"]
        if qs:
            print(
                f"qwenscope: {qs['per_step'] / 1e9:.2f} GFLOP/step -> {qs['gflops_per_s']:.1f} GFLOP/s = "
                f"{qs['fraction_of_peak']:.1%} of peak (dense-equivalent convention: "
                f"{qs['dense_equivalent_fraction_of_peak']:.1%})"
            )
    print("\n(losses are each library's own: fvu + auxk for qwenscope and sparsify, per-token MSE for SAELens)")
    print(f"fp32 matmul peak ({args.peak_size}^3, median of {len(peak_runs)}): {peak:.1f} GFLOP/s")
    print(f"FLOPs/step = {FLOPS_FORMULA}\ndense-equivalent convention: {DENSE_FORMULA}")

    out = write_result(
        args.out,
        {
            "bench": "train",
            "versions": versions(),
            "device": str(device),
            "machine": machine_info(device),
            "data": data,
            "settings": {
                "d_in": d_in,
                "d_sae": d_sae,
                "k": k,
                "activation": "topk",
                "dtype": "float32",
                "batch_size": B,
                "steps_per_run": args.steps,
                "repeats": args.repeats,
                "optimizer": "torch Adam",
                "lr": lr_for(d_sae),
                "lr_schedule": "constant (no warm-up, no decay)",
                "auxk_alpha": AUXK_ALPHA,
                "auxk_modes": modes,
                "dead_tokens": DEAD_TOKENS,
                "auxk_on_dead_features": n_dead,
                "auxk_on_k_aux": k_aux,
                "libraries": libs,
            },
            "auxk": results,
            "peak": {
                "matmul": f"{args.peak_size}x{args.peak_size} @ {args.peak_size}x{args.peak_size} fp32",
                "runs_gflops_per_s": peak_runs,
                "median_gflops_per_s": peak,
            },
            "flops_formula": FLOPS_FORMULA,
            "dense_equivalent_formula": DENSE_FORMULA,
        },
    )
    print(f"wrote {out}")
    broken = [
        f"{lib} (AuxK {mode})"
        for mode in modes
        for lib, row in results[mode]["results"].items()
        if not row["loss_decreased"]
    ]
    if broken:
        print(f"FAILED: the loss did not go down for {', '.join(broken)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
