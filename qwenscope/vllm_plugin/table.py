"""The steering table of one hooked layer: preallocated rows of steering content, shared and reference-counted.

    table = SteerTable(d_in=576, cfg=TableConfig(rows=64, slots=8))
    row = table.acquire(content)        # same content -> same row; a new one is written in place
    ...                                 # tokens whose row index is ``row`` get that row's steering
    table.release(row)                  # freed (and reusable) once no request holds it

Row 0 is "not steered" and never handed out. The tensors are allocated once, in ``__init__``, and rows are written
in place, so a captured CUDA graph or a compiled graph that read their addresses keeps reading the live content. A
full table raises ``TableFull`` (the server answers 429 / retries later); nothing is ever served unsteered instead.
With ``device="meta"`` the table keeps only the bookkeeping (a front end's mirror of the engine's admission).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from qwenscope.errors import QwenscopeError


class TableFull(QwenscopeError):
    """Every row of a steering table is held by running requests: the request must wait or be refused (429)."""


@dataclass
class TableConfig:
    """Sizes of each hooked layer's steering table."""

    rows: int = 64
    """Rows per layer, row 0 (not steered) included: the most distinct steerings one layer holds at once, plus one."""
    slots: int = 8
    """The most clamped or ablated features one row holds."""
    dtype: torch.dtype = torch.float32
    """Dtype of the table (the SAE math runs in it; the delta is cast to the hidden states' dtype)."""
    device: str = "cpu"
    """Where the tensors live ("meta": bookkeeping only)."""

    def __post_init__(self) -> None:
        if self.rows < 2:
            raise QwenscopeError(f"a steering table needs at least 2 rows (row 0 is 'not steered'), got {self.rows}")
        if self.slots < 1:
            raise QwenscopeError(f"a steering table needs at least 1 feature slot per row, got {self.slots}")


@dataclass(frozen=True)
class RowContent:
    """One row's steering at one layer: h -> h + add, then ``Σ_j (target_j − a_j(h)) · dec_j`` over the slots, with
    ``a_j(h) = relu(pre_j) · (pre_j > threshold_j)`` and ``pre_j = h · enc_j + bias_j``. Empty slots are zero rows."""

    add: Tensor
    """(d,) the added vector (zeros for none)."""
    enc: Tensor
    """(m, d) encoder rows of the clamped / ablated features (m <= slots)."""
    bias: Tensor
    """(m,) their encoder biases, with the SAE's input centring (``b_dec``) folded in."""
    threshold: Tensor
    """(m,) JumpReLU thresholds (0 for ReLU and TopK SAEs)."""
    dec: Tensor
    """(m, d) their decoder rows."""
    target: Tensor
    """(m,) the value each feature is pinned to (0 for ablate)."""
    described: str | None = None
    """The key, when the row is keyed by the steering that makes it instead of its content: rows of SAEs on the
    ``meta`` device, which have shapes and no content (the scheduler's admission, ``gate.py``)."""

    @property
    def n_slots(self) -> int:
        return int(self.enc.shape[0])

    def key(self) -> str:
        """A hash of the content (dtype-exact): equal content, equal key (``described`` instead, when given). Computed
        once: a row's content is never written after it is built (the salt, the room check and the acquire all ask
        for it)."""
        if self.described is not None:
            return self.described
        cached = self.__dict__.get("_key")
        if cached is None:
            if self.add.is_meta:
                raise QwenscopeError("a steering row on the meta device has no content to hash: give it `described`")
            h = hashlib.blake2b(digest_size=16)
            for t in (self.add, self.enc, self.bias, self.threshold, self.dec, self.target):
                t = t.detach().to("cpu", torch.float32).contiguous()
                h.update(str(tuple(t.shape)).encode())
                h.update(t.numpy().tobytes())
            cached = h.hexdigest()
            object.__setattr__(self, "_key", cached)  # frozen: the fields stay as they are
        return cached


