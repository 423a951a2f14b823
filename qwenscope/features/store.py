"""FeatureStore: the statistics, logit lens, top contexts and labels of an SAE's features, as Parquet files.

    store = get_or_build_store(model, tokenizer, sae, "smollm2-135m", "smollm2-135m", StatsConfig())
    info = store.feature(123)              # FeatureInfo: frequency, mean/max act, histogram, lens, contexts, label
    store.table()                          # pandas DataFrame, one row per feature
    store.search_label("paris")            # feature ids, best match first

A store is a folder:

| file                 | content                                                                              |
|----------------------|--------------------------------------------------------------------------------------|
| ``features.parquet`` | a row per feature: model, sae, hookpoint, feature, frequency, count, mean_act,       |
|                      | max_act, hist (counts per bin), promoted/suppressed tokens and values (logit lens),  |
|                      | label, label_score                                                                   |
| ``contexts.parquet`` | a row per top context: model, sae, feature, rank, max_act, tokens (decoded jointly: |
|                      | no character broken across tokens, ``features.text``), acts                          |
| ``meta.json``        | model, sae, hookpoint, n_tokens (scored), dataset, d_sae, hist_edges, the StatsConfig,|
|                      | sae_fingerprint (the weights it was built for), shipped (when decoded from a packed  |
|                      | file beside the SAE, ``features.packed``)                                            |

Writes are atomic: a new store is written to a temporary sibling folder and renamed into place, and
``set_labels`` replaces ``features.parquet`` atomically too, so a killed run never leaves a half store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from qwenscope.errors import QwenscopeError
from qwenscope.features.stats import FeatureStats, StatsConfig, compute_feature_stats_many
from qwenscope.features.text import TokenText, token_text
from qwenscope.sae.model import Sae
from qwenscope.util.atomic import atomic_folder, atomic_write

logger = logging.getLogger(__name__)

FEATURES_FILE, CONTEXTS_FILE, META_FILE = "features.parquet", "contexts.parquet", "meta.json"


@dataclass
class Context:
    """One top-activating context of a feature."""

    tokens: list[str]
    """Decoded tokens of the window around the max-activating token."""
    acts: list[float]
    """The feature's activation on each token (0 where not scored)."""
    max_act: float
    """The activation on the context's top token."""


@dataclass
class FeatureInfo:
    """Everything the store knows about one feature."""

    id: int
    frequency: float
    """Fraction of scored tokens on which the feature fired."""
    count: int
    """Scored tokens on which it fired."""
    mean_act: float
    """Mean activation when firing (0 if it never fired)."""
    max_act: float
    hist: list[float]
    """Firing counts per log-spaced bin (edges: ``FeatureStore.hist_edges``)."""
    promoted: list[tuple[str, float]]
    """Tokens its decoder direction promotes most (logit lens), with their logits."""
    suppressed: list[tuple[str, float]]
    """Tokens it suppresses most, most negative first."""
    label: str | None
    label_score: float | None
    contexts: list[Context]
    """Top-activating contexts, strongest first."""


