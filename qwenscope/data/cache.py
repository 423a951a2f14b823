"""An on-disk activation cache: write a stream once, read shuffled batches many times.

Layout: ``folder/<hookpoint>/`` per hookpoint, holding ``shard_00000.safetensors``, ... (one tensor
``activations`` of shape (rows, d_in), float16 by default) and ``cfg.json`` (model, hookpoint, d_in, dtype,
tokens written, shard list, the stream config). Shard k holds rows [k·shard_tokens, (k+1)·shard_tokens) of the
stream, the same rows at every hookpoint.

Crash safety and resume. A shard is written to a temporary file, fsync-ed, and renamed into place; only then is
``cfg.json`` rewritten the same way (temp, fsync, rename), first the shards of every hookpoint, then the configs.
So ``cfg.json`` only ever lists complete shards, and a kill at any moment leaves a valid cache of fewer tokens
(plus at most an unlisted shard or temp file, overwritten or removed later). ``write_cache`` on such a folder
checks that the model, hookpoints and stream config match, takes the smallest token count over the hookpoints
as written (a kill between two config updates leaves one hookpoint a shard ahead; its extra shard is forgotten),
reruns the deterministic stream and skips that many rows, then writes the rest. Skipping costs the forwards of
the skipped rows but no disk I/O; the resumed cache is bit-identical to an uninterrupted one.

Reading: ``ActivationCache(folder).batches(batch_size, seed=...)`` visits shards in a seeded random order per
epoch and rows in a seeded random order within each shard, one shard in memory at a time, converting each batch
to float32. Batch i depends only on (seed, i), so ``start_batch=i`` resumes a training run exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from qwenscope.data.stream import ActivationStream
from qwenscope.errors import QwenscopeError
from qwenscope.models.load import model_name
from qwenscope.util.atomic import atomic_write

logger = logging.getLogger(__name__)

CFG_FILE = "cfg.json"
FORMAT = "qwenscope-activation-cache/1"
DTYPES = {"float16": torch.float16, "float32": torch.float32}
_IDENTITY = ("format", "model", "hookpoint", "dtype", "target_tokens", "shard_tokens", "source", "stream")


def write_cache(
    stream: ActivationStream,
    folder: str | Path,
    n_tokens: int,
    *,
    shard_tokens: int = 65536,
    dtype: str = "float16",
) -> dict[str, ActivationCache]:
    """Write ``n_tokens`` rows of ``stream`` per hookpoint under ``folder``; resume a half-written cache.

    Returns the cache of every hookpoint. A complete cache with the same settings is returned as is.
    """
    if dtype not in DTYPES:
        raise QwenscopeError(f"unknown cache dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if n_tokens < 1 or shard_tokens < 1:
        raise QwenscopeError(f"n_tokens and shard_tokens must be positive, got {n_tokens} and {shard_tokens}")
    stream = stream.with_config(max_tokens=n_tokens, positions=False)
    names = stream.hookpoint_names
    folder = Path(folder)
    stream_cfg = {k: v for k, v in dataclasses.asdict(stream.cfg).items() if k != "progress"}
    identity = {
        "format": FORMAT,
        "model": model_name(stream.model),  # type: ignore[arg-type]
        "dtype": dtype,
        "target_tokens": n_tokens,
        "shard_tokens": shard_tokens,
        "source": stream.texts if isinstance(stream.texts, str) else None,
        "stream": stream_cfg,
    }
    states = {name: _start_state(folder / name, {**identity, "hookpoint": name}) for name in names}
    if all(s["complete"] for s in states.values()):
        logger.info("cache %s is complete (%d tokens); nothing to write", folder, states[names[0]]["n_tokens"])
        return {name: ActivationCache(folder / name) for name in names}
    done = min(s["n_tokens"] for s in states.values())
    for name, state in states.items():
        _truncate(folder / name, state, done)
    if done == n_tokens:  # killed while marking the hookpoints complete
        for name, state in states.items():
            _write_cfg(folder / name, {**state, "complete": True})
        return {name: ActivationCache(folder / name) for name in names}
    _Writer(folder, names, states, shard_tokens, DTYPES[dtype]).run(stream, skip=done)
    return {name: ActivationCache(folder / name) for name in names}


def _start_state(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The cfg.json of a started cache (checked against ``identity``), or a fresh one."""
    cfg_path = path / CFG_FILE
    if not cfg_path.is_file():
        return {**identity, "d_in": None, "n_tokens": 0, "shards": [], "shard_sizes": [], "complete": False}
    state = _read_cfg(path)
    changed = [k for k in _IDENTITY if _canonical(state.get(k)) != _canonical(identity[k])]
    if changed:
        raise QwenscopeError(
            f"{path} holds a cache written with other settings ({', '.join(changed)} differ); "
            "use a new folder, or delete this one to rewrite it"
        )
    for stale in path.glob(".*.tmp"):
        stale.unlink()
    return state


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _truncate(path: Path, state: dict[str, Any], n_tokens: int) -> None:
    """Forget shards beyond ``n_tokens`` (left by a kill between two hookpoints' config updates)."""
    if state["n_tokens"] == n_tokens:
        return
    while state["n_tokens"] > n_tokens:
        state["shards"].pop()
        state["n_tokens"] -= state["shard_sizes"].pop()
    if state["n_tokens"] != n_tokens:
        raise QwenscopeError(f"{path}: shards do not line up with the other hookpoints; delete the folder and rewrite")
    state["complete"] = False
    _write_cfg(path, state)


