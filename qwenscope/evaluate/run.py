"""``qwenscope eval``: load a model and SAEs, evaluate them on text, write ``eval.json`` and ``eval.png``.

The text handling here is deliberately tiny (a local .txt / .jsonl file, packed into fixed-length chunks);
``qwenscope.data`` does it properly and will replace ``read_texts`` / ``pack_texts``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qwenscope.errors import QwenscopeError
from qwenscope.evaluate.metrics import DENSE_THRESHOLD

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    sae: str
    """SAE source: a folder, a file or a hub repo id; comma-separated for several (one per hookpoint)."""
    dataset: str
    """Evaluation text: a .txt file (documents separated by blank lines) or a .jsonl file with a "text" field."""
    model: str = "smollm2-135m"
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id."""
    hookpoints: str = ""
    """Comma-separated hookpoints, e.g. resid_post.3,resid_post.7; empty: the hookpoint each SAE records."""
    n_tokens: int = 16_384
    """Tokens to evaluate on (whole sequences, so possibly a few more). Each batch costs 1 + 2 x (number of
    hookpoints) forwards: slow on a CPU. Dead-feature counts need many more tokens than the losses do."""
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


# ---------------------------------------------------------------- text (to be replaced by qwenscope.data)
def read_texts(path: str | Path) -> Iterator[str]:
    """Documents of a .txt file (blank-line-separated blocks) or a .jsonl file (each line's "text")."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise QwenscopeError(f"no text file at {str(path)!r}; pass a .txt or .jsonl file as --dataset")
    if path.suffix == ".jsonl":
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                try:
                    yield str(json.loads(line)["text"])
                except (ValueError, KeyError, TypeError):
                    raise QwenscopeError(f"{path}:{i + 1} is not a JSON object with a 'text' field") from None
        return
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        if block.strip():
            yield block.strip()


def pack_texts(texts: Iterable[str], tokenizer: Any, seq_len: int) -> Iterator[Tensor]:
    """Token chunks (seq_len,): the texts tokenized, each followed by EOS (if any), concatenated and cut.

    A final partial chunk of at least 2 tokens is yielded too (it is padded in its batch).
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    buffer: list[int] = []
    for text in texts:
        buffer += tokenizer(text, add_special_tokens=False)["input_ids"] + ([int(eos)] if eos is not None else [])
        while len(buffer) >= seq_len:
            yield torch.tensor(buffer[:seq_len], dtype=torch.long)
            del buffer[:seq_len]
    if len(buffer) >= 2:
        yield torch.tensor(buffer, dtype=torch.long)


# ---------------------------------------------------------------- run
def load_saes(cfg: EvalConfig) -> dict[str, Any]:
    """``{hookpoint: Sae}`` from ``cfg.sae`` and ``cfg.hookpoints``: one source for several hookpoints (a
    multi-SAE folder or repo), one hookpoint per source, or no hookpoints (each SAE's own)."""
    from qwenscope.sae.load import load_sae

    sources, hookpoints = split_list(cfg.sae), split_list(cfg.hookpoints)
    if hookpoints and len(sources) == 1:
        pairs: list[tuple[str, str | None]] = [(sources[0], hp) for hp in hookpoints]
    elif not hookpoints or len(hookpoints) == len(sources):
        optional: list[str | None] = list(hookpoints) or [None] * len(sources)
        pairs = list(zip(sources, optional))
    else:
        raise QwenscopeError(
            f"{len(sources)} SAE sources but {len(hookpoints)} hookpoints; pass one source for all hookpoints, "
            "one hookpoint per source, or no hookpoints"
        )
    saes: dict[str, Any] = {}
    for source, hp in pairs:
        sae = load_sae(source, hookpoint=hp, k=cfg.k, device=cfg.device)
        name = hp or sae.cfg.hookpoint
        if name is None:
            raise QwenscopeError(f"the SAE at {source} does not record its hookpoint; pass --hookpoints")
        if name in saes:
            raise QwenscopeError(f"two SAEs for hookpoint {name}; evaluate them in separate runs")
        saes[name] = sae
    return saes


def run_eval(cfg: EvalConfig, texts: Iterable[str] | None = None) -> dict[str, Any]:
    """Evaluate the SAEs of ``cfg`` on ``texts`` (default: read from ``cfg.dataset``); write and print the report.

    Returns the results dict (also written to ``{cfg.out}/eval.json``, with the config under ``"config"``).
    """
    from qwenscope.evaluate.model_eval import evaluate_saes
    from qwenscope.evaluate.report import format_table, write_report
    from qwenscope.models.load import load_model

    model, tokenizer = load_model(cfg.model, device=cfg.device)
    saes = load_saes(cfg)
    chunks = pack_texts(read_texts(cfg.dataset) if texts is None else texts, tokenizer, cfg.seq_len)
    results = evaluate_saes(model, saes, chunks, batch_size=cfg.batch_size, n_tokens=cfg.n_tokens,
                            skip_first=cfg.skip_first, dense_threshold=cfg.dense_threshold)  # fmt: skip
    if results["n_tokens"] < cfg.n_tokens:
        logger.warning("the dataset ran out after %d of %d tokens", results["n_tokens"], cfg.n_tokens)
    results = {"model": cfg.model, "dataset": cfg.dataset, "config": asdict(cfg), **results}
    json_path, png_path = write_report(results, cfg.out)
    print(format_table(results))
    print(f"\nwrote {json_path} and {png_path}")
    return results
