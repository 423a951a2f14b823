"""Feature statistics as one compact Parquet file of token ids (no decoded text), to ship beside an SAE.

    save_stats("sae/resid_post.15/feature_stats.parquet", stats, meta)   # one compact file beside the SAE
    stats, meta = load_stats(path)                                       # FeatureStats again (lens logits: float16)
    small = trim(stats, top_n=10, window_before=12, window_after=4)      # fewer, shorter top contexts
    sae_fingerprint(sae)                                                 # which weights the statistics belong to

A row per feature: count, act_sum, max_act, hist, the top contexts' token ids and activations (flattened
``top_n x window``; -1 pads; the top activations are those at ``window_before``, so they are not stored twice), and the
logit lens (token ids, and logits as float16: display precision, half the bytes). ``meta`` (model, hookpoint, n_tokens,
dataset, the StatsConfig, the SAE's fingerprint) rides in the Parquet schema metadata. Compressed with zstd: the
activations of a context are mostly zeros and token ids repeat. Text is decoded only when a ``FeatureStore`` is
written from it, with the tokenizer at hand (``qwenscope.features.tokens``), so the file never holds a broken
character and the decoding can improve without rebuilding the statistics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from qwenscope.errors import QwenscopeError
from qwenscope.features.stats import FeatureStats, LogitLens
from qwenscope.sae.model import Sae

STATS_FILE = "feature_stats.parquet"
"""The file name of packed statistics beside an SAE's cfg.json and sae.safetensors."""
_META_KEY = b"qwenscope"
_FINGERPRINT_ELEMENTS = 2**22
"""Elements hashed per tensor at most (evenly strided beyond that), so a large SAE's fingerprint stays cheap."""


