"""Many texts through one or several SAEs: one early-stopped forward per length-bucketed batch, codes pooled per text.

    [l3, l15] = encode_texts(model, tokenizer, texts, [sae_l3, sae_l15])          # max-pooled, cached
    l3.pooled            # scipy.sparse.csr_matrix float32 (n_texts, d_sae): each feature's largest activation
    l3.fires             # csr bool: the feature is active at some kept token of the text
    [last] = encode_texts(model, tokenizer, texts, [sae], cfg=EncodeConfig(pooling="last", codes=True))
    last.codes[0].top_acts, last.codes[0].top_indices   # text 0's sparse code, (its kept tokens, k)
    for batch in read_batches(model, tokenizer, ids, ["resid_post.3"]):   # the layer below: raw activations
        x = batch.acts["resid_post.3"][batch.keep]                         # (kept tokens, d_in)

Texts are tokenized as the model sees them (the tokenizer's special tokens, e.g. BOS, added) and cut to
``max_tokens``. Batches group texts of similar length (longest first), right-padded with an attention mask, so no
real token attends to a pad and every row equals the text run alone up to float rounding (other shapes,
other reduction order: ~1e-6 relative in fp32). The forward reads every hookpoint at once and
stops after the deepest (``qwenscope.get_activations``).

Kept tokens (``keep_mask``): real tokens (no padding), without special tokens (``skip_special``; the set of
``qwenscope.data.tokens.special_token_ids``: BOS/EOS/PAD and added tokens flagged special, e.g. chat markers) and
without position 0 (``skip_first``: the attention sink, as in training). When position 0 is not skipped, a text
made of special tokens only keeps its first token, so that every text has a code.

Pooling over a text's kept tokens: ``max`` (each feature's largest activation, negatives clamped to 0), ``mean``
(each feature's mean activation, zeros included) or ``last`` (the code at the text's last token, whatever the keep
rule says of it). ``mean_acts`` adds the raw hookpoint activations averaged over the kept tokens.

Cache: each SAE's result is saved under ``cache_dir()/encode/<key>.npz`` (atomically); key = a hash of (model
weights, SAE fingerprint, hookpoint, the token ids, the special ids, the keep rule, pooling, what was asked). The
batch sizes are not in the key: they change nothing but float rounding. A damaged file is logged and recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from qwenscope.data.tokens import TokenBatch, special_token_ids, token_batches, token_mask
from qwenscope.errors import QwenscopeError
from qwenscope.models.capture import get_activations
from qwenscope.models.hookpoints import HookpointNames, check_sae_fits, resolve_hookpoints
from qwenscope.models.load import cache_dir, cache_key, model_fingerprint
from qwenscope.sae.model import EncoderOutput, Sae
from qwenscope.util.atomic import atomic_write

logger = logging.getLogger(__name__)

Pooling = Literal["last", "max", "mean"]
POOLINGS = ("last", "max", "mean")
MAX_TOKENS = 256
"""Texts are cut to this many tokens by default."""
CACHE_VERSION = 1
"""Bumped when the cached arrays' meaning changes, so old caches are not read."""


