"""The engine's bookkeeping: which rows each running request holds, and the per-token row index of each step.

    tables = Tables({"resid_post.3": 576}, TableConfig(rows=64))
    tables.acquire("req-1", parse_steering(entries, saes))     # all layers or none; TableFull when one is full
    tables.fill(index, [Span("req-1", start=0, count=12, first_position=0, prompt_len=12)])
    tables.release("req-1")                                     # when the request finishes or is aborted

``index`` is the persistent (hooked layers, max tokens) int32 buffer the op reads one line of per layer; ``fill``
writes every token of the step (prompt and generated tokens by their absolute position, so a chunked or recomputed
prefill gets the prompt's rows) and zeroes the rest, padding included.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from qwenscope.errors import QwenscopeError
from qwenscope.sae.model import Sae
from qwenscope.serve.api import ApiError
from qwenscope.vllm_plugin.parse import LayerSteering, RequestSteering
from qwenscope.vllm_plugin.table import SteerTable, TableConfig, TableFull


def hooked_widths(saes: Mapping[str, Sae]) -> dict[str, int]:
    """hookpoint -> width of each SAE's layer table (the worker's, the scheduler's and the front end's copies);
    ``resid_post.L`` only."""
    widths = {}
    for sid, sae in saes.items():
        hookpoint = sae.cfg.hookpoint or ""
        if not re.fullmatch(r"resid_post\.\d+", hookpoint):
            raise QwenscopeError(f"SAE {sid!r} hooks {hookpoint!r}; the vLLM plugin steers resid_post.L only")
        widths[hookpoint] = sae.d_in
    return widths


@dataclass(frozen=True)
class Span:
    """One request's tokens in a step: ``count`` tokens from ``start`` in the flat batch, at absolute positions
    ``first_position ...``; positions below ``prompt_len`` are prompt tokens."""

    request_id: str
    start: int
    count: int
    first_position: int
    prompt_len: int


class Tables:
    """The steering tables of every hooked layer and the rows each request holds."""

    def __init__(self, widths: Mapping[str, int], cfg: TableConfig | None = None) -> None:
        self.cfg = cfg or TableConfig()
        self.layers = {hookpoint: SteerTable(d, self.cfg) for hookpoint, d in widths.items()}
        self.order = list(self.layers)
        """Hookpoints in index-buffer order: line i of the index is ``order[i]``."""
        self._held: dict[str, dict[str, tuple[int, int]]] = {}
        self._columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        """request -> its prompt rows and its generated rows down the index's lines, (hooked layers, 1) each."""

    def held(self, request_id: str) -> dict[str, tuple[int, int]]:
        """hookpoint -> (prompt row, generated row) that the request holds ({} when it steers nothing)."""
        return self._held.get(request_id, {})

    def acquire(self, request_id: str, steering: RequestSteering) -> None:
        """Take the request's rows at every layer it steers, or none of them (``TableFull``)."""
        if request_id in self._held:
            raise QwenscopeError(f"request {request_id!r} already holds steering rows")
        unknown = [h for h in steering.layers if h not in self.layers]
        if unknown:
            raise QwenscopeError(f"no steering table at {', '.join(unknown)}; hooked: {', '.join(self.order)}")
        self._check_room(steering)
        held: dict[str, tuple[int, int]] = {}
        for hookpoint, layer in steering.layers.items():
            table = self.layers[hookpoint]
            prompt, generated = (0 if c is None else table.acquire(c) for c in (layer.prompt, layer.generated))
            held[hookpoint] = (prompt, generated)
        self._held[request_id] = held
        if held:
            lines = [held.get(h, (0, 0)) for h in self.order]
            prompt_rows, generated_rows = (np.array(c, dtype=np.int32).reshape(-1, 1) for c in zip(*lines, strict=True))
            self._columns[request_id] = (prompt_rows, generated_rows)

    def release(self, request_id: str) -> None:
        """Give back the request's rows (a request that holds none is fine: unsteered, or refused)."""
        self._columns.pop(request_id, None)
        for hookpoint, rows in self._held.pop(request_id, {}).items():
            for row in rows:
                self.layers[hookpoint].release(row)

    @property
    def empty(self) -> bool:
        """No request holds a row."""
        return not any(self._held.values())

    def needs_rows(self, steering: RequestSteering) -> bool:
        """Whether the steering would take a free row at some layer (content no running request has)."""
        return any(self._new_rows(hookpoint, layer) for hookpoint, layer in steering.layers.items())

    def _new_rows(self, hookpoint: str, layer: LayerSteering) -> int:
        keys = {c.key() for c in (layer.prompt, layer.generated) if c is not None}
        return sum(self.layers[hookpoint].needs_row(k) for k in keys)

    def _check_room(self, steering: RequestSteering) -> None:
        """Every layer's content fits its table and finds a row, before any row is taken (all or nothing)."""
        for hookpoint, layer in steering.layers.items():
            table = self.layers[hookpoint]
            for content in (layer.prompt, layer.generated):
                if content is not None:
                    table.check(content)
            if self._new_rows(hookpoint, layer) > table.free_rows:
                raise TableFull(
                    f"the steering table at {hookpoint} is full ({self.cfg.rows - 1} distinct steerings in use); "
                    "retry when running requests finish, or start the server with more rows"
                )

    def new_index(self, max_tokens: int, device: str | torch.device = "cpu") -> Tensor:
        """A zeroed (hooked layers, max_tokens) int32 index buffer."""
        return torch.zeros(len(self.order), max_tokens, dtype=torch.int32, device=device)

    def fill(self, index: Tensor, spans: Sequence[Span]) -> None:
        """Write the step's row of every token into ``index`` in place; tokens no span covers get row 0. Runs on the
        host before every step, so it costs two numpy slice writes per steered request (a span's prompt tokens, then
        its generated tokens), not torch calls per token."""
        host = np.zeros(tuple(index.shape), dtype=np.int32)
        for span in spans:
            columns = self._columns.get(span.request_id)
            if columns is None:
                continue
            start, end = span.start, span.start + span.count
            split = start + min(max(span.prompt_len - span.first_position, 0), span.count)  # prompt tokens end here
            if split > start:
                host[:, start:split] = columns[0]
            if end > split:
                host[:, split:end] = columns[1]
        index.copy_(torch.from_numpy(host), non_blocking=True)


def table_full_error(e: TableFull) -> ApiError:
    """The 429 a server answers a request that does not fit the steering tables now."""
    return ApiError(429, str(e), "steering", "steering_table_full", "rate_limit_error")
