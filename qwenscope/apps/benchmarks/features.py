"""Sample feature sets: which SAE features each benchmark item turns on, as a sparse boolean matrix.

    sets = feature_sets(model, tokenizer, load_benchmark("gsm8k"), [SaeSpec(sae, "smollm2-135m")])
    sets[0].matrix                  # scipy.sparse.csr_matrix, bool, (n_items, d_sae): row i = F(x_i)

Definitions (Qwen-Scope report, section 4):

- ``F(x) = {j : z_j(x) > 0}`` at the sample's last token (the default, ``pooling="last"``: the last non-padding
  token, whatever the batch's padding), or max-pooled over all its tokens (``pooling="max"``: j fires on some token;
  special tokens such as BOS are left out, they are the same in every sample).
- Footprint ``F(D)`` = the union of F(x) over the benchmark; ``|F(D)|`` its size (``measures.footprint``).

One forward per batch reads every requested hookpoint (several SAEs, one pass) and stops after the deepest one
(``qwenscope.get_activations``): no later layer and no LM head run. Items are batched by length (fewest pads), padded
on the right with an attention mask, so a real token never attends to a pad; the matrix rows follow the benchmark's
order. Each SAE must fit the model (``check_sae_fits``: one clear line otherwise).

Density filter: features firing on more than ``max_density`` of ordinary text (their frequency in the SAE's feature
store, ``qwenscope.features.store.find_store``; every shipped SAE ships its 1M-token statistics) are dropped, i.e.
their columns are emptied (the ids stay feature ids). Default ``MAX_DENSITY`` (10%, ``qwenscope.features.density``):
an always-on feature fires on nearly every sample of every benchmark, so it says nothing about what a benchmark
tests and inflates every overlap and footprint alike. ``max_density=1`` disables the filter.

Cache: the unfiltered matrix is saved (``scipy.sparse.save_npz``, atomically) under
``cache_dir()/benchmarks/<key>.npz`` with a JSON beside it; key = a hash of (model weights, SAE fingerprint, hookpoint,
benchmark content hash, the token ids, pooling). A second call loads it (the density filter is applied after
loading, so changing ``max_density`` costs no forward).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from qwenscope import QwenscopeError, Sae, check_sae_fits, get_activations
from qwenscope.apps.benchmarks.data import Benchmark, content_hash
from qwenscope.atomic import atomic_write
from qwenscope.data.tokens import TokenBatch, token_batches
from qwenscope.features.density import MAX_DENSITY, check_max_density, dense_features
from qwenscope.features.packed import sae_fingerprint
from qwenscope.features.store import find_store
from qwenscope.models.hookpoints import resolve_hookpoints
from qwenscope.models.load import cache_dir, cache_key, model_fingerprint, model_name

logger = logging.getLogger(__name__)

Pooling = Literal["last", "max"]
CACHE_VERSION = 1
"""Bumped when the cached matrices' meaning changes, so old caches are not read."""


@dataclass
class SaeSpec:
    """An SAE to read the benchmark with, and what finds its feature store."""

    sae: Sae
    sae_id: str
    """How the SAE was loaded (an embedded model name, a folder, a hub id): locates its feature store."""
    hookpoint: str | None = None
    """Where it reads; default the hookpoint the SAE records."""
    densities: np.ndarray | None = None
    """(d_sae,) feature densities to filter with, instead of the feature store's."""


@dataclass
class FeatureSetConfig:
    """How feature sets are computed."""

    pooling: Pooling = "last"
    """last: the features at each item's last token (the report); max: those firing on any of its tokens."""
    max_density: float = MAX_DENSITY
    """Drop features firing on more than this share of ordinary text (the SAE's feature store); 1 keeps all."""
    batch_size: int = 16
    """Items per forward."""
    max_batch_tokens: int = 16384
    """At most this many (padded) tokens per forward: long items go in smaller batches."""
    cache: bool = True
    """Read and write the cached matrices (cache_dir()/benchmarks)."""

    def __post_init__(self) -> None:
        if self.pooling not in ("last", "max"):
            raise QwenscopeError(f"--pooling is last or max, got {self.pooling!r}")
        check_max_density(self.max_density)
        if self.batch_size < 1 or self.max_batch_tokens < 1:
            raise QwenscopeError("--batch-size and the tokens per batch must be at least 1")


@dataclass
class FeatureSets:
    """The feature sets of a benchmark's items at one hookpoint."""

    benchmark: str
    ids: list[str]
    """Item ids, one per matrix row."""
    hookpoint: str
    d_sae: int
    matrix: sp.csr_matrix
    """bool (n_items, d_sae): row i = F(x_i), after the density filter."""
    meta: dict[str, Any] = field(default_factory=dict)
    """model, sae, pooling, max_density, dropped (the dense features the filter removed), n_tokens, cache key."""