class _Writer:
    """Fills one shard-sized accumulator per hookpoint and commits shards (see the module doc)."""

    def __init__(
        self, folder: Path, names: list[str], states: dict[str, Any], shard_tokens: int, dtype: torch.dtype
    ) -> None:
        self.folder, self.names, self.states = folder, names, states
        self.shard_tokens, self.dtype = shard_tokens, dtype
        self.acc: dict[str, Tensor] = {}
        self.fill = 0

    def run(self, stream: ActivationStream, skip: int) -> None:
        if skip:
            logger.info("resuming %s: skipping the %d rows already written", self.folder, skip)
        for batch in stream:
            n = len(batch[self.names[0]])
            if skip >= n:
                skip -= n
                continue
            self._add({k: v[skip:] for k, v in batch.items()})
            skip = 0
        if self.fill:
            self._commit()
        written = self.states[self.names[0]]["n_tokens"]
        if written == 0:
            raise QwenscopeError("the stream yielded no activations; give it more text or a smaller out_batch")
        for name in self.names:
            self.states[name]["complete"] = True
            _write_cfg(self.folder / name, self.states[name])
        logger.info("cache %s complete: %d tokens per hookpoint", self.folder, written)

    def _add(self, batch: dict[str, Tensor]) -> None:
        start, n = 0, len(batch[self.names[0]])
        while start < n:
            take = min(n - start, self.shard_tokens - self.fill)
            for name in self.names:
                rows = batch[name][start : start + take]
                self._check(name, rows)
                if name not in self.acc:  # (shard_tokens, d_in) in the stored dtype, allocated once
                    self.acc[name] = torch.empty((self.shard_tokens, rows.shape[1]), dtype=self.dtype)
                self.acc[name][self.fill : self.fill + take] = rows.to("cpu", self.dtype)
            self.fill += take
            start += take
            if self.fill == self.shard_tokens:
                self._commit()

    def _check(self, name: str, rows: Tensor) -> None:
        shard = len(self.states[name]["shards"])
        if not torch.isfinite(rows).all():
            raise QwenscopeError(f"the model gave NaN or inf activations at {name} (shard {shard}); check its dtype")
        limit = torch.finfo(self.dtype).max
        if self.dtype != torch.float32 and rows.abs().max() > limit:
            raise QwenscopeError(
                f"activations at {name} exceed the {self.dtype} range (max |x| = {rows.abs().max():.4g} > {limit:.4g}) "
                f"in shard {shard}; filter outliers (outlier_m) or write with dtype='float32'"
            )
        d_in = self.states[name]["d_in"]
        if d_in is not None and rows.shape[1] != d_in:
            raise QwenscopeError(f"{name}: the stream gives d={rows.shape[1]} but the cache holds d_in={d_in}")

    def _commit(self) -> None:
        """Write shard k of every hookpoint, then update every cfg.json."""
        for name in self.names:
            state, path = self.states[name], self.folder / name
            path.mkdir(parents=True, exist_ok=True)
            shard = f"shard_{len(state['shards']):05d}.safetensors"
            tensors = {"activations": self.acc[name][: self.fill].contiguous()}
            meta = {"hookpoint": name}
            atomic_write(path / shard, partial(save_file, tensors, metadata=meta))
        for name in self.names:
            state = self.states[name]
            state["shards"].append(f"shard_{len(state['shards']):05d}.safetensors")
            state["shard_sizes"].append(self.fill)
            state["n_tokens"] += self.fill
            state["d_in"] = int(self.acc[name].shape[1])
            _write_cfg(self.folder / name, state)
        self.fill = 0