class FeatureStore:
    """A feature store folder (see the module doc): build it with ``write`` or ``get_or_build_store``, read ``open``."""

    def __init__(self, folder: Path, meta: dict[str, Any], features: pd.DataFrame) -> None:
        self.folder, self.meta, self._features = folder, meta, features
        self._contexts: pa.Table | None = None
        self._context_starts: np.ndarray | None = None
        self._context_text: pd.Series | None = None

    # ---------------------------------------------------------------- building and opening
    @classmethod
    def write(cls, folder: str | Path, stats: FeatureStats, tokenizer, meta: Mapping[str, Any]) -> FeatureStore:
        """Write ``stats`` (token ids decoded with ``tokenizer``) and ``meta`` as a store at ``folder``, atomically."""
        folder = Path(folder)
        meta = {
            **meta,
            "hookpoint": meta.get("hookpoint") or stats.hookpoint,
            "n_tokens": stats.n_tokens,
            "d_sae": stats.d_sae,
            "hist_edges": [float(e) for e in stats.hist_edges],
        }
        keys = {"model": str(meta.get("model", "")), "sae": str(meta.get("sae", ""))}
        text = token_text(tokenizer)
        features = _features_table(stats, text, **keys, hookpoint=meta["hookpoint"])
        contexts = _contexts_table(stats, text, **keys)
        with atomic_folder(folder) as tmp:
            pq.write_table(features, tmp / FEATURES_FILE)
            pq.write_table(contexts, tmp / CONTEXTS_FILE, row_group_size=16384)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str) + "\n")
        logger.info("wrote the feature store of %d features to %s", stats.d_sae, folder)
        return cls.open(folder)

    @classmethod
    def open(cls, folder: str | Path) -> FeatureStore:
        folder = Path(folder)
        if not (folder / META_FILE).is_file() or not (folder / FEATURES_FILE).is_file():
            raise QwenscopeError(f"no feature store at {folder}; build one with: qwenscope stats --model M --sae S")
        meta = json.loads((folder / META_FILE).read_text())
        return cls(folder, meta, pd.read_parquet(folder / FEATURES_FILE))

    # ---------------------------------------------------------------- reading
    @property
    def d_sae(self) -> int:
        return int(self.meta["d_sae"])

    @property
    def hist_edges(self) -> list[float]:
        return list(self.meta["hist_edges"])

    def table(self) -> pd.DataFrame:
        """One row per feature (a copy of features.parquet)."""
        return self._features.copy()

    def frequencies(self) -> np.ndarray:
        """(d_sae,) float64: the share of the store's scored tokens each feature fired on (its density)."""
        return self._features["frequency"].to_numpy(dtype=np.float64)

    def typical_acts(self) -> Tensor:
        """(d_sae,) float32: each feature's mean activation when firing, 0 if it never fired (steering scales)."""
        return torch.tensor(self._features["mean_act"].to_numpy(dtype=np.float32))

    def labels(self) -> dict[int, str]:
        """``{feature: label}`` of the labelled features."""
        return {
            int(f): label
            for f, label in zip(self._features["feature"], self._features["label"])
            if isinstance(label, str)
        }

    def feature(self, i: int) -> FeatureInfo:
        if not 0 <= int(i) < self.d_sae:
            raise QwenscopeError(f"feature {i} is out of range; this store has ids 0..{self.d_sae - 1}")
        row = self._features.iloc[int(i)]
        label, score = row["label"], row["label_score"]
        return FeatureInfo(
            id=int(i),
            frequency=float(row["frequency"]),
            count=int(row["count"]),
            mean_act=float(row["mean_act"]),
            max_act=float(row["max_act"]),
            hist=[float(c) for c in row["hist"]],
            promoted=_pairs(row["promoted_tokens"], row["promoted_values"]),
            suppressed=_pairs(row["suppressed_tokens"], row["suppressed_values"]),
            label=None if _missing(label) else str(label),
            label_score=None if _missing(score) else float(score),
            contexts=self.contexts(int(i)),
        )

    def contexts(self, i: int) -> list[Context]:
        """The top contexts of feature ``i``, strongest first."""
        table, starts = self._context_index()
        part = table.slice(int(starts[i]), int(starts[i + 1] - starts[i])).to_pydict()
        return [
            Context(list(t), [float(a) for a in acts], float(m))
            for t, acts, m in zip(part["tokens"], part["acts"], part["max_act"])
        ]

    def _context_index(self) -> tuple[pa.Table, np.ndarray]:
        """contexts.parquet (sorted by feature, rank) and the first row of every feature (d_sae + 1,)."""
        if self._contexts is None or self._context_starts is None:
            self._contexts = pq.read_table(self.folder / CONTEXTS_FILE)
            ids = self._contexts.column("feature").to_numpy()
            self._context_starts = np.searchsorted(ids, np.arange(self.d_sae + 1))
        return self._contexts, self._context_starts

    # ---------------------------------------------------------------- labels and search
    def set_labels(self, labels: Mapping[int, tuple[str | None, float | None]]) -> None:
        """Set ``{feature: (label, score)}`` and rewrite features.parquet atomically."""
        frame = self._features.copy()
        for feature, (label, score) in labels.items():
            if not 0 <= int(feature) < self.d_sae:
                raise QwenscopeError(f"cannot label feature {feature}: this store has d_sae={self.d_sae}")
            frame.at[int(feature), "label"] = label
            frame.at[int(feature), "label_score"] = np.nan if score is None else float(score)
        atomic_write(self.folder / FEATURES_FILE, lambda tmp: frame.to_parquet(tmp, index=False))
        self._features = frame

    def search_label(self, query: str, top: int = 20) -> list[int]:
        """Features whose label, promoted tokens or top-context text match ``query`` (case-insensitive), best first.

        Score: 4 if the whole query is in the label, plus per query word 2 (in the label), 1 (in a promoted token),
        0.5 (in the context text), divided by the number of words; ties go to the higher label score, then frequency.
        """
        words = re.findall(r"\w+", query.lower()) or [query.lower().strip()]
        if not query.strip():
            raise QwenscopeError("the search query is empty; pass a word or phrase to look for in labels")
        frame = self._features
        labels = frame["label"].fillna("").astype(str).str.lower()
        promoted = frame["promoted_tokens"].map(lambda toks: " ".join(toks).lower())
        text = self._texts()
        score = 4.0 * labels.str.contains(query.lower().strip(), regex=False)
        for word in words:
            score += (
                2.0 * labels.str.contains(word, regex=False)
                + promoted.str.contains(word, regex=False)
                + 0.5 * text.str.contains(word, regex=False)
            ) / len(words)
        ranked = pd.DataFrame(
            {"score": score, "label_score": frame["label_score"].fillna(0.0), "frequency": frame["frequency"]}
        )
        ranked = ranked[ranked["score"] > 0].sort_values(["score", "label_score", "frequency"], ascending=False)
        return [int(i) for i in ranked.index[:top]]

    def _texts(self) -> pd.Series:
        """Per feature, the lower-cased text of all its top contexts (cached)."""
        if self._context_text is None:
            table, _ = self._context_index()
            joined = pd.Series([("".join(t)).lower() for t in table.column("tokens").to_pylist()])
            grouped = joined.groupby(table.column("feature").to_numpy()).agg(" ".join)
            self._context_text = grouped.reindex(range(self.d_sae), fill_value="")
        return self._context_text


