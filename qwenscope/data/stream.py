"""ActivationStream: text in, shuffled batches of model activations out, in bounded memory.

    cfg = StreamConfig(max_tokens=10**6)
    stream = ActivationStream(model, tokenizer, "dataset-build:multi", ["resid_post.12"], cfg)
    for batch in stream:            # {"resid_post.12": (out_batch, d) float32}
        ...

Per forward: ``batch_size`` packed chunks of ``seq_len`` tokens run through the model once for all hookpoints,
stopped after the deepest (``get_activations``). Positions are kept where ``token_mask`` keeps them (no position 0,
no special token) and, with ``outlier_m``, where every hookpoint's norm is at most ``outlier_m`` × its median
norm in that forward; the same positions are kept at every hookpoint, so row i of every hookpoint comes from the
same token. Kept rows go into one shuffle buffer per hookpoint, on the model's device, of ``buffer_tokens`` rows
(plus room for one forward); once it is full, each output batch is a uniform random subset of the buffer (the
same subset for all hookpoints), emitted until the buffer is half empty, and then refilled. Memory is the buffer
plus one forward, whatever the token count. Randomness comes from one generator seeded with ``seed``: the same
model, text and config give the same batches.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from qwenscope.data.sources import SPLITS, iter_texts
from qwenscope.data.tokens import chunk_tokens, norm_outlier_mask, token_mask
from qwenscope.errors import QwenscopeError
from qwenscope.models.capture import get_activations
from qwenscope.models.hookpoints import Hook, resolve_hookpoints

logger = logging.getLogger(__name__)

POSITIONS_KEY = "positions"
"""Key of the (out_batch, 2) int64 tensor [chunk index, position in chunk] yielded when ``positions=True``."""


@dataclass
class StreamConfig:
    """How text becomes batches of activations."""

    seq_len: int = 256
    """Tokens per packed chunk (one model input row)."""
    batch_size: int = 8
    """Chunks per model forward."""
    out_batch: int = 4096
    """Rows (tokens) per yielded batch."""
    buffer_tokens: int = 65536
    """Rows held in the shuffle buffer; batches are drawn once it is full. Sets the memory (rows × d × 4 bytes)."""
    outlier_m: float | None = 10.0
    """Drop positions whose norm exceeds this many times the median norm of their forward; None keeps all."""
    drop_first: bool = True
    """Drop position 0 of every chunk (the attention sink; Qwen tokenizers add no BOS)."""
    drop_special: bool = True
    """Drop special tokens (EOS separators, chat markers, padding)."""
    seed: int = 0
    """Seeds the shuffle and the text order of mixed corpora."""
    max_tokens: int | None = None
    """Stop after this many rows (the last batch is cut to fit); None runs until the text ends."""
    chat: bool = False
    """Render each document as a user message with the tokenizer's chat template."""
    split: str = "train"
    """Held-out split of a named text source: train, test or all."""
    text_field: str = "text"
    """Column holding the text in .jsonl files and datasets."""
    repeat: bool = False
    """Start the text again when it ends (several passes over a small corpus); needs max_tokens."""
    positions: bool = False
    """Also yield ``positions``: [chunk index, position in chunk] of every row."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "out_batch", "buffer_tokens"):
            if getattr(self, name) < 1:
                raise QwenscopeError(f"StreamConfig.{name} must be positive, got {getattr(self, name)}")
        if self.buffer_tokens < self.out_batch:
            raise QwenscopeError(
                f"buffer_tokens ({self.buffer_tokens}) must be at least out_batch ({self.out_batch}); "
                "a shuffle buffer of several batches mixes tokens from many documents"
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise QwenscopeError(f"max_tokens must be positive or None, got {self.max_tokens}")
        if self.outlier_m is not None and self.outlier_m <= 0:
            raise QwenscopeError(f"outlier_m must be positive or None, got {self.outlier_m}")
        if self.split not in SPLITS:
            raise QwenscopeError(f"unknown split {self.split!r}; use one of {', '.join(SPLITS)}")
        if self.repeat and self.max_tokens is None:
            raise QwenscopeError("repeat=True needs max_tokens, or the stream never ends")


class ShuffleBuffer:
    """Fixed-capacity rows per key; ``take`` removes a uniform random subset (same rows for every key)."""

    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        self.capacity = capacity
        self.generator = generator
        self.data: dict[str, Tensor] = {}
        self.fill = 0

    def add(self, rows: dict[str, Tensor]) -> None:
        n = len(next(iter(rows.values())))
        if self.fill + n > self.capacity:
            raise RuntimeError(f"shuffle buffer overflow: {self.fill} + {n} rows > capacity {self.capacity}")
        for key, value in rows.items():
            if key not in self.data:  # allocated once, at the first rows: memory never grows after this
                self.data[key] = torch.empty((self.capacity, *value.shape[1:]), dtype=value.dtype, device=value.device)
            self.data[key][self.fill : self.fill + n] = value
        self.fill += n

    def take(self, n: int) -> dict[str, Tensor]:
        """Remove ``n`` random rows; the rows left are compacted into the first ``fill - n`` slots."""
        chosen = torch.randperm(self.fill, generator=self.generator)[:n]
        left = self.fill - n
        is_chosen = torch.zeros(self.fill, dtype=torch.bool)
        is_chosen[chosen] = True
        holes = chosen[chosen < left]  # slots below the new end that free up
        movers = (~is_chosen[left:]).nonzero().squeeze(1) + left  # kept rows beyond the new end
        out = {}
        for key, buf in self.data.items():
            idx = chosen.to(buf.device)
            out[key] = buf[idx]  # a new tensor: the caller may keep it
            buf[holes.to(buf.device)] = buf[movers.to(buf.device)]
        self.fill = left
        return out


@dataclass(eq=False)
class ActivationStream:
    """Iterable of ``{hookpoint: (out_batch, d) float32}`` batches (see the module doc)."""

    model: nn.Module
    """A Hugging Face causal LM in eval mode."""
    tokenizer: PreTrainedTokenizerBase
    """Its tokenizer."""
    texts: str | Iterable[str]
    """A source name for ``iter_texts`` (re-read on every iteration), or documents (a list can be re-iterated)."""
    hookpoints: str | Sequence[str]
    """Hookpoint names or globs; one forward serves all of them."""
    cfg: StreamConfig = field(default_factory=StreamConfig)
    """The stream's settings."""

    @property
    def hookpoint_names(self) -> list[str]:
        """The resolved hookpoint names (globs expanded), in the order of the yielded dicts."""
        names = self.hookpoints if isinstance(self.hookpoints, str) else list(self.hookpoints)
        return [hook.name for hook in resolve_hookpoints(self.model, names)]

    def with_config(self, **changes: object) -> ActivationStream:
        """The same stream with some config fields changed."""
        return dataclasses.replace(self, cfg=dataclasses.replace(self.cfg, **changes))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        cfg = self.cfg
        names = self.hookpoints if isinstance(self.hookpoints, str) else list(self.hookpoints)
        hooks = resolve_hookpoints(self.model, names)  # once per pass, not per forward
        generator = torch.Generator().manual_seed(cfg.seed)
        buffer = ShuffleBuffer(cfg.buffer_tokens + cfg.batch_size * cfg.seq_len, generator)
        produced = 0
        with tqdm(total=cfg.max_tokens, unit="tok", disable=not cfg.progress, desc="activations") as bar:
            for rows in self._forward_rows(hooks):
                buffer.add(rows)
                if buffer.fill >= cfg.buffer_tokens:
                    while buffer.fill > cfg.buffer_tokens // 2 and 0 < (n := self._next_size(produced)) <= buffer.fill:
                        produced += n
                        bar.update(n)
                        yield self._output(buffer.take(n))
                if cfg.max_tokens is not None and produced + buffer.fill >= cfg.max_tokens:
                    break  # enough rows are buffered: no more forwards
            while 0 < (n := self._next_size(produced)) <= buffer.fill:  # drain
                produced += n
                bar.update(n)
                yield self._output(buffer.take(n))
        if cfg.max_tokens is not None and produced < cfg.max_tokens:
            logger.warning("the text ran out after %d of max_tokens=%d rows; use repeat=True", produced, cfg.max_tokens)
        elif cfg.max_tokens is None and buffer.fill:
            logger.info("dropped the last %d rows (less than one out_batch of %d)", buffer.fill, cfg.out_batch)

    def _next_size(self, produced: int) -> int:
        """Rows in the next batch: out_batch, or what is left of max_tokens."""
        if self.cfg.max_tokens is None:
            return self.cfg.out_batch
        return min(self.cfg.out_batch, self.cfg.max_tokens - produced)

    def _output(self, rows: dict[str, Tensor]) -> dict[str, Tensor]:
        return rows if self.cfg.positions else {k: v for k, v in rows.items() if k != POSITIONS_KEY}

    def _forward_rows(self, hooks: list[Hook]) -> Iterator[dict[str, Tensor]]:
        """Per forward: the kept rows of every hookpoint (float32) and their [chunk, position]."""
        cfg = self.cfg
        names = [hook.name for hook in hooks]
        chunk_index = 0
        for ids in _batched(self._chunks(), cfg.batch_size):  # (B, S) token ids
            acts = get_activations(self.model, ids, hooks)  # name -> (B, S, d)
            device = acts[names[0]].device
            keep = token_mask(ids, self.tokenizer, first_position=cfg.drop_first, special_tokens=cfg.drop_special)
            keep = keep.to(device)
            if cfg.outlier_m is not None:
                base = keep
                for name in names:
                    keep = keep & norm_outlier_mask(acts[name], cfg.outlier_m, valid=base)
            where = keep.nonzero()  # (n, 2): [row in batch, position]
            where[:, 0] += chunk_index
            chunk_index += len(ids)
            rows = {name: acts[name][keep].float() for name in names}  # (B, S, d) -> (n, d)
            rows[POSITIONS_KEY] = where.to(torch.long)
            yield rows

    def _chunks(self) -> Iterator[Tensor]:
        cfg = self.cfg
        n_pass = 0
        while True:
            n_chunks = 0
            for chunk in chunk_tokens(self._texts(n_pass), self.tokenizer, cfg.seq_len, chat=cfg.chat):
                n_chunks += 1
                yield chunk
            if n_chunks == 0:
                raise QwenscopeError(f"the text is shorter than one chunk of seq_len={cfg.seq_len} tokens; add text")
            n_pass += 1
            if not cfg.repeat:
                return
            logger.info("text pass %d done (%d chunks); starting again", n_pass, n_chunks)

    def _texts(self, n_pass: int) -> Iterable[str]:
        if isinstance(self.texts, str):
            cfg = self.cfg
            return iter_texts(self.texts, split=cfg.split, text_field=cfg.text_field, seed=cfg.seed + n_pass)
        if n_pass > 0 and iter(self.texts) is self.texts:
            raise QwenscopeError("repeat=True needs re-iterable texts (a list or a source name), not an iterator")
        return self.texts


def _batched(chunks: Iterator[Tensor], size: int) -> Iterator[Tensor]:
    batch: list[Tensor] = []
    for chunk in chunks:
        batch.append(chunk)
        if len(batch) == size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)
