"""The ``qwenscope cache`` and ``qwenscope train`` commands: activations to disk, and SAEs from a cache or a model."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from qwenscope.errors import QwenscopeError
from qwenscope.train.config import TrainConfig
from qwenscope.train.trainer import Trainer

logger = logging.getLogger(__name__)


@dataclass
class CacheCommand:
    """Where activations come from and where the cache goes."""

    out: str
    """Cache folder (one sub-folder of fp16 safetensors shards per hookpoint); a half-written one resumes."""
    hookpoints: str
    """Comma-separated hookpoints or globs, e.g. resid_post.7,resid_post.15 (one forward serves all)."""
    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    dataset: str = "dataset-build:multi"
    """Text: a named corpus (dataset-build:multi, dataset-build:eng, fortunes:en), a .txt/.jsonl file, hf:NAME."""
    tokens: int = 1_000_000
    """Activations to write per hookpoint (the text repeats if it is shorter)."""
    seq_len: int = 256
    """Tokens per packed sequence."""
    forward_batch: int = 8
    """Sequences per model forward."""
    outlier_m: float = 10.0
    """Drop positions whose norm exceeds this many times the median (attention sinks); position 0 is always dropped."""
    seed: int = 0
    """Seed of the shuffle buffer and corpus interleaving."""
    dtype: str = "float16"
    """Storage dtype of the shards: float16 or float32."""


def _stream(
    model_name: str,
    hookpoints: str,
    dataset: str,
    *,
    seq_len: int,
    forward_batch: int,
    out_batch: int,
    outlier_m: float,
    seed: int,
    max_tokens: int,
):
    from qwenscope.data import ActivationStream, StreamConfig
    from qwenscope.models.load import load_model

    model, tokenizer = load_model(model_name)
    cfg = StreamConfig(
        seq_len=seq_len,
        batch_size=forward_batch,
        out_batch=out_batch,
        buffer_tokens=max(out_batch * 8, 65536),
        outlier_m=outlier_m,
        seed=seed,
        max_tokens=max_tokens,
        repeat=True,
        split="train",
    )
    return ActivationStream(model, tokenizer, dataset, hookpoints, cfg)


def run_cache(cmd: CacheCommand) -> None:
    from qwenscope.data import write_cache

    stream = _stream(
        cmd.model,
        cmd.hookpoints,
        cmd.dataset,
        seq_len=cmd.seq_len,
        forward_batch=cmd.forward_batch,
        out_batch=4096,
        outlier_m=cmd.outlier_m,
        seed=cmd.seed,
        max_tokens=cmd.tokens,
    )
    caches = write_cache(stream, cmd.out, cmd.tokens, dtype=cmd.dtype)
    for name, cache in caches.items():
        print(f"{name}: {cache.n_tokens} tokens of d_in={cache.d_in} in {cache.path}")


@dataclass
class TrainCommand:
    """Where the activations come from and where the SAEs go (optimisation settings are the other options)."""

    out: str
    """Output folder: one SAE folder per hookpoint, metrics.jsonl and the checkpoint; rerunning resumes."""
    activations: str | None = None
    """A cache written by `qwenscope cache` (fastest; several hookpoint sub-folders train together)."""
    model: str | None = None
    """Train from a live model instead of a cache: an embedded name, a local HF folder or a hub id."""
    hookpoints: str | None = None
    """Comma-separated hookpoints (with --model), or the cache sub-folders to use (default: all)."""
    dataset: str = "dataset-build:multi"
    """Text for --model: a named corpus, a .txt/.jsonl file or folder, hf:NAME."""
    seq_len: int = 256
    """Tokens per packed sequence (with --model)."""
    forward_batch: int = 8
    """Sequences per model forward (with --model)."""
    outlier_m: float = 10.0
    """Drop positions whose norm exceeds this many times the median (with --model)."""
    report_to: str = "none"
    """Also send metrics to wandb and/or tensorboard (comma list); metrics.jsonl is always written."""

    def __post_init__(self) -> None:
        if (self.activations is None) == (self.model is None):
            raise QwenscopeError("pass exactly one of --activations DIR (a cache) or --model M --hookpoints ...")
        if self.model is not None and not self.hookpoints:
            raise QwenscopeError("--model needs --hookpoints, e.g. --hookpoints resid_post.7,resid_post.15")


def _cache_batches(cmd: TrainCommand, cfg: TrainConfig):
    """(d_in per hookpoint, model name, factory start_batch -> iterator of dict batches) for a cache folder."""
    from qwenscope.data import ActivationCache

    root = Path(cmd.activations or "")
    if (root / "cfg.json").is_file():
        caches = {(c := ActivationCache(root)).hookpoint: c}
    else:
        names = [h.strip() for h in cmd.hookpoints.split(",")] if cmd.hookpoints else None
        if names is None:
            names = sorted(p.name for p in root.iterdir() if (p / "cfg.json").is_file()) if root.is_dir() else []
        if not names:
            raise QwenscopeError(f"no activation cache in {root}; write one with `qwenscope cache`")
        caches = {name: ActivationCache(root, hookpoint=name) for name in names}
    n_tokens = min(c.n_tokens for c in caches.values())
    epochs = math.ceil(cfg.steps * cfg.batch_size / n_tokens)
    if epochs > 1:
        logger.info(
            "%d steps x %d tokens = %d passes over the %d cached tokens", cfg.steps, cfg.batch_size, epochs, n_tokens
        )

    def batches(start: int) -> Iterator[dict[str, Tensor]]:
        its = {
            hp: c.batches(cfg.batch_size, seed=cfg.seed, start_batch=start, epochs=epochs) for hp, c in caches.items()
        }
        for rows in zip(*its.values()):
            yield dict(zip(its, rows))

    model = next(iter(caches.values())).cfg.get("model")
    return {hp: c.d_in for hp, c in caches.items()}, model, batches


def run_train(cmd: TrainCommand, cfg: TrainConfig) -> None:
    from qwenscope.train import dist

    with dist.process_group():  # under torchrun: join the process group (gloo on CPU, NCCL on GPU)
        if cmd.activations is not None:
            d_in, model, batches = _cache_batches(cmd, cfg)
            trainer = Trainer(cfg, d_in, cmd.out, model=model, report_to=cmd.report_to)
            trainer.fit(batches(trainer.step))
        else:
            assert cmd.model is not None and cmd.hookpoints is not None
            stream = _stream(
                cmd.model,
                cmd.hookpoints,
                cmd.dataset,
                seq_len=cmd.seq_len,
                forward_batch=cmd.forward_batch,
                out_batch=cfg.batch_size,
                outlier_m=cmd.outlier_m,
                seed=cfg.seed,
                max_tokens=cfg.steps * cfg.batch_size,
            )
            from qwenscope.models.hookpoints import hidden_size

            widths = {name: hidden_size(stream.model) for name in stream.hookpoint_names}
            trainer = Trainer(cfg, widths, cmd.out, model=cmd.model, report_to=cmd.report_to)
            if trainer.step:
                logger.info("replaying the stream up to step %d (a cache makes resuming instant)", trainer.step)
            trainer.fit(itertools.islice(iter(stream), trainer.step, None))
        rank = dist.rank_and_world()[0]
    if rank == 0 or cfg.distribute_modules:  # with --distribute-modules each rank has its own
        print(f"SAEs in {cmd.out}: {', '.join(s.name for s in trainer.states)}")
