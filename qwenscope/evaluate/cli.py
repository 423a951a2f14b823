"""``qwenscope eval``: load a model and SAEs, evaluate them on text, write ``eval.json`` and ``eval.png``.

Text comes from ``qwenscope.data``: any source ``iter_texts`` reads, by default its held-out ``test`` split, so an SAE
trained on a corpus is evaluated on documents it never saw.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qwenscope.errors import QwenscopeError
from qwenscope.evaluate.metrics import DENSE_THRESHOLD

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    sae: str
    """SAE source: a folder, a file or a hub repo id; comma-separated for several (one per hookpoint)."""
    dataset: str
    """Evaluation text: a named corpus (dataset-build:multi ...), a .txt/.jsonl file or folder, hf:NAME."""
    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    hookpoints: str = ""
    """Comma-separated hookpoints, e.g. resid_post.3,resid_post.7; empty: the hookpoint each SAE records."""
    split: str = "auto"
    """test (held out from training), train or all; auto: test for named corpora, all of a file you pass."""
    n_tokens: int = 16_384
    """Tokens to evaluate on (whole sequences, so possibly a few more). Each batch costs one forward plus, per
    hookpoint, two forwards of the layers above it. Dead-feature counts need many more tokens than the losses do."""
    seq_len: int = 256
    """Tokens per sequence: the text is packed into chunks of this length."""
    batch_size: int = 8
    """Sequences per forward."""
    out: str = "eval"
    """Output folder for eval.json and eval.png."""
    skip_first: bool = True
    """Leave the first token of each sequence (the attention sink, huge norm) out of replacement and metrics."""
    dense_threshold: float = DENSE_THRESHOLD
    """A feature firing on more than this fraction of tokens counts as dense."""
    k: int | None = None
    """TopK k, only for Qwen-Scope files outside a folder named like their release."""
    device: str = "cpu"
    """Device for the model and the SAEs (cpu, cuda, cuda:1, ...)."""

    def __post_init__(self) -> None:
        if not split_list(self.sae):
            raise QwenscopeError("--sae is empty; pass an SAE folder, file or hub repo id")
        for name in ("n_tokens", "seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise QwenscopeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise QwenscopeError(f"--seq-len must be at least 2 (one next-token prediction), got {self.seq_len}")
        if not 0 <= self.dense_threshold <= 1:
            raise QwenscopeError(f"--dense-threshold is a fraction in [0, 1], got {self.dense_threshold}")


def split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


# ---------------------------------------------------------------- run
def run_eval(cfg: EvalConfig, texts: Iterable[str] | None = None) -> dict[str, Any]:
    """Evaluate the SAEs of ``cfg`` on ``texts`` (default: read from ``cfg.dataset``); write and print the report.

    Returns the results dict (also written to ``{cfg.out}/eval.json``, with the config under ``"config"``).
    """
    from qwenscope.evaluate.model_eval import evaluate_saes
    from qwenscope.evaluate.report import format_table, write_report
    from qwenscope.models.parts import load_model_and_saes

    parts = load_model_and_saes(cfg.model, cfg.sae, cfg.hookpoints, k=cfg.k, device=cfg.device)
    model, tokenizer, saes = parts.model, parts.tokenizer, parts.saes
    from qwenscope.data import chunk_tokens, iter_texts

    split = cfg.split
    if split == "auto":
        split = "all" if Path(cfg.dataset).expanduser().exists() else "test"
    texts = iter_texts(cfg.dataset, split=split) if texts is None else texts
    chunks = chunk_tokens(texts, tokenizer, cfg.seq_len)
    results = evaluate_saes(
        model,
        saes,
        chunks,
        batch_size=cfg.batch_size,
        n_tokens=cfg.n_tokens,
        skip_first=cfg.skip_first,
        dense_threshold=cfg.dense_threshold,
    )
    if results["n_tokens"] < cfg.n_tokens:
        logger.warning("the dataset ran out after %d of %d tokens", results["n_tokens"], cfg.n_tokens)
    results = {"model": cfg.model, "dataset": cfg.dataset, "config": asdict(cfg), **results}
    json_path, png_path = write_report(results, cfg.out)
    print(format_table(results))
    print(f"\nwrote {json_path} and {png_path}")
    return results