def _write_cfg(path: Path, state: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    text = json.dumps(state, indent=2, sort_keys=True) + "\n"
    atomic_write(path / CFG_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _read_cfg(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / CFG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise QwenscopeError(f"{path / CFG_FILE} cannot be read ({error}); delete the cache and rewrite it") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise QwenscopeError(f"{path} is not an activation cache (cfg.json of another kind); pick the cache folder")
    return state


class ActivationCache:
    """A written cache of one hookpoint (see the module doc)."""

    def __init__(self, folder: str | Path, *, hookpoint: str | None = None, expected_d_in: int | None = None) -> None:
        """Open ``folder`` (a hookpoint folder, or the top folder with ``hookpoint=``, or with only one hookpoint)."""
        self.path = _hookpoint_folder(Path(folder), hookpoint)
        self.cfg = _read_cfg(self.path)
        if not self.cfg["shards"] or self.cfg["n_tokens"] == 0:
            raise QwenscopeError(f"cache {self.path} is empty (no shard written); run write_cache to fill it")
        if not self.cfg["complete"]:
            logger.warning(
                "cache %s is incomplete (%d of %d tokens); run write_cache again to finish it",
                self.path,
                self.cfg["n_tokens"],
                self.cfg["target_tokens"],
            )
        if expected_d_in is not None and expected_d_in != self.d_in:
            raise QwenscopeError(
                f"cache {self.path} holds d_in={self.d_in} activations ({self.cfg['hookpoint']} of "
                f"{self.cfg['model']}), expected d_in={expected_d_in}; use a cache of the matching model and hookpoint"
            )
        missing = [s for s in self.cfg["shards"] if not (self.path / s).is_file()]
        if missing:
            raise QwenscopeError(f"cache {self.path} lacks shard files {missing}; delete it and run write_cache again")

    @property
    def d_in(self) -> int:
        """Width of each activation row."""
        return int(self.cfg["d_in"])

    @property
    def n_tokens(self) -> int:
        """Rows written."""
        return int(self.cfg["n_tokens"])

    @property
    def hookpoint(self) -> str:
        """The hookpoint the rows come from."""
        return str(self.cfg["hookpoint"])

    def num_batches(self, batch_size: int, epochs: int = 1) -> int:
        """How many batches ``batches(batch_size, epochs=epochs)`` yields (the last partial batch is dropped)."""
        return epochs * self.n_tokens // batch_size

    def load_shard(self, index: int) -> Tensor:
        """Shard ``index`` as stored (fp16 or fp32), checked for shape and NaN/inf."""
        name = self.cfg["shards"][index]
        try:
            with safe_open(str(self.path / name), framework="pt") as handle:
                x = handle.get_tensor("activations")
        except (SafetensorError, OSError, KeyError) as error:
            raise QwenscopeError(
                f"shard {self.path / name} is unreadable ({error}); delete the cache, rewrite it"
            ) from None
        expected = (self.cfg["shard_sizes"][index], self.d_in)
        if tuple(x.shape) != expected:
            raise QwenscopeError(f"shard {self.path / name} has shape {tuple(x.shape)}, not {expected}; rewrite it")
        if not torch.isfinite(x).all():
            raise QwenscopeError(f"shard {self.path / name} holds NaN or inf activations; delete the cache, rewrite it")
        return x

    def batches(
        self, batch_size: int, *, seed: int = 0, start_batch: int = 0, epochs: int = 1, shuffle: bool = True
    ) -> Iterator[Tensor]:
        """Float32 batches (batch_size, d_in): epochs × n_tokens rows in a seeded order, starting at ``start_batch``."""
        if batch_size < 1 or epochs < 1 or start_batch < 0 or seed < 0:
            raise QwenscopeError("batch_size and epochs must be positive, start_batch and seed non-negative")
        n_batches = self.num_batches(batch_size, epochs)
        if n_batches == 0:
            raise QwenscopeError(f"cache {self.path} has {self.n_tokens} tokens, fewer than one batch of {batch_size}")
        to_yield = n_batches - start_batch
        epoch, offset = divmod(start_batch * batch_size, self.n_tokens)
        carry = torch.empty((0, self.d_in))
        while to_yield > 0 and epoch < epochs:
            for shard in self._shard_order(seed, epoch, shuffle):
                size = self.cfg["shard_sizes"][shard]
                if offset >= size:
                    offset -= size
                    continue
                x = self.load_shard(shard)
                order = self._row_order(seed, epoch, shard, size, shuffle)[offset:]
                offset = 0
                start = 0
                if len(carry):  # a batch straddling two shards
                    need = batch_size - len(carry)
                    carry = torch.cat([carry, x[order[:need]].float()])
                    start = min(need, len(order))
                    if len(carry) == batch_size:
                        yield carry
                        carry, to_yield = carry[:0], to_yield - 1
                while to_yield > 0 and start + batch_size <= len(order):
                    yield x[order[start : start + batch_size]].float()
                    start, to_yield = start + batch_size, to_yield - 1
                if to_yield == 0:
                    return
                carry = torch.cat([carry, x[order[start:]].float()])
            epoch += 1

    def _shard_order(self, seed: int, epoch: int, shuffle: bool) -> list[int]:
        n = len(self.cfg["shards"])
        return np.random.default_rng([seed, epoch]).permutation(n).tolist() if shuffle else list(range(n))

    @staticmethod
    def _row_order(seed: int, epoch: int, shard: int, size: int, shuffle: bool) -> Tensor:
        if not shuffle:
            return torch.arange(size)
        return torch.from_numpy(np.random.default_rng([seed, epoch, shard, 1]).permutation(size))

    def __repr__(self) -> str:
        return f"ActivationCache({str(self.path)!r}, hookpoint={self.hookpoint!r}, n_tokens={self.n_tokens})"


def _hookpoint_folder(folder: Path, hookpoint: str | None) -> Path:
    if hookpoint is not None:
        folder = folder / hookpoint
    if (folder / CFG_FILE).is_file():
        return folder
    if not folder.is_dir():
        raise QwenscopeError(f"no activation cache at {folder}: the folder does not exist; write one with write_cache")
    inner = sorted(p for p in folder.iterdir() if (p / CFG_FILE).is_file())
    if len(inner) == 1:
        return inner[0]
    if inner:
        names = ", ".join(p.name for p in inner)
        raise QwenscopeError(f"{folder} holds caches of several hookpoints ({names}); pass hookpoint= one of them")
    raise QwenscopeError(f"{folder} is not an activation cache (no cfg.json); write one with write_cache")
