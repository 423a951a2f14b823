"""Generation of a batch of rows, each with its own steering and sampling, as if each were generated alone.

    results = generate_rows(model, tokenizer, [Row(ids_a, 32), Row(ids_b, 32, temperature=0.8, seed=1,
                                                                steering=[SteerSpec(sae, {12: 8.0})])])

One left-padded ``model.generate`` under ``steer_rows`` (each row's steering hooks touch only that row). Sampling is
per row: a logits processor draws each sampled row's token with its own temperature, top-p and seeded generator, and
makes it the only finite logit, so the greedy step picks it; greedy rows are left alone, which is exactly
``model.generate``'s greedy decoding. A row stops at its own ``max_new_tokens``, EOS, stop string or cancel event,
and its result is handed to ``on_finish`` at that step, while the longer rows of the batch go on.
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qwenscope.models.batching import pad_ids
from qwenscope.steer.steer import SteerSpec, steer_rows


@dataclass
class Row:
    """One sequence to generate: its prompt tokens, sampling settings and steering."""

    input_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    """0: greedy."""
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    steering: list[SteerSpec] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set it to stop the row at its next token (a client that went away)."""


@dataclass
class RowResult:
    text: str
    completion_tokens: int
    finish_reason: str
    """"stop" (EOS or a stop string) or "length"; "cancelled" for a row whose cancel event stopped it."""


class _RowSampler:
    """A logits processor that samples each row with its own temperature, top-p and seeded generator, and leaves
    greedy rows untouched; the chosen token is made the only finite logit, so greedy decoding picks it."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.gens = [
            torch.Generator().manual_seed(r.seed if r.seed is not None else secrets.randbits(63)) for r in rows
        ]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for i, row in enumerate(self.rows):
            if row.temperature == 0:
                continue
            probs = torch.softmax(scores[i].float().cpu() / row.temperature, dim=-1)
            if row.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                drop = sorted_p.cumsum(0) - sorted_p >= row.top_p  # keep the smallest prefix reaching top_p
                probs[order[drop]] = 0.0
            token = int(torch.multinomial(probs, 1, generator=self.gens[i]))
            scores[i] = torch.where(torch.arange(scores.shape[1], device=scores.device) == token, 0.0, -math.inf)
        return scores


class _RowStops:
    """Stopping criterion: row i is done once it has ``max_new_tokens`` tokens, ends in EOS, its text holds a stop
    string, or it is cancelled; its result is computed then (``results[i]``) and handed to ``on_finish``."""

    def __init__(
        self, rows: list[Row], tokenizer: Any, prompt_len: int, on_finish: Callable[[int, RowResult], None] | None
    ) -> None:
        self.rows, self.tokenizer, self.prompt_len, self.on_finish = rows, tokenizer, prompt_len, on_finish
        self.results: list[RowResult | None] = [None] * len(rows)
        self.ends = end_tokens(tokenizer)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        new = input_ids[:, self.prompt_len :].tolist()
        for i, row in enumerate(self.rows):
            if self.results[i] is None:
                tokens = new[i]
                if row.cancel.is_set():
                    self.finish(
                        i, RowResult(self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), "cancelled")
                    )
                    continue
                done = len(tokens) >= row.max_new_tokens or (bool(tokens) and tokens[-1] in self.ends)
                if done or (row.stop and _holds_stop(row, tokens, self.tokenizer)):
                    self.finish(i, finish_row(row, tokens, self.tokenizer, self.ends))
        return torch.tensor([r is not None for r in self.results], device=input_ids.device)

    def finish(self, i: int, result: RowResult) -> None:
        self.results[i] = result
        if self.on_finish is not None:
            self.on_finish(i, result)


class _RowStreamer:
    """A transformers streamer that hands every row's new tokens to ``on_token(row index, token id)`` until the row
    has finished."""

    def __init__(self, stops: _RowStops, on_token: Callable[[int, int], None]) -> None:
        self.stops, self.on_token, self.prompt_seen = stops, on_token, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call hands over the prompt
            self.prompt_seen = True
            return
        for i, tokens in enumerate(value.reshape(len(self.stops.rows), -1).tolist()):
            if self.stops.results[i] is None:
                for t in tokens:
                    self.on_token(i, t)

    def end(self) -> None:
        pass


@torch.no_grad()
def generate_rows(
    model: nn.Module,
    tokenizer: Any,
    rows: list[Row],
    on_token: Callable[[int, int], None] | None = None,
    on_finish: Callable[[int, RowResult], None] | None = None,
) -> list[RowResult]:
    """Generate every row in one left-padded batch, each with its own steering (``steer_rows``) and sampling.
    ``on_token(row index, token id)`` sees each new token of a row as it comes, ``on_finish(row index, result)`` a
    row's result as soon as it stops (before the batch ends)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    if not rows:
        return []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = pad_ids([r.input_ids for r in rows], pad, left=True, mask_dtype=torch.long)
    width = ids.shape[1]
    device = next(model.parameters()).device
    stops = _RowStops(rows, tokenizer, width, on_finish)
    kwargs = {
        "max_new_tokens": max(r.max_new_tokens for r in rows),
        "do_sample": False,
        "pad_token_id": pad,
        "logits_processor": LogitsProcessorList([_RowSampler(rows)]),
        "stopping_criteria": StoppingCriteriaList([stops]),
        "streamer": _RowStreamer(stops, on_token) if on_token else None,
    }
    with steer_rows(model, [r.steering or None for r in rows]):
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)  # type: ignore[operator]
    for i, row in enumerate(rows):  # generate can end before the criterion saw a row finish (model-level EOS)
        if stops.results[i] is None:
            stops.finish(i, finish_row(row, out[i, width:].tolist(), tokenizer, stops.ends))
    return [r for r in stops.results if r is not None]


def _holds_stop(row: Row, tokens: list[int], tokenizer: Any) -> bool:
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return any(s in text for s in row.stop)


def end_tokens(tokenizer: Any) -> set[int]:
    """The token ids that end a row: EOS (one or several) and the padding."""
    eos = tokenizer.eos_token_id
    return {t for t in [*(eos if isinstance(eos, list) else [eos]), tokenizer.pad_token_id] if t is not None}


def finish_row(row: Row, tokens: list[int], tokenizer: Any, ends: set[int] | None = None) -> RowResult:
    """A row's result from its generated tokens: cut at EOS (or the padding after it stopped), its text cut at its
    first stop string; "stop" when either cut, else "length"."""
    tokens = tokens[: row.max_new_tokens]
    ends = end_tokens(tokenizer) if ends is None else ends
    end = next((j for j, t in enumerate(tokens) if t in ends), None)
    count = len(tokens) if end is None else end + 1  # the EOS counts as generated
    text = tokenizer.decode(tokens[:end], skip_special_tokens=True)
    cuts = [text.find(s) for s in row.stop if s in text]
    if cuts:
        text = text[: min(cuts)]
    return RowResult(text, count, "stop" if end is not None or cuts else "length")