def sae_fingerprint(sae: Sae) -> str:
    """A short hash of the SAE's weights and shape-giving config. The weights are hashed as float16 (strided for huge
    tensors), so an SAE trained in float32 and its float16 copy (as shipped) share a fingerprint: statistics computed
    with one serve the other (their activations differ by float16 rounding only)."""
    digest = hashlib.sha256(f"{sae.d_in}x{sae.d_sae} k={sae.cfg.k}".encode())
    for name, tensor in sorted(sae.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        flat = flat[:: max(1, flat.numel() // _FINGERPRINT_ELEMENTS)]
        digest.update(name.encode())
        digest.update(flat.to(device="cpu", dtype=torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def trim(stats: FeatureStats, top_n: int, window_before: int, window_after: int) -> FeatureStats:
    """``stats`` with at most ``top_n`` top contexts per feature and windows cut to ``window_before`` tokens before
    the top token and ``window_after`` after it (never more than the statistics hold)."""
    before = min(window_before, stats.window_before)
    after = min(window_after, stats.top_tokens.shape[2] - 1 - stats.window_before)
    cut = slice(stats.window_before - before, stats.window_before + after + 1)
    n = min(top_n, stats.top_acts.shape[1])
    return dataclasses.replace(
        stats,
        top_acts=stats.top_acts[:, :n].clone(),
        window_before=before,
        top_tokens=stats.top_tokens[:, :n, cut].clone(),
        top_token_acts=stats.top_token_acts[:, :n, cut].clone(),
    )


def _list(values: np.ndarray, kind: pa.DataType) -> pa.ListArray:
    """A list column from a (rows, width) array: every row holds ``width`` values."""
    rows, width = values.shape[0], int(np.prod(values.shape[1:]))
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=kind))


def _array(column: pa.ChunkedArray, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    values = pa.concat_arrays([chunk.flatten() for chunk in column.chunks]) if column.num_chunks else pa.array([])
    return values.to_numpy(zero_copy_only=False).astype(dtype).reshape(shape)


def save_stats(path: str | Path, stats: FeatureStats, meta: Mapping[str, Any]) -> Path:
    """Write ``stats`` (and ``meta``, JSON) to one Parquet file at ``path``, atomically; returns the path."""
    path = Path(path)
    d, n, w = stats.top_tokens.shape
    columns: dict[str, Any] = {
        "count": pa.array(stats.count.numpy()),
        "act_sum": pa.array(stats.act_sum.numpy()),
        "max_act": pa.array(stats.max_act.numpy()),
        "hist": _list(stats.hist.numpy(), pa.int64()),
        "top_tokens": _list(stats.top_tokens.numpy().astype(np.int32), pa.int32()),
        "top_token_acts": _list(stats.top_token_acts.numpy(), pa.float32()),
    }
    if stats.lens is not None:
        for name in LogitLens._fields:
            values = getattr(stats.lens, name).numpy()
            columns[name] = (
                _list(values.astype(np.int32), pa.int32())
                if name.endswith("ids")
                else _list(values.astype(np.float16), pa.float16())
            )
    info = {
        **meta,
        "hookpoint": stats.hookpoint,
        "n_tokens": stats.n_tokens,
        "d_sae": d,
        "top_n": n,
        "window": w,
        "window_before": stats.window_before,
        "hist_edges": [float(e) for e in stats.hist_edges],
    }
    table = pa.table(columns).replace_schema_metadata({_META_KEY: json.dumps(info, default=str).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd", compression_level=19, row_group_size=1 << 20)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` saved with the statistics (cheap: reads the file footer only)."""
    raw = _schema(Path(path)).metadata or {}
    if _META_KEY not in raw:
        raise QwenscopeError(f"{path} is not a qwenscope feature-statistics file; rebuild it with qwenscope stats")
    return dict(json.loads(raw[_META_KEY]))


def _schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        raise QwenscopeError(
            f"cannot read feature statistics at {path} ({error}); rebuild with qwenscope stats"
        ) from None


def load_stats(path: str | Path) -> tuple[FeatureStats, dict[str, Any]]:
    """(statistics, meta) from a file written by ``save_stats``."""
    meta = read_meta(path)
    table = pq.read_table(path)
    d, n, w, bins = meta["d_sae"], meta["top_n"], meta["window"], len(meta["hist_edges"]) - 1
    col = table.column
    token_acts = torch.from_numpy(_array(col("top_token_acts"), (d, n, w), np.float32))
    lens = None
    if "promoted_ids" in table.column_names:
        top = len(table.column("promoted_ids")[0]) if d else 0
        lens = LogitLens(
            *(
                torch.from_numpy(_array(col(name), (d, top), np.int64 if name.endswith("ids") else np.float32))
                for name in LogitLens._fields
            )
        )
    stats = FeatureStats(
        hookpoint=meta["hookpoint"],
        n_tokens=int(meta["n_tokens"]),
        count=torch.from_numpy(col("count").to_numpy().astype(np.int64)),
        act_sum=torch.from_numpy(col("act_sum").to_numpy().astype(np.float64)),
        max_act=torch.from_numpy(col("max_act").to_numpy().astype(np.float32)),
        hist=torch.from_numpy(_array(col("hist"), (d, bins), np.int64)),
        hist_edges=torch.tensor(meta["hist_edges"], dtype=torch.float32),
        top_acts=token_acts[:, :, int(meta["window_before"])].clone(),
        top_tokens=torch.from_numpy(_array(col("top_tokens"), (d, n, w), np.int64)),
        top_token_acts=token_acts,
        window_before=int(meta["window_before"]),
        lens=lens,
    )
    return stats, meta


def stats_file_for(sae_id: str, hookpoint: str) -> Path | None:
    """Where the packed statistics of an SAE live beside it (whether or not they exist yet), None for a hub id:
    ``assets/saes/<model>/<hookpoint>/feature_stats.parquet`` for an embedded model name, ``<folder>/feature_stats
    .parquet`` for an SAE folder of ours (cfg.json) or one with a ``<hookpoint>/`` SAE folder inside, and
    ``feature_stats.<hookpoint>.parquet`` beside other local SAE files (Qwen-Scope, SAELens, ...)."""
    from qwenscope.sae.load import EMBEDDED_DIR, EMBEDDED_MODELS

    if sae_id in EMBEDDED_MODELS:
        return EMBEDDED_DIR / sae_id / hookpoint / STATS_FILE
    path = Path(sae_id)
    if not path.exists():
        return None
    folder = path if path.is_dir() else path.parent
    for ours in (folder, folder / hookpoint):
        if (ours / "cfg.json").is_file() and (ours / "sae.safetensors").is_file():
            return ours / STATS_FILE
    return folder / f"feature_stats.{hookpoint}.parquet"
