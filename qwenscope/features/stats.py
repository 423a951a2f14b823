"""Feature statistics in one streaming pass, and the logit lens of every decoder direction.

    stats = compute_feature_stats(model, tokenizer, sae, "dataset-build:multi", StatsConfig(n_tokens=10**6))
    stats.frequency[123], stats.mean_act[123], stats.top_acts[123]      # scalars and a (top_n,) row

Per forward, ``batch_size`` packed chunks of ``seq_len`` tokens (``chunk_tokens``) run up to the hookpoint and stop
(``get_activations``), and the SAE encodes every position to its sparse code ``top_acts, top_indices`` (n, k).
Positions are scored where training keeps them: not position 0, not special tokens, not norm outliers
(``outlier_m`` x the median norm of their forward); the others get activation 0. A feature *fires* on a token when its
activation is > 0. ``n_tokens`` counts scored tokens.

Per feature: firing count and frequency, mean activation when firing, max activation, a histogram over fixed
log-spaced bins (bin i holds ``edges[i] <= a < edges[i+1]``; smaller values go to bin 0, larger to the last bin), and
the ``top_n`` largest activations with a window of ``window_before`` tokens before and ``window_after`` after the
token (inside its chunk; -1 pads past the chunk edges) and the feature's activation on each window token.

Memory is O(d_sae x top_n x window) for the top-N store plus one forward, whatever the token count. Every update is
vectorised torch (bincount, scatter_reduce, sort, topk); nothing loops over features or tokens. Merging one batch
into the top-N store: sort its (feature, activation) pairs by feature then activation, rank within each feature, keep
rank < top_n, scatter into a (features, top_n) buffer, concatenate with the running top and take topk again.

Logit lens: ``lm_head(final_norm(W_dec[f]))``, the logits of a residual stream that holds only feature f's decoder
direction. We call the model's own final norm module, so its weight is included whatever its form (RMSNorm ``w * x``,
Gemma's ``(1 + w) * x``, LayerNorm); the norm's division by the RMS scales each feature's logits by one positive
number, so it never changes which tokens a feature promotes. Gemma's final logit soft-capping is left out (monotone).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from qwenscope.data.sources import SPLITS, iter_texts
from qwenscope.data.tokens import chunk_tokens, norm_outlier_mask, token_mask
from qwenscope.errors import QwenscopeError
from qwenscope.models.capture import get_activations
from qwenscope.models.head import output_head, unembed
from qwenscope.models.hookpoints import Hook, check_sae_fits
from qwenscope.sae.model import Sae

logger = logging.getLogger(__name__)

_LENS_CHUNK = 2**24
"""Logit-lens elements computed at once (features per chunk = this // vocab): 64 MiB of float32 logits."""


@dataclass
class StatsConfig:
    """How feature statistics are gathered."""

    n_tokens: int = 100_000
    """Scored tokens to gather statistics over (whole forwards, so possibly a few more)."""
    seq_len: int = 256
    """Tokens per packed chunk (one model input row)."""
    batch_size: int = 8
    """Chunks per model forward."""
    top_n: int = 12
    """Top-activating contexts kept per feature."""
    window_before: int = 12
    """Tokens kept before the max-activating token of a context."""
    window_after: int = 4
    """Tokens kept after the max-activating token of a context."""
    hist_bins: int = 32
    """Log-spaced bins of the activation histogram."""
    hist_min: float = 1e-2
    """Lower edge of the first histogram bin (smaller activations count in the first bin)."""
    hist_max: float = 1e4
    """Upper edge of the last histogram bin (larger activations count in the last bin)."""
    lens_top: int = 10
    """Tokens per feature that the logit lens promotes (and suppresses); 0 skips the lens."""
    dataset: str = "mix:default"
    """Text: a named corpus (mix:default, dataset-build:multi, fortunes:en ...), a .txt/.jsonl file or folder,
    hf:NAME."""
    split: str = "train"
    """Held-out split of the text source: train, test or all."""
    seed: int = 0
    """Seeds the text order of mixed corpora."""
    outlier_m: float | None = 10.0
    """Leave out positions whose norm exceeds this many times the median norm of their forward (as training does)."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        for name in ("n_tokens", "seq_len", "batch_size", "top_n", "hist_bins"):
            if getattr(self, name) < 1:
                raise QwenscopeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise QwenscopeError(f"--seq-len must be at least 2 (position 0 is never scored), got {self.seq_len}")
        if min(self.window_before, self.window_after, self.lens_top) < 0:
            raise QwenscopeError("--window-before, --window-after and --lens-top cannot be negative")
        if not 0 < self.hist_min < self.hist_max:
            raise QwenscopeError(f"need 0 < --hist-min < --hist-max, got {self.hist_min} and {self.hist_max}")
        if self.split not in SPLITS:
            raise QwenscopeError(f"unknown split {self.split!r}; use one of {', '.join(SPLITS)}")
        if self.outlier_m is not None and self.outlier_m <= 0:
            raise QwenscopeError(f"--outlier-m must be positive, got {self.outlier_m}")

    @property
    def window(self) -> int:
        """Tokens per context window."""
        return self.window_before + 1 + self.window_after


class LogitLens(NamedTuple):
    """The tokens each decoder direction promotes and suppresses most (see the module doc)."""

    promoted_ids: Tensor
    """(d_sae, top) int64 token ids, largest logit first."""
    promoted_values: Tensor
    """(d_sae, top) float32 logits."""
    suppressed_ids: Tensor
    """(d_sae, top) int64 token ids, most negative logit first."""
    suppressed_values: Tensor
    """(d_sae, top) float32 logits."""


@dataclass
class FeatureStats:
    """Statistics of every feature of an SAE over a corpus (see the module doc)."""

    hookpoint: str
    """Where the SAE read the model."""
    n_tokens: int
    """Scored tokens."""
    count: Tensor
    """(d_sae,) int64: tokens on which each feature fired."""
    act_sum: Tensor
    """(d_sae,) float64: sum of each feature's activations."""
    max_act: Tensor
    """(d_sae,) float32: largest activation (0 for a feature that never fired)."""
    hist: Tensor
    """(d_sae, hist_bins) int64: firing activations per log-spaced bin; each row sums to ``count``."""
    hist_edges: Tensor
    """(hist_bins + 1,) float32 bin edges."""
    top_acts: Tensor
    """(d_sae, top_n) float32: largest activations, descending; 0 in unused slots."""
    top_tokens: Tensor
    """(d_sae, top_n, window) int64: token ids around each top token (at ``window_before``); -1 pads."""
    top_token_acts: Tensor
    """(d_sae, top_n, window) float32: the feature's activation on each window token (0 where not scored)."""
    window_before: int
    """Index of the top token inside a window."""
    lens: LogitLens | None = None
    """The logit lens of the decoder directions, when computed."""

    @property
    def d_sae(self) -> int:
        return len(self.count)

    @property
    def frequency(self) -> Tensor:
        """(d_sae,) float64: fraction of scored tokens on which each feature fired."""
        return self.count.double() / max(self.n_tokens, 1)

    @property
    def mean_act(self) -> Tensor:
        """(d_sae,) float64: mean activation when firing (0 for a feature that never fired)."""
        return self.act_sum / self.count.clamp(min=1)


# ---------------------------------------------------------------- the pass
def compute_feature_stats(
    model: nn.Module,
    tokenizer,
    sae: Sae,
    texts: str | Iterable[str] | None,
    cfg: StatsConfig | None = None,
    hookpoint: str | None = None,
) -> FeatureStats:
    """Statistics of every feature of ``sae`` over ``texts`` (a source name for ``iter_texts``, documents, or None
    for ``cfg.dataset``), in one streaming pass of ``cfg.n_tokens`` scored tokens."""
    return compute_feature_stats_many(model, tokenizer, [sae], texts, cfg, [hookpoint])[0]


def compute_feature_stats_many(
    model: nn.Module,
    tokenizer,
    saes: Sequence[Sae],
    texts: str | Iterable[str] | None,
    cfg: StatsConfig | None = None,
    hookpoints: Sequence[str | None] | None = None,
) -> list[FeatureStats]:
    """``compute_feature_stats`` for several SAEs (any hookpoints) in one pass: each forward runs once, up to the
    deepest hookpoint, and every SAE reads its own. Results equal one pass per SAE; ``hookpoints[i]`` overrides the
    hookpoint of ``saes[i]`` (None: the one it records)."""
    cfg = cfg or StatsConfig()
    if not saes:
        raise QwenscopeError("no SAE given; pass at least one")
    wanted = list(hookpoints) if hookpoints is not None else [None] * len(saes)
    if len(wanted) != len(saes):
        raise QwenscopeError(f"{len(saes)} SAEs but {len(wanted)} hookpoints; give one hookpoint (or None) per SAE")
    hooks = [check_sae_fits(sae, model, h) for sae, h in zip(saes, wanted)]  # resolved once for every forward
    if texts is None or isinstance(texts, str):
        texts = iter_texts(texts or cfg.dataset, split=cfg.split, seed=cfg.seed)
    running = [RunningStats(sae.d_sae, cfg, sae.device) for sae in saes]
    with tqdm(total=cfg.n_tokens, unit="tok", desc="feature stats", disable=not cfg.progress) as bar:
        for ids in batched(chunk_tokens(texts, tokenizer, cfg.seq_len), cfg.batch_size):
            todo = [i for i, run in enumerate(running) if run.n_tokens < cfg.n_tokens]  # an SAE stops at n_tokens
            codes = encode_chunks_many(
                model, tokenizer, [saes[i] for i in todo], [hooks[i] for i in todo], ids, cfg.outlier_m
            )
            before = min(run.n_tokens for run in running)
            for i, code in zip(todo, codes):
                running[i].update(*code)
            bar.update(min(run.n_tokens for run in running) - before)
            if all(run.n_tokens >= cfg.n_tokens for run in running):
                break
    scored = min(run.n_tokens for run in running)
    if scored == 0:
        raise QwenscopeError(f"no token was scored: the text is shorter than one chunk of {cfg.seq_len}; add text")
    if scored < cfg.n_tokens:
        logger.warning("the text ran out after %d of n_tokens=%d scored tokens", scored, cfg.n_tokens)
    results = [run.result(hook.name) for run, hook in zip(running, hooks)]
    if cfg.lens_top:
        for sae, stats in zip(saes, results):
            stats.lens = logit_lens(model, sae, cfg.lens_top, vocab_size=len(tokenizer))
    return results


def batched(chunks: Iterable[Tensor], size: int) -> Iterator[Tensor]:
    """(size, seq_len) stacks of chunks; the last may be smaller."""
    batch: list[Tensor] = []
    for chunk in chunks:
        batch.append(chunk)
        if len(batch) == size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


@torch.no_grad()
def encode_chunks(
    model: nn.Module, tokenizer, sae: Sae, hookpoint: str, ids: Tensor, outlier_m: float | None
) -> tuple[Tensor, Tensor, Tensor, int]:
    """One forward: (ids (B, S), top_acts (B*S, k) zeroed where not scored, top_indices (B*S, k), scored count)."""
    return encode_chunks_many(model, tokenizer, [sae], [hookpoint], ids, outlier_m)[0]


@torch.no_grad()
def encode_chunks_many(
    model: nn.Module,
    tokenizer,
    saes: Sequence[Sae],
    hookpoints: Sequence[str | Hook],
    ids: Tensor,
    outlier_m: float | None,
) -> list[tuple[Tensor, Tensor, Tensor, int]]:
    """One forward up to the deepest hookpoint; per SAE, ``encode_chunks``'s tuple for its hookpoint (a name, or a
    ``Hook`` resolved once for many forwards)."""
    names = [h.name if isinstance(h, Hook) else h for h in hookpoints]
    unique = list({name: h for name, h in zip(names, hookpoints)}.values())
    acts = get_activations(model, ids, unique)  # hookpoint name -> (B, S, d)
    scored = token_mask(ids, tokenizer)
    out = []
    for sae, name in zip(saes, names):
        x = acts[name]
        keep = scored.to(x.device)
        if outlier_m is not None:
            keep = norm_outlier_mask(x, outlier_m, valid=keep)
        code = sae.encode_sparse(x.reshape(-1, x.shape[-1]).to(sae.device))  # (B*S, d) -> (B*S, k)
        keep = keep.reshape(-1, 1).to(sae.device)
        out.append((ids.to(sae.device), code.top_acts.float() * keep, code.top_indices, int(keep.sum())))
    return out


class RunningStats:
    """The running statistics of ``compute_feature_stats``; ``update`` folds in one forward's sparse code."""

    def __init__(self, d_sae: int, cfg: StatsConfig, device: torch.device | str = "cpu") -> None:
        self.d_sae, self.cfg, self.n_tokens = d_sae, cfg, 0
        n, w = cfg.top_n, cfg.window
        self.count = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.max_act = torch.zeros(d_sae, device=device)
        self.hist = torch.zeros(d_sae * cfg.hist_bins, dtype=torch.long, device=device)
        self.edges = torch.logspace(
            math.log10(cfg.hist_min), math.log10(cfg.hist_max), cfg.hist_bins + 1, device=device
        )
        self.top_acts = torch.full((d_sae, n), -math.inf, device=device)
        self.top_tokens = torch.full((d_sae, n, w), -1, dtype=torch.int32, device=device)
        self.top_token_acts = torch.zeros((d_sae, n, w), device=device)
        self.offsets = torch.arange(-cfg.window_before, cfg.window_after + 1, device=device)

    def update(self, ids: Tensor, top_acts: Tensor, top_indices: Tensor, n_scored: int) -> int:
        """Fold in one forward: token ids (B, S) and the sparse code (B*S, k), 0 where not scored."""
        fire = top_acts > 0
        feature, act = top_indices[fire], top_acts[fire]  # (m,) firing pairs, row-major
        position = fire.nonzero()[:, 0]  # flat index b * S + s of each pair's token
        self._moments(feature, act)
        self._top(feature, act, position, ids, top_acts, top_indices)
        self.n_tokens += n_scored
        return n_scored

    def _moments(self, feature: Tensor, act: Tensor) -> None:
        nb = self.cfg.hist_bins
        self.count += torch.bincount(feature, minlength=self.d_sae)
        self.act_sum += torch.bincount(feature, weights=act.double(), minlength=self.d_sae)
        self.max_act.scatter_reduce_(0, feature, act, reduce="amax")
        bins = torch.bucketize(act, self.edges[1:-1], right=True)  # edges[i] <= a < edges[i+1], clamped
        self.hist += torch.bincount(feature * nb + bins, minlength=self.d_sae * nb)

    def _top(self, feature: Tensor, act: Tensor, position: Tensor, ids: Tensor, code_acts, code_ids) -> None:
        n = self.cfg.top_n
        better = act > self.top_acts[feature, -1]  # only these can enter the running top (most pairs, once warm)
        feature, act, position = feature[better], act[better], position[better]
        # one sort by feature, then activation descending: positive float32 bits order like their values
        order = (feature * 2**31 + (2**31 - 1 - act.view(torch.int32).long())).argsort()
        feature, act, position = feature[order], act[order], position[order]
        counts = torch.bincount(feature, minlength=self.d_sae)
        rank = torch.arange(len(feature), device=feature.device) - (counts.cumsum(0) - counts)[feature]
        kept = rank < n
        feature, act, position, rank = feature[kept], act[kept], position[kept], rank[kept]
        touched = counts > 0
        rows = touched.nonzero().squeeze(1)  # the features this batch touches, ascending
        row = touched.cumsum(0)[feature] - 1
        batch_acts = torch.full((len(rows), n), -math.inf, device=act.device)
        batch_acts[row, rank] = act
        slot = torch.full((len(rows), n), -1, dtype=torch.long, device=act.device)
        slot[row, rank] = torch.arange(len(feature), device=act.device)
        new_acts, pick = torch.cat([self.top_acts[rows], batch_acts], 1).topk(n, dim=1)  # (R, 2n) -> (R, n)
        from_batch = pick >= n
        slot = slot.gather(1, (pick - n).clamp(min=0))
        old = (rows[:, None], pick.clamp(max=n - 1))  # (R, n) index pairs into the running store
        tokens, token_acts = self.top_tokens[old], self.top_token_acts[old]  # (R, n, window)
        tokens[from_batch], token_acts[from_batch] = -1, 0.0
        real = from_batch & (slot >= 0)
        chosen = slot[real]
        tokens[real], token_acts[real] = self._windows(feature[chosen], position[chosen], ids, code_acts, code_ids)
        self.top_acts[rows], self.top_tokens[rows], self.top_token_acts[rows] = new_acts, tokens, token_acts

    def _windows(self, feature: Tensor, position: Tensor, ids: Tensor, code_acts, code_ids) -> tuple[Tensor, Tensor]:
        """Token ids (m, window) around each (feature, flat position) and the feature's activation on each."""
        seq = ids.shape[1]
        at = position[:, None] % seq + self.offsets  # (m, window) positions in the chunk
        inside = (at >= 0) & (at < seq)
        flat = position[:, None] - position[:, None] % seq + at.clamp(0, seq - 1)  # (m, window) flat positions
        tokens = torch.where(inside, ids.reshape(-1)[flat], -1).int()
        sorted_ids, perm = code_ids.sort(dim=1)  # keys (flat position * d_sae + feature) are then globally sorted
        keys = (torch.arange(len(code_ids), device=code_ids.device)[:, None] * self.d_sae + sorted_ids).reshape(-1)
        values = code_acts.gather(1, perm).reshape(-1)
        query = flat * self.d_sae + feature[:, None]  # (m, window)
        at_key = torch.searchsorted(keys, query).clamp(max=len(keys) - 1)
        token_acts = torch.where(inside & (keys[at_key] == query), values[at_key], 0.0)
        return tokens, token_acts

    def result(self, hookpoint: str) -> FeatureStats:
        return FeatureStats(
            hookpoint=hookpoint,
            n_tokens=self.n_tokens,
            count=self.count.cpu(),
            act_sum=self.act_sum.cpu(),
            max_act=self.max_act.cpu(),
            hist=self.hist.view(self.d_sae, -1).cpu(),
            hist_edges=self.edges.cpu(),
            top_acts=self.top_acts.clamp(min=0).cpu(),
            top_tokens=self.top_tokens.long().cpu(),
            top_token_acts=self.top_token_acts.cpu(),
            window_before=self.cfg.window_before,
        )


# ---------------------------------------------------------------- logit lens
@torch.no_grad()
def logit_lens(model: nn.Module, sae: Sae, top: int = 10, vocab_size: int | None = None) -> LogitLens:
    """The ``top`` tokens each decoder direction promotes and suppresses (see the module doc).

    ``vocab_size`` (e.g. ``len(tokenizer)``) leaves out the rows past the tokenizer's vocabulary that many models pad
    their lm_head with.
    """
    head, weight = output_head(model)
    vocab = min(weight.shape[0], vocab_size or weight.shape[0])
    top = min(top, vocab)
    step = max(1, _LENS_CHUNK // weight.shape[0])
    parts: list[tuple[Tensor, ...]] = []
    for start in tqdm(
        range(0, sae.d_sae, step), desc="logit lens", unit="chunk", leave=False, disable=sae.d_sae <= step
    ):
        logits = head(unembed(model, sae.W_dec[start : start + step]).to(weight.dtype))[:, :vocab].float()
        up, down = logits.topk(top, dim=1), logits.topk(top, dim=1, largest=False)
        parts.append((up.indices, up.values, down.indices, down.values))
    return LogitLens(*(torch.cat([p[i] for p in parts]).cpu() for i in range(4)))