@dataclass
class EncodeConfig:
    """How ``encode_texts`` reads texts."""

    pooling: Pooling = "max"
    """max, mean or last (see the module doc)."""
    max_tokens: int | None = MAX_TOKENS
    """Cut each text to this many tokens (None: no cut)."""
    skip_first: bool = False
    """Leave out position 0 of every text (the attention sink)."""
    skip_special: bool = True
    """Leave out special tokens (BOS, EOS, chat markers)."""
    mean_acts: bool = False
    """Also average the raw hookpoint activations over each text's kept tokens."""
    codes: bool = False
    """Also return each text's sparse code at its kept tokens."""
    batch_size: int = 16
    """Texts per forward."""
    max_batch_tokens: int = 4096
    """At most this many (padded) tokens per forward: long texts go in smaller batches."""
    cache: bool = True
    """Read and write the cache (cache_dir()/encode)."""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise QwenscopeError(f"pooling is one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise QwenscopeError(f"--max-tokens must be at least 1, got {self.max_tokens}")
        if self.batch_size < 1 or self.max_batch_tokens < 1:
            raise QwenscopeError("--batch-size and the tokens per batch must be at least 1")


@dataclass
class EncodedTexts:
    """What one SAE reads in some texts (``encode_texts``), one row per text in the order given."""

    hookpoint: str
    """Where the SAE read, e.g. ``resid_post.3``."""
    pooled: sp.csr_matrix
    """float32 (n_texts, d_sae): the code pooled over each text's kept tokens (``EncodeConfig.pooling``)."""
    n_tokens: np.ndarray
    """int64 (n_texts,): each text's kept tokens."""
    mean_acts: np.ndarray | None = None
    """float32 (n_texts, d_in): raw hookpoint activations averaged over the kept tokens (``mean_acts=True``)."""
    codes: list[EncoderOutput] | None = None
    """Per text: its sparse code (top_acts, top_indices), each (kept tokens, k), on the CPU (``codes=True``)."""
    key: str = ""
    """The cache key of this result."""

    @property
    def fires(self) -> sp.csr_matrix:
        """bool (n_texts, d_sae): the pooled activation is positive (max: the feature fires at some kept token)."""
        out = sp.csr_matrix(self.pooled > 0, dtype=bool)
        out.eliminate_zeros()
        return out


class TextBatch(NamedTuple):
    """One forward's worth of texts (``read_batches``)."""

    rows: list[int]
    """The texts' positions in the list given."""
    tokens: TokenBatch
    """Their right-padded token ids, attention mask and lengths."""
    keep: Tensor
    """bool (batch, seq), on the CPU: the kept tokens (see the module doc)."""
    acts: dict[str, Tensor]
    """Hookpoint name -> activations (batch, seq, d_in), on the model's device."""


def tokenize_texts(tokenizer, texts: Sequence[str], max_tokens: int | None = MAX_TOKENS) -> list[list[int]]:
    """Token ids of each text as the model sees it (special tokens such as BOS included), cut to ``max_tokens``."""
    if max_tokens is not None and max_tokens < 1:
        raise QwenscopeError(f"--max-tokens must be at least 1, got {max_tokens}")
    if isinstance(texts, str) or not texts:
        raise QwenscopeError("no texts to read; pass a list of at least one")
    ids = [list(row) for row in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    for i, row in enumerate(ids):
        if not row:
            raise QwenscopeError(f"text {i} has no tokens; every text needs some")
    if max_tokens is None:
        return ids
    cut = sum(len(row) > max_tokens for row in ids)
    if cut:
        logger.info("%d of %d texts are longer than %d tokens and were cut", cut, len(ids), max_tokens)
    return [row[:max_tokens] for row in ids]


def keep_mask(batch: TokenBatch, tokenizer, *, skip_first: bool = False, skip_special: bool = True) -> Tensor:
    """bool (batch, seq): the kept tokens of a right-padded batch (see the module doc)."""
    keep = token_mask(
        batch.input_ids,
        tokenizer,
        first_position=skip_first,
        special_tokens=skip_special,
        attention_mask=batch.attention_mask,
    )
    if not skip_first:
        keep[~keep.any(1), 0] = True  # a text of special tokens only keeps its first token
    return keep


def read_batches(
    model: nn.Module,
    tokenizer,
    ids: Sequence[Sequence[int]],
    hookpoints: HookpointNames,
    *,
    skip_first: bool = False,
    skip_special: bool = True,
    batch_size: int = 16,
    max_batch_tokens: int = 4096,
    by_length: bool = True,
    progress: bool = False,
) -> Iterator[TextBatch]:
    """Activations of token-id lists at ``hookpoints``, one early-stopped forward per batch, with the keep mask.

    ``by_length=False`` keeps the texts' order (batches of ``batch_size`` consecutive texts) instead of grouping
    texts of similar length."""
    hooks = resolve_hookpoints(model, hookpoints)
    device = next(model.parameters()).device
    batches = token_batches(ids, batch_size, max_batch_tokens, by_length=by_length)
    for batch in tqdm(batches, desc="reading texts", unit="batch", disable=not progress):
        inputs = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
        acts = get_activations(model, inputs, hooks)
        keep = keep_mask(batch, tokenizer, skip_first=skip_first, skip_special=skip_special)
        yield TextBatch(batch.rows, batch, keep, acts)


def _pool(sae: Sae, acts: Tensor, batch: TextBatch, cfg: EncodeConfig) -> tuple[Tensor, EncoderOutput | None]:
    """(batch, d_sae) pooled code on the CPU, and the sparse code of the kept tokens (None unless needed)."""
    keep = batch.keep.to(acts.device)
    rows, cols = keep.nonzero(as_tuple=True)
    code = sae.encode_sparse(acts[rows, cols].to(sae.device)) if cfg.pooling != "last" or cfg.codes else None
    n = acts.shape[0]
    if cfg.pooling == "last":
        last = sae.encode_sparse(acts[torch.arange(n), batch.tokens.lengths.to(acts.device) - 1].to(sae.device))
        vals, idx, rows = last.top_acts, last.top_indices, torch.arange(n)
    else:
        assert code is not None
        vals, idx = code
    out = torch.zeros(n * sae.d_sae, dtype=torch.float32)
    flat = (rows.to(idx.device)[:, None] * sae.d_sae + idx).reshape(-1).cpu()
    vals = vals.reshape(-1).float().cpu()
    if cfg.pooling == "mean":
        out.index_add_(0, flat, vals)
        out = out.reshape(n, sae.d_sae) / batch.keep.sum(1, keepdim=True).clamp_min(1).float()
    else:
        out.scatter_reduce_(0, flat, vals.clamp_min(0), reduce="amax")
    return out.reshape(n, sae.d_sae), code


def _mean_acts(acts: Tensor, keep: Tensor) -> Tensor:
    """(batch, d_in) float32 on the CPU: the activations averaged over each row's kept tokens."""
    rows, cols = keep.to(acts.device).nonzero(as_tuple=True)
    total = torch.zeros(acts.shape[0], acts.shape[-1], dtype=torch.float32)
    total.index_add_(0, rows.cpu(), acts[rows, cols].float().cpu())
    return total / keep.sum(1, keepdim=True).clamp_min(1).float()


def _split_code(code: EncoderOutput, keep: Tensor) -> list[EncoderOutput]:
    """The sparse code of a batch's kept tokens, split per row (CPU)."""
    sizes = keep.sum(1).tolist()
    acts, idx = code.top_acts.cpu().split(sizes), code.top_indices.cpu().split(sizes)
    return [EncoderOutput(a, i) for a, i in zip(acts, idx)]


def encode_ids(
    model: nn.Module,
    tokenizer,
    ids: Sequence[Sequence[int]],
    saes: Sequence[Sae],
    hookpoints: Sequence[str],
    cfg: EncodeConfig,
    progress: bool = False,
) -> list[EncodedTexts]:
    """``encode_texts`` of token-id lists, without the cache: one early-stopped forward per batch for all SAEs."""
    n = len(ids)
    pooled: list[list[sp.csr_matrix]] = [[] for _ in saes]
    means = [np.zeros((n, sae.d_in), np.float32) for sae in saes]
    codes: list[list[EncoderOutput | None]] = [[None] * n for _ in saes]
    counts, order = np.zeros(n, np.int64), []
    batches = read_batches(
        model,
        tokenizer,
        ids,
        list(dict.fromkeys(hookpoints)),
        skip_first=cfg.skip_first,
        skip_special=cfg.skip_special,
        batch_size=cfg.batch_size,
        max_batch_tokens=cfg.max_batch_tokens,
        progress=progress,
    )
    with torch.no_grad():
        for batch in batches:
            order.extend(batch.rows)
            counts[batch.rows] = batch.keep.sum(1).numpy()
            for s, (sae, hook) in enumerate(zip(saes, hookpoints)):
                mx, code = _pool(sae, batch.acts[hook], batch, cfg)
                pooled[s].append(sp.csr_matrix(mx.numpy()))
                if cfg.mean_acts:
                    means[s][batch.rows] = _mean_acts(batch.acts[hook], batch.keep).numpy()
                if cfg.codes and code is not None:
                    for r, c in zip(batch.rows, _split_code(code, batch.keep)):
                        codes[s][r] = c
    inverse = np.argsort(np.asarray(order))  # batches run longest first; rows go back to the texts' order
    return [
        EncodedTexts(
            hook,
            sp.csr_matrix(sp.vstack(p, format="csr")[inverse], dtype=np.float32),
            counts.copy(),
            mean if cfg.mean_acts else None,
            [c for c in code if c is not None] if cfg.codes else None,
        )
        for p, mean, code, hook in zip(pooled, means, codes, hookpoints)
    ]


# ---------------------------------------------------------------- cache
def _cache_path(key: str) -> Path:
    return cache_dir() / "encode" / f"{key}.npz"


def _load_cached(key: str, hookpoint: str, n: int, cfg: EncodeConfig) -> EncodedTexts | None:
    path = _cache_path(key)
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            pooled = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
            out = EncodedTexts(hookpoint, pooled, z["n_tokens"], z["mean_acts"] if cfg.mean_acts else None, key=key)
            if cfg.codes:
                sizes = out.n_tokens.tolist()
                acts = torch.from_numpy(z["top_acts"]).split(sizes)
                idx = torch.from_numpy(z["top_indices"]).split(sizes)
                out.codes = [EncoderOutput(a, i) for a, i in zip(acts, idx)]
    except (OSError, ValueError, KeyError) as e:  # a damaged file: recompute and overwrite it
        logger.warning("ignoring the damaged cached encoding at %s (%s); recomputing it", path, e)
        return None
    return out if out.pooled.shape[0] == n else None


def _save_cached(key: str, enc: EncodedTexts) -> None:
    path = _cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = enc.pooled
    arrays = {"data": m.data, "indices": m.indices, "indptr": m.indptr, "shape": np.array(m.shape)}
    arrays["n_tokens"] = enc.n_tokens
    if enc.mean_acts is not None:
        arrays["mean_acts"] = enc.mean_acts
    if enc.codes is not None:
        arrays["top_acts"] = torch.cat([c.top_acts for c in enc.codes]).numpy()
        arrays["top_indices"] = torch.cat([c.top_indices for c in enc.codes]).numpy()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def _keys(model, tokenizer, saes, hooks, ids, cfg: EncodeConfig) -> list[str]:
    from qwenscope.features.packed import sae_fingerprint  # pyarrow: loaded when first needed

    special = special_token_ids(tokenizer) if cfg.skip_special else []
    tokens = hashlib.sha256(json.dumps([ids, special]).encode()).hexdigest()[:16]
    what = {k: v for k, v in asdict(cfg).items() if k not in ("batch_size", "max_batch_tokens", "cache")}
    base = {"version": CACHE_VERSION, "model": model_fingerprint(model), "tokens": tokens, **what}
    return [cache_key({**base, "sae": sae_fingerprint(s), "hookpoint": h}) for s, h in zip(saes, hooks)]


# ---------------------------------------------------------------- the entry point
def encode_texts(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    saes: Sequence[Sae],
    hookpoints: Sequence[str | None] | None = None,
    cfg: EncodeConfig | None = None,
    *,
    progress: bool = False,
) -> list[EncodedTexts]:
    """What each SAE reads in ``texts`` (one ``EncodedTexts`` per SAE, in order): cached results where they exist,
    one early-stopped pass for the rest (see the module doc). ``hookpoints``: where each SAE reads (default: the
    hookpoint it records)."""
    cfg = cfg or EncodeConfig()
    if not saes:
        raise QwenscopeError("no SAE given; pass at least one (an SAE and the hookpoint it reads)")
    hookpoints = list(hookpoints) if hookpoints is not None else [None] * len(saes)
    if len(hookpoints) != len(saes):
        raise QwenscopeError(f"{len(hookpoints)} hookpoints for {len(saes)} SAEs; give one per SAE")
    hooks = [check_sae_fits(sae, model, h).name for sae, h in zip(saes, hookpoints)]
    ids = tokenize_texts(tokenizer, texts, cfg.max_tokens)
    keys = _keys(model, tokenizer, saes, hooks, ids, cfg)
    out = [_load_cached(k, h, len(ids), cfg) if cfg.cache else None for k, h in zip(keys, hooks)]
    todo = [i for i, enc in enumerate(out) if enc is None]
    if todo:
        where = ", ".join(hooks[i] for i in todo)
        logger.info("reading %d texts (%d tokens) at %s", len(ids), sum(map(len, ids)), where)
        computed = encode_ids(
            model, tokenizer, ids, [saes[i] for i in todo], [hooks[i] for i in todo], cfg, progress=progress
        )
        for i, enc in zip(todo, computed):
            enc.key = keys[i]
            out[i] = enc
            if cfg.cache:
                _save_cached(keys[i], enc)
    return [enc for enc in out if enc is not None]