def add_only(vector: Tensor) -> RowContent:
    """A row that only adds ``vector`` (d,)."""
    d = vector.shape[-1]
    empty = vector.new_zeros(0)
    return RowContent(vector, vector.new_zeros(0, d), empty, empty, vector.new_zeros(0, d), empty)


class SteerTable:
    """One hooked layer's persistent steering tensors and their reference-counted rows."""

    def __init__(self, d_in: int, cfg: TableConfig | None = None) -> None:
        self.cfg = cfg = cfg or TableConfig()
        self.d_in = d_in
        dtype, device = cfg.dtype, torch.device(cfg.device)
        self.add = torch.zeros(cfg.rows, d_in, dtype=dtype, device=device)
        self.enc = torch.zeros(cfg.rows, cfg.slots, d_in, dtype=dtype, device=device)
        self.bias = torch.zeros(cfg.rows, cfg.slots, dtype=dtype, device=device)
        self.threshold = torch.zeros(cfg.rows, cfg.slots, dtype=dtype, device=device)
        self.dec = torch.zeros(cfg.rows, cfg.slots, d_in, dtype=dtype, device=device)
        self.target = torch.zeros(cfg.rows, cfg.slots, dtype=dtype, device=device)
        self._row_of: dict[str, int] = {}
        self._key_of: dict[int, str] = {}
        self._refs = [0] * cfg.rows
        self._free = list(range(cfg.rows - 1, 0, -1))  # pop() hands out row 1 first

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(add, enc, bias, threshold, dec, target), the op's table arguments."""
        return self.add, self.enc, self.bias, self.threshold, self.dec, self.target

    @property
    def free_rows(self) -> int:
        return len(self._free)

    def refs(self, row: int) -> int:
        """How many holders row ``row`` has."""
        return self._refs[row]

    def needs_row(self, key: str) -> bool:
        """Whether content with this key would take a free row (it is not in the table yet)."""
        return key not in self._row_of

    def acquire(self, content: RowContent, key: str | None = None) -> int:
        """The row holding ``content`` (written into a free row if new), with one more holder. Raises ``TableFull``."""
        key = key or content.key()
        row = self._row_of.get(key)
        if row is None:
            self.check(content)
            if not self._free:
                raise TableFull(
                    f"the steering table is full ({self.cfg.rows - 1} distinct steerings at this layer are in use); "
                    "retry when running requests finish, or start the server with more rows"
                )
            row = self._free.pop()
            self._write(row, content)
            self._row_of[key], self._key_of[row] = row, key
        self._refs[row] += 1
        return row

    def release(self, row: int) -> None:
        """Drop one holder of ``row``; with none left the row is freed (its content stays until it is reused)."""
        if row == 0:
            return
        if self._refs[row] <= 0:
            raise QwenscopeError(f"row {row} of the steering table is released more often than it was acquired")
        self._refs[row] -= 1
        if self._refs[row] == 0:
            del self._row_of[self._key_of.pop(row)]
            self._free.append(row)

    def check(self, content: RowContent) -> None:
        """Whether ``content`` fits a row of this table (its width, its slots); a QwenscopeError saying why not."""
        if content.add.shape != (self.d_in,) or content.enc.shape[1:] != (self.d_in,):
            raise QwenscopeError(
                f"steering content has width {content.add.shape[-1]} but this layer's table has d_in={self.d_in}"
            )
        if content.n_slots > self.cfg.slots:
            raise QwenscopeError(
                f"this steering clamps or ablates {content.n_slots} features at one layer; the table holds at most "
                f"{self.cfg.slots} per request (start the server with more slots)"
            )

    @torch.no_grad()
    def _write(self, row: int, content: RowContent) -> None:
        """Write ``content`` into ``row`` in place (unused slots zeroed)."""
        m = content.n_slots
        self.add[row].copy_(content.add)
        for table, value in (
            (self.enc, content.enc),
            (self.bias, content.bias),
            (self.threshold, content.threshold),
            (self.dec, content.dec),
            (self.target, content.target),
        ):
            table[row].zero_()
            table[row, :m].copy_(value)
