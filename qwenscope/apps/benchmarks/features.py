"""Sample feature sets: which SAE features each benchmark item turns on, as a sparse boolean matrix.

    sets = feature_sets(model, tokenizer, load_benchmark("gsm8k"), [SaeSpec(sae, "smollm2-135m")])
    sets[0].matrix                  # scipy.sparse.csr_matrix, bool, (n_items, d_sae): row i = F(x_i)

Definitions (Qwen-Scope report, section 4):

- ``F(x) = {j : z_j(x) > 0}`` at the sample's last token (the default, ``pooling="last"``: the last non-padding
  token, whatever the batch's padding), or max-pooled over all its tokens (``pooling="max"``: j fires on some token;
  special tokens such as BOS are left out, they are the same in every sample).
- Footprint ``F(D)`` = the union of F(x) over the benchmark; ``|F(D)|`` its size (``measures.footprint``).

The reading is the core's ``qwenscope.features.encode_texts`` (pooling ``last`` or ``max``, no cut): one forward per
batch reads every requested hookpoint (several SAEs, one pass) and stops after the deepest one; items are batched by
length, right-padded with an attention mask, so a real token never attends to a pad; the matrix rows follow the
benchmark's order. Each SAE must fit the model (``check_sae_fits``: one clear line otherwise).

Density filter: features firing on more than ``max_density`` of ordinary text (their frequency in the SAE's feature
store, ``qwenscope.features.store.find_store``; every shipped SAE ships its 1M-token statistics) are dropped, i.e.
their columns are emptied (the ids stay feature ids). Default ``MAX_DENSITY`` (10%, ``qwenscope.features.density``):
an always-on feature fires on nearly every sample of every benchmark, so it says nothing about what a benchmark
tests and inflates every overlap and footprint alike. ``max_density=1`` disables the filter.

Cache: the unfiltered codes are cached by ``encode_texts`` (``cache_dir()/encode``; key: model weights, SAE, hookpoint,
the token ids, pooling). A second call loads them (the density filter is applied after loading, so changing
``max_density`` costs no forward).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from torch import nn

from qwenscope import QwenscopeError, Sae
from qwenscope.apps.benchmarks.data import Benchmark
from qwenscope.features import (
    MAX_DENSITY,
    EncodeConfig,
    check_max_density,
    dense_features,
    encode_texts,
    find_store,
    tokenize_texts,
)
from qwenscope.models import model_name

logger = logging.getLogger(__name__)

Pooling = Literal["last", "max"]


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


# ---------------------------------------------------------------- reading
def tokenize(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as the model sees it (with the tokenizer's special tokens, e.g. BOS), uncut."""
    return tokenize_texts(tokenizer, texts, max_tokens=None)


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


def _model_name(model: nn.Module) -> str:
    return model_name(model)  # type: ignore[arg-type]


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
    ecfg = EncodeConfig(
        pooling=cfg.pooling,
        max_tokens=None,
        batch_size=cfg.batch_size,
        max_batch_tokens=cfg.max_batch_tokens,
        cache=cfg.cache,
    )
    logger.info("feature sets of %s (%d items)", benchmark.name, len(benchmark.texts))
    encoded = encode_texts(model, tokenizer, benchmark.texts, [s.sae for s in saes], [s.hookpoint for s in saes], ecfg)
    n_tokens = sum(map(len, tokenize(tokenizer, benchmark.texts)))
    out = []
    for spec, enc in zip(saes, encoded):
        hook, matrix = enc.hookpoint, enc.fires
        dropped = dense_ids(model, tokenizer, spec, hook, cfg.max_density)
        meta = {
            "model": _model_name(model),
            "sae": spec.sae_id,
            "pooling": cfg.pooling,
            "max_density": cfg.max_density,
            "dropped": dropped,
            "n_tokens": n_tokens,
            "cache_key": enc.key,
            "source": benchmark.source,
            "template": benchmark.template,
        }
        out.append(
            FeatureSets(benchmark.name, benchmark.ids, hook, spec.sae.d_sae, drop_columns(matrix, dropped), meta)
        )
    return out
