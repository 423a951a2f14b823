"""What each text turns on at each hookpoint, pooled over its tokens: the input of the feature rule and the probes.

    pooled = pool_texts(model, tokenizer, texts, [sae_l3, sae_l15])
    pooled[0].fires          # scipy.sparse.csr_matrix bool (n_texts, d_sae): feature j fires on some token of text i
    pooled[0].max_acts       # csr float32 (n_texts, d_sae): j's largest activation over text i's tokens
    pooled[0].mean_acts      # ndarray float32 (n_texts, d_in): the raw hookpoint activations, averaged over tokens

"Fires" is the report's definition (section 5): active at any token. Special tokens (BOS, pads) are left out: they
are the same in every text, so a feature firing there says nothing about the text. Texts are cut to ``max_tokens``
tokens (the cut is logged). One forward per batch reads every hookpoint and stops after the deepest one
(``qwenscope.get_activations``); texts are batched by length, right-padded with an attention mask, so no real token
attends to a pad and every row equals the text run alone (tested).

Cache: the result is saved under ``cache_dir()/classify/<key>.npz`` (atomically); key = a hash of (model weights, SAE
fingerprint, hookpoint, the token ids). A second call with the same texts costs no forward.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from qwenscope import QwenscopeError, Sae, check_sae_fits, get_activations
from qwenscope.atomic import atomic_write
from qwenscope.data.tokens import token_batches
from qwenscope.features.packed import sae_fingerprint
from qwenscope.models.hookpoints import resolve_hookpoints
from qwenscope.models.load import cache_dir, cache_key, model_fingerprint

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
MAX_TOKENS = 256
"""Texts are cut to this many tokens by default (the offensive fortunes: 99% are shorter)."""


@dataclass
class Pooled:
    """The pooled features of some texts at one hookpoint."""

    hookpoint: str
    max_acts: sp.csr_matrix
    """float32 (n_texts, d_sae): each feature's largest activation over the text's tokens (0: never fires)."""
    mean_acts: np.ndarray
    """float32 (n_texts, d_in): the raw activations at the hookpoint, averaged over the text's tokens."""
    n_tokens: np.ndarray
    """int (n_texts,): the tokens read per text (after the cut, special tokens left out)."""

    @property
    def fires(self) -> sp.csr_matrix:
        """bool (n_texts, d_sae): the feature is active at some token of the text."""
        out = sp.csr_matrix(self.max_acts > 0, dtype=bool)
        out.eliminate_zeros()
        return out

    def rows(self, rows: Sequence[int] | np.ndarray) -> Pooled:
        """The pooled features of some of the texts, in the order given."""
        idx = np.asarray(rows, dtype=np.int64)
        return Pooled(self.hookpoint, self.max_acts[idx], self.mean_acts[idx], self.n_tokens[idx])