# ---------------------------------------------------------------- tables
def _lists(values: np.ndarray, lengths: np.ndarray, kind: pa.DataType) -> pa.ListArray:
    """A list column from flat values and per-row lengths."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=kind))


def _features_table(stats: FeatureStats, text: TokenText, model: str, sae: str, hookpoint: str) -> pa.Table:
    d, bins = stats.d_sae, stats.hist.shape[1]
    lens = stats.lens
    top = lens.promoted_ids.shape[1] if lens is not None else 0
    columns: dict[str, Any] = {
        "model": pa.array([model] * d),
        "sae": pa.array([sae] * d),
        "hookpoint": pa.array([hookpoint] * d),
        "feature": pa.array(np.arange(d, dtype=np.int64)),
        "frequency": pa.array(stats.frequency.numpy()),
        "count": pa.array(stats.count.numpy()),
        "mean_act": pa.array(stats.mean_act.float().numpy()),
        "max_act": pa.array(stats.max_act.numpy()),
        "hist": _lists(stats.hist.reshape(-1).numpy(), np.full(d, bins), pa.int64()),
    }
    for side in ("promoted", "suppressed"):
        ids = getattr(lens, f"{side}_ids").numpy() if lens is not None else np.zeros((d, 0), np.int64)
        values = getattr(lens, f"{side}_values").numpy() if lens is not None else np.zeros((d, 0), np.float32)
        tokens = np.array([text.token(int(i)) for i in ids.reshape(-1)], dtype=object)  # one token alone each
        columns[f"{side}_tokens"] = _lists(tokens, np.full(d, top), pa.string())
        columns[f"{side}_values"] = _lists(values.reshape(-1), np.full(d, top), pa.float32())
    columns["label"] = pa.nulls(d, pa.string())
    columns["label_score"] = pa.nulls(d, pa.float64())
    return pa.table(columns)


def _contexts_table(stats: FeatureStats, text: TokenText, model: str, sae: str) -> pa.Table:
    feature, rank = (stats.top_acts > 0).nonzero(as_tuple=True)  # row-major: sorted by feature, then rank
    tokens = stats.top_tokens[feature, rank].numpy()  # (m, window)
    acts = stats.top_token_acts[feature, rank].numpy()
    inside = tokens >= 0
    pieces = text.windows(tokens)  # decoded jointly per window: no character broken across tokens
    m = len(feature)
    return pa.table(
        {
            "model": pa.array([model] * m, pa.string()),
            "sae": pa.array([sae] * m, pa.string()),
            "feature": pa.array(feature.numpy()),
            "rank": pa.array(rank.numpy()),
            "max_act": pa.array(stats.top_acts[feature, rank].numpy()),
            "tokens": _lists(np.array([p for row in pieces for p in row], dtype=object), inside.sum(1), pa.string()),
            "acts": _lists(acts[inside], inside.sum(1), pa.float32()),
        }
    )


def _pairs(tokens, values) -> list[tuple[str, float]]:
    return [(str(t), float(v)) for t, v in zip(tokens, values)]


def _missing(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


# ---------------------------------------------------------------- the cache
def _slug(name: str) -> str:
    """A folder name for ``name``: itself if safe and short, else a cleaned prefix plus a short hash."""
    clean = re.sub(r"[^\w.-]+", "_", name).strip("._") or "_"
    if clean == name and len(name) <= 80:
        return name
    return f"{clean[-60:]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def feature_store_dir(model_name: str, sae_id: str, hookpoint: str | None = None) -> Path:
    """Where the store of an SAE on a model is cached: ``cache_dir()/features/<model>/<sae>[/<hookpoint>]``."""
    from qwenscope.models.load import cache_dir

    folder = cache_dir() / "features" / _slug(model_name) / _slug(str(sae_id))
    return folder / _slug(hookpoint) if hookpoint else folder


_RESULT_FREE = ("n_tokens", "batch_size", "progress")
"""StatsConfig fields that do not change a store's content (beyond its size): a bigger cached store is reused."""