# ---------------------------------------------------------------- batching
def tokenize(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as the model sees it (with the tokenizer's special tokens, e.g. BOS)."""
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    for i, row in enumerate(ids):
        if not row:
            raise QwenscopeError(f"item {i} has no tokens; every item needs a text")
    return [list(row) for row in ids]


# ---------------------------------------------------------------- one pass
def _active(sae: Sae, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(row, feature) pairs where ``sae``'s code of the rows of ``x`` (n, d_in) is positive."""
    if x.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    acts, idx = sae.encode_sparse(x.to(sae.device))
    rows, slots = (acts > 0).nonzero(as_tuple=True)
    return rows.cpu().numpy(), idx[rows, slots].cpu().numpy()


def _batch_pairs(
    sae: Sae, acts: Tensor, batch: TokenBatch, pooling: Pooling, special: Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """(item position, feature) pairs of one batch at one hookpoint."""
    rows = torch.tensor(batch.rows)
    if pooling == "last":
        last = acts[torch.arange(acts.shape[0]), batch.lengths.to(acts.device) - 1]  # (batch, d_in)
        r, f = _active(sae, last)
        return rows.numpy()[r], f
    keep = batch.attention_mask.bool() & ~torch.isin(batch.input_ids, special)
    keep[~keep.any(1), 0] = True  # an item of special tokens only keeps its first token
    b, t = keep.nonzero(as_tuple=True)
    r, f = _active(sae, acts[b.to(acts.device), t.to(acts.device)])
    return rows.numpy()[b.numpy()[r]], f


def compute_matrices(
    model: nn.Module,
    hookpoints: Sequence[str],
    saes: Sequence[Sae],
    ids: Sequence[Sequence[int]],
    pooling: Pooling,
    batch_size: int = 16,
    max_batch_tokens: int = 16384,
    special_ids: Sequence[int] = (),
) -> list[sp.csr_matrix]:
    """Unfiltered feature-set matrices of token-id lists, one per (SAE, hookpoint), from one early-stopped forward
    per batch that reads all the hookpoints."""
    hooks = resolve_hookpoints(model, list(dict.fromkeys(hookpoints)))
    device = next(model.parameters()).device
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
    pairs: list[tuple[list[np.ndarray], list[np.ndarray]]] = [([], []) for _ in saes]
    with torch.no_grad():
        for batch in token_batches(ids, batch_size, max_batch_tokens):
            inputs = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
            acts = get_activations(model, inputs, hooks)
            for (rows, feats), sae, hook in zip(pairs, saes, hookpoints):
                r, f = _batch_pairs(sae, acts[hook], batch, pooling, special)
                rows.append(r)
                feats.append(f)
    return [_csr(np.concatenate(r), np.concatenate(f), len(ids), sae.d_sae) for (r, f), sae in zip(pairs, saes)]


def _csr(rows: np.ndarray, cols: np.ndarray, n: int, d_sae: int) -> sp.csr_matrix:
    flat = np.unique(rows.astype(np.int64) * d_sae + cols.astype(np.int64))
    data = np.ones(len(flat), dtype=bool)
    return sp.csr_matrix((data, (flat // d_sae, flat % d_sae)), shape=(n, d_sae), dtype=bool)


# ---------------------------------------------------------------- the density filter
def dense_ids(model: nn.Module, tokenizer, spec: SaeSpec, hookpoint: str, max_density: float) -> list[int]:
    """The features of ``spec`` that fire on more than ``max_density`` of ordinary text, densest first."""
    if max_density >= 1:
        return []
    if spec.densities is not None:
        densities = np.asarray(spec.densities, dtype=np.float64)
        if densities.shape != (spec.sae.d_sae,):
            raise QwenscopeError(f"densities have shape {densities.shape}, the SAE has d_sae={spec.sae.d_sae}")
        dense = {int(i): float(densities[i]) for i in np.flatnonzero(densities > max_density)}
    else:
        store = find_store(model, tokenizer, spec.sae, _model_name(model), spec.sae_id, hookpoint)
        if store is None:
            raise QwenscopeError(
                f"no feature store for the SAE {spec.sae_id} at {hookpoint} (its densities are "
                f"unknown): build one with `qwenscope stats --model {_model_name(model)} --sae "
                f"{spec.sae_id} --hookpoint {hookpoint}`, or pass --max-density 1 to keep every "
                "feature"
            )
        dense = dense_features(store, max_density)
    return sorted(dense, key=lambda i: (-dense[i], i))


def drop_columns(matrix: sp.csr_matrix, columns: Sequence[int]) -> sp.csr_matrix:
    """``matrix`` with ``columns`` emptied (same shape)."""
    if not len(columns):
        return matrix
    keep = np.ones(matrix.shape[1], dtype=bool)
    keep[list(columns)] = False
    out = sp.csr_matrix(matrix.multiply(keep[None, :]), dtype=bool)
    out.eliminate_zeros()
    return out


# ---------------------------------------------------------------- cache
def _model_name(model: nn.Module) -> str:
    return model_name(model)  # type: ignore[arg-type]


def _cache_path(key: str) -> Path:
    return cache_dir() / "benchmarks" / f"{key}.npz"


def _load_cached(key: str, ids: list[str]) -> sp.csr_matrix | None:
    path = _cache_path(key)
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        if json.loads(meta.read_text()).get("ids") != ids:
            return None
        return sp.csr_matrix(sp.load_npz(path), dtype=bool)
    except (OSError, ValueError) as e:  # a damaged file: recompute and overwrite it
        logger.warning("ignoring the damaged cached feature sets at %s (%s)", path, e)
        return None


def _save_cached(key: str, matrix: sp.csr_matrix, meta: dict[str, Any]) -> None:
    path = _cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            sp.save_npz(handle, matrix)

    atomic_write(path, write_npz)
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta) + "\n"))


# ---------------------------------------------------------------- the entry point
def feature_sets(
    model: nn.Module,
    tokenizer,
    benchmark: Benchmark,
    saes: Sequence[SaeSpec],
    cfg: FeatureSetConfig | None = None,
) -> list[FeatureSets]:
    """The feature sets of ``benchmark`` under each SAE in ``saes`` (one ``FeatureSets`` each, in order): cached
    matrices where they exist, one early-stopped pass for the rest, then the density filter (see the module doc)."""
    cfg = cfg or FeatureSetConfig()
    if not saes:
        raise QwenscopeError("no SAE given; pass at least one (an SAE and the hookpoint it reads)")
    hooks = [check_sae_fits(s.sae, model, s.hookpoint).name for s in saes]
    ids = tokenize(tokenizer, benchmark.texts)
    special = sorted(set(getattr(tokenizer, "all_special_ids", []) or [])) if cfg.pooling == "max" else []
    tokens_hash = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
    base = {
        "version": CACHE_VERSION,
        "model": model_fingerprint(model),
        "benchmark": content_hash(benchmark),
        "tokens": tokens_hash,
        "pooling": cfg.pooling,
        "special": special,
    }
    keys = [cache_key({**base, "sae": sae_fingerprint(s.sae), "hookpoint": h}) for s, h in zip(saes, hooks)]
    matrices = [_load_cached(k, benchmark.ids) if cfg.cache else None for k in keys]
    todo = [i for i, m in enumerate(matrices) if m is None]
    if todo:
        logger.info(
            "feature sets of %s (%d items, %d tokens) at %s",
            benchmark.name,
            len(ids),
            sum(map(len, ids)),
            ", ".join(hooks[i] for i in todo),
        )
        computed = compute_matrices(
            model,
            [hooks[i] for i in todo],
            [saes[i].sae for i in todo],
            ids,
            cfg.pooling,
            cfg.batch_size,
            cfg.max_batch_tokens,
            special,
        )
        for i, matrix in zip(todo, computed):
            matrices[i] = matrix
            if cfg.cache:
                _save_cached(
                    keys[i],
                    matrix,
                    {
                        "ids": benchmark.ids,
                        "benchmark": benchmark.name,
                        "hookpoint": hooks[i],
                        "sae": saes[i].sae_id,
                        "pooling": cfg.pooling,
                    },
                )
    out = []
    for spec, hook, key, matrix in zip(saes, hooks, keys, matrices):
        assert matrix is not None
        dropped = dense_ids(model, tokenizer, spec, hook, cfg.max_density)
        meta = {
            "model": _model_name(model),
            "sae": spec.sae_id,
            "pooling": cfg.pooling,
            "max_density": cfg.max_density,
            "dropped": dropped,
            "n_tokens": sum(map(len, ids)),
            "cache_key": key,
            "source": benchmark.source,
            "template": benchmark.template,
        }
        out.append(
            FeatureSets(benchmark.name, benchmark.ids, hook, spec.sae.d_sae, drop_columns(matrix, dropped), meta)
        )
    return out