def tokenize_texts(tokenizer, texts: Sequence[str], max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """Token ids of each text as the model sees it (special tokens such as BOS included), cut to ``max_tokens``."""
    if max_tokens < 1:
        raise QwenscopeError(f"--max-tokens must be at least 1, got {max_tokens}")
    if not texts:
        raise QwenscopeError("no texts to read; pass at least one")
    ids = [list(row) for row in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    cut = sum(len(row) > max_tokens for row in ids)
    if cut:
        logger.info("%d of %d texts are longer than %d tokens and were cut", cut, len(ids), max_tokens)
    for i, row in enumerate(ids):
        if not row:
            raise QwenscopeError(f"text {i} has no tokens; every text needs some")
    return [row[:max_tokens] for row in ids]


def _pool_batch(sae: Sae, acts: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """(batch, d_sae) max feature activations and (batch, d_in) mean activations over the kept tokens."""
    rows, cols = keep.nonzero(as_tuple=True)
    x = acts[rows, cols]  # (tokens, d_in)
    vals, idx = sae.encode_sparse(x.to(sae.device))  # (tokens, k)
    out = torch.zeros(acts.shape[0] * sae.d_sae, dtype=torch.float32)
    flat = (rows.to(idx.device)[:, None] * sae.d_sae + idx).reshape(-1).cpu()
    out.scatter_reduce_(0, flat, vals.reshape(-1).float().cpu().clamp_min(0), reduce="amax")
    total = torch.zeros(acts.shape[0], acts.shape[-1], dtype=torch.float32)
    total.index_add_(0, rows.cpu(), x.float().cpu())
    mean = total / keep.sum(1, keepdim=True).clamp_min(1).float().cpu()
    return out.reshape(acts.shape[0], sae.d_sae), mean


def compute_pooled(
    model: nn.Module,
    saes: Sequence[Sae],
    hookpoints: Sequence[str],
    ids: Sequence[Sequence[int]],
    special_ids: Sequence[int] = (),
    batch_size: int = 16,
    max_batch_tokens: int = 4096,
    progress: bool = False,
) -> list[Pooled]:
    """The pooled features of token-id lists under each (SAE, hookpoint), from one early-stopped forward per batch."""
    hooks = resolve_hookpoints(model, list(dict.fromkeys(hookpoints)))
    device = next(model.parameters()).device
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
    n = len(ids)
    maxes: list[list[sp.csr_matrix]] = [[] for _ in saes]
    means = [np.zeros((n, sae.d_in), np.float32) for sae in saes]
    counts = np.zeros(n, np.int64)
    order: list[int] = []
    batches = token_batches(ids, batch_size, max_batch_tokens)
    with torch.no_grad():
        for batch in tqdm(batches, desc="reading texts", unit="batch", disable=not progress):
            inputs = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
            acts = get_activations(model, inputs, hooks)
            keep = batch.attention_mask.bool() & ~torch.isin(batch.input_ids, special)
            keep[~keep.any(1), 0] = True  # a text of special tokens only keeps its first token
            order.extend(batch.rows)
            counts[batch.rows] = keep.sum(1).numpy()
            for s, (sae, hook) in enumerate(zip(saes, hookpoints)):
                mx, mean = _pool_batch(sae, acts[hook], keep.to(acts[hook].device))
                maxes[s].append(sp.csr_matrix(mx.numpy()))
                means[s][batch.rows] = mean.numpy()
    inverse = np.argsort(np.asarray(order))  # batches run longest first; rows go back to the texts' order
    return [
        Pooled(hook, sp.csr_matrix(sp.vstack(m, format="csr")[inverse], dtype=np.float32), mean, counts)
        for m, mean, hook in zip(maxes, means, hookpoints)
    ]


def _cache_path(key: str) -> Path:
    return cache_dir() / "classify" / f"{key}.npz"


def _load_cached(key: str, hookpoint: str, n: int) -> Pooled | None:
    path = _cache_path(key)
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            max_acts = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
            pooled = Pooled(hookpoint, max_acts, z["mean_acts"], z["n_tokens"])
    except (OSError, ValueError, KeyError) as e:  # a damaged file: recompute and overwrite it
        logger.warning("ignoring the damaged cached pooled features at %s (%s)", path, e)
        return None
    return pooled if pooled.max_acts.shape[0] == n else None


def _save_cached(key: str, pooled: Pooled) -> None:
    path = _cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = pooled.max_acts
    buffer = io.BytesIO()
    np.savez(
        buffer,
        data=m.data,
        indices=m.indices,
        indptr=m.indptr,
        shape=np.array(m.shape),
        mean_acts=pooled.mean_acts,
        n_tokens=pooled.n_tokens,
    )
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def pool_texts(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    saes: Sequence[Sae],
    hookpoints: Sequence[str | None] | None = None,
    *,
    max_tokens: int = MAX_TOKENS,
    batch_size: int = 16,
    cache: bool = True,
    progress: bool = True,
) -> list[Pooled]:
    """The pooled features of ``texts`` under each SAE (one ``Pooled`` each, in order): cached results where they
    exist, one early-stopped pass for the rest. ``hookpoints``: where each SAE reads (default: its own record)."""
    if not saes:
        raise QwenscopeError("no SAE given; pass at least one (an SAE and the hookpoint it reads)")
    hookpoints = list(hookpoints) if hookpoints is not None else [None] * len(saes)
    if len(hookpoints) != len(saes):
        raise QwenscopeError(f"{len(hookpoints)} hookpoints for {len(saes)} SAEs; give one per SAE")
    hooks = [check_sae_fits(sae, model, h).name for sae, h in zip(saes, hookpoints)]
    ids = tokenize_texts(tokenizer, texts, max_tokens)
    special = sorted(set(getattr(tokenizer, "all_special_ids", []) or []))
    tokens = hashlib.sha256(json.dumps([ids, special]).encode()).hexdigest()[:16]
    base = {"version": CACHE_VERSION, "model": model_fingerprint(model), "tokens": tokens}
    keys = [cache_key({**base, "sae": sae_fingerprint(s), "hookpoint": h}) for s, h in zip(saes, hooks)]
    out = [_load_cached(k, h, len(ids)) if cache else None for k, h in zip(keys, hooks)]
    todo = [i for i, p in enumerate(out) if p is None]
    if todo:
        logger.info(
            "reading %d texts (%d tokens) at %s", len(ids), sum(map(len, ids)), ", ".join(hooks[i] for i in todo)
        )
        computed = compute_pooled(
            model,
            [saes[i] for i in todo],
            [hooks[i] for i in todo],
            ids,
            special,
            batch_size=batch_size,
            progress=progress,
        )
        for i, pooled in zip(todo, computed):
            out[i] = pooled
            if cache:
                _save_cached(keys[i], pooled)
    return [p for p in out if p is not None]