def _reusable(meta: Mapping[str, Any], wanted: StatsConfig, fingerprint: str) -> bool:
    """A store (or packed statistics) with this ``meta`` serves ``wanted``: the same SAE weights, the same settings,
    at least as many tokens."""
    built = meta.get("config")
    if not built or meta.get("sae_fingerprint") != fingerprint:
        return False
    want = dataclasses.asdict(wanted)
    same = all(built.get(k) == v for k, v in want.items() if k not in _RESULT_FREE)
    return same and int(meta.get("n_tokens", 0)) >= wanted.n_tokens


def get_or_build_store(
    model: nn.Module,
    tokenizer,
    sae: Sae,
    model_name: str,
    sae_id: str,
    cfg: StatsConfig | None = None,
    *,
    hookpoint: str | None = None,
    folder: str | Path | None = None,
    rebuild: bool = False,
) -> FeatureStore:
    """The cached store of ``sae`` on ``model`` (``feature_store_dir`` unless ``folder``), computed on first use.

    In order: the cached store, when built for these SAE weights (``sae_fingerprint``) with the same settings from at
    least ``cfg.n_tokens`` tokens; else the statistics shipped beside the SAE (``stats_file_for``: every embedded SAE
    has them) under the same conditions, decoded into the cache (seconds); else a new pass over ``cfg.dataset``.
    """
    folders = None if folder is None else [folder]
    return get_or_build_stores(
        model, tokenizer, [sae], model_name, [sae_id], cfg, hookpoints=[hookpoint], folders=folders, rebuild=rebuild
    )[0]


def get_or_build_stores(
    model: nn.Module,
    tokenizer,
    saes: Sequence[Sae],
    model_name: str,
    sae_ids: Sequence[str],
    cfg: StatsConfig | None = None,
    *,
    hookpoints: Sequence[str | None] | None = None,
    folders: Sequence[str | Path] | None = None,
    rebuild: bool = False,
    pack: bool = False,
) -> list[FeatureStore]:
    """``get_or_build_store`` for several SAEs; those that need a new pass share its forwards
    (``compute_feature_stats_many``). ``pack``: compute anew and also write each SAE's packed statistics where
    ``stats_file_for`` says (beside the SAE), so that it ships with them."""
    from qwenscope.features.packed import sae_fingerprint, save_stats, stats_file_for
    from qwenscope.models.hookpoints import check_sae_fits

    cfg = cfg or StatsConfig()
    hooks = [check_sae_fits(sae, model, h).name for sae, h in zip(saes, hookpoints or [None] * len(saes))]
    targets = [stats_file_for(sae_id, hook) for sae_id, hook in zip(sae_ids, hooks)]
    if pack and None in targets:
        bad = sae_ids[targets.index(None)]
        raise QwenscopeError(f"cannot pack statistics beside {bad}: pass a local SAE folder or an embedded model name")
    places = (
        [Path(f) for f in folders]
        if folders is not None
        else [feature_store_dir(model_name, sae_id, hook) for sae_id, hook in zip(sae_ids, hooks)]
    )
    metas = [
        {"model": model_name, "sae": sae_id, "hookpoint": hook, "sae_fingerprint": sae_fingerprint(sae)}
        for sae, sae_id, hook in zip(saes, sae_ids, hooks)
    ]
    stores = [
        None if rebuild or pack else _existing(folder, target, meta, tokenizer, cfg)
        for folder, target, meta in zip(places, targets, metas)
    ]
    todo = [i for i, store in enumerate(stores) if store is None]
    if todo:
        logger.info(
            "building the feature stores of %s on %s at %s from %d tokens of %s",
            ", ".join(dict.fromkeys(sae_ids)),
            model_name,
            ", ".join(hooks[i] for i in todo),
            cfg.n_tokens,
            cfg.dataset,
        )
        computed = compute_feature_stats_many(
            model, tokenizer, [saes[i] for i in todo], None, cfg, [hooks[i] for i in todo]
        )
        for i, stats in zip(todo, computed):
            meta, target = {**metas[i], **store_meta(cfg)}, targets[i]
            if pack and target is not None:
                logger.info(
                    "packed the statistics of %s at %s into %s", sae_ids[i], hooks[i], save_stats(target, stats, meta)
                )
            stores[i] = FeatureStore.write(places[i], stats, tokenizer, meta)
    return [s for s in stores if s is not None]


def find_store(
    model: nn.Module, tokenizer, sae: Sae, model_name: str, sae_id: str, hookpoint: str | None = None
) -> FeatureStore | None:
    """A store of these SAE weights without a new pass: the cached one (whatever its settings), else the statistics
    shipped beside the SAE, decoded into the cache; None when there is neither."""
    from qwenscope.features.packed import sae_fingerprint, stats_file_for
    from qwenscope.models.hookpoints import check_sae_fits

    hook = check_sae_fits(sae, model, hookpoint).name
    meta = {"model": model_name, "sae": sae_id, "hookpoint": hook, "sae_fingerprint": sae_fingerprint(sae)}
    return _existing(feature_store_dir(model_name, sae_id, hook), stats_file_for(sae_id, hook), meta, tokenizer, None)


def _existing(
    folder: Path, shipped: Path | None, meta: dict[str, Any], tokenizer, cfg: StatsConfig | None
) -> FeatureStore | None:
    """The store at ``folder``, else the one the ``shipped`` statistics give (decoded into ``folder``), when built
    for the SAE weights in ``meta`` with settings that serve ``cfg`` (None: any settings); else None."""
    from qwenscope.features.packed import load_stats, read_meta

    def serves(built: Mapping[str, Any]) -> bool:
        if cfg is None:
            return built.get("sae_fingerprint") == meta["sae_fingerprint"]
        return _reusable(built, cfg, meta["sae_fingerprint"])

    if (folder / META_FILE).is_file():
        store = FeatureStore.open(folder)
        if serves(store.meta):
            logger.info("using the feature store at %s (%d tokens)", folder, store.meta.get("n_tokens", 0))
            return store
        logger.info("the feature store at %s was built for other SAE weights or settings", folder)
    if shipped is None or not shipped.is_file():
        return None
    if not serves(read_meta(shipped)):
        logger.warning(
            "the feature statistics at %s belong to other SAE weights or settings: not used (to ship new "
            "ones: qwenscope stats --model M --sae S --pack)",
            shipped,
        )
        return None
    stats, shipped_meta = load_stats(shipped)
    logger.info("decoding the feature statistics shipped at %s (%d tokens) into %s", shipped, stats.n_tokens, folder)
    return FeatureStore.write(folder, stats, tokenizer, {**shipped_meta, **meta, "shipped": str(shipped)})


def store_meta(cfg: StatsConfig) -> dict[str, Any]:
    """The settings part of a store's meta: the dataset and the whole StatsConfig."""
    return {"dataset": cfg.dataset, "config": dataclasses.asdict(cfg)}
