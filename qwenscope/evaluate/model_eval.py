"""Model-level SAE evaluation: what happens to the language model when the SAE's reconstruction replaces the
activations at its hookpoint.

    results = evaluate_saes(model, {"resid_post.3": sae3, "resid_post.7": sae7}, chunks, batch_size=8)
    results["hookpoints"]["resid_post.3"]["ce_loss_recovered"]

Per batch: one clean forward yields the clean logits and the activations at every hookpoint at once (the
reconstruction metrics of ``metrics.py`` come from those); then, for each hookpoint separately, one forward with the
SAE reconstruction spliced in and one with the hookpoint zero-ablated (the baseline). The activations upstream of a
hookpoint are the same in all three forwards, so the reconstruction computed from the clean capture is the one
spliced in (no second encode), and the edited forwards do not rerun the decoder layers below the hookpoint: those
return the clean forward's recorded output (``models/partial.py``). Every forward applies the LM head only at the
scored positions. The results are those of three full forwards, to float noise (bench/perf/reference_eval.py is
that plain computation, the baseline bench/perf/eval.py times; the tests compare the two).

Baselines (e.g. random-weight SAEs of the same shapes) at the same hookpoints ride along in the same pass: each
costs its own spliced forward and its metrics on the clean capture, and shares the clean and zero-ablated forwards.

    results = evaluate_saes(model, saes, chunks, baselines={"random": {"resid_post.3": random_like(sae3)}})
    results["random"]["hookpoints"]["resid_post.3"]["ce_loss_recovered"]

Each named set comes out as ``results[set] = {"hookpoints": {hookpoint: ...}}``, each result with the same
fields as the main SAEs' (``ce_clean``, ``ce_zero`` and ``kl_div_zero`` are the main SAE's at that hookpoint); the
top-level fields (``n_tokens``, ``explained_variance_definition`` ...) hold for them too. A set may cover only some
of the hookpoints, and may not be named like a top-level field (``RESULT_KEYS``). Every figure, main and baseline,
equals that of separate ``evaluate_saes`` calls bit for bit: the same batches through the same computations.

| result              | meaning                                                                        |
|---------------------|--------------------------------------------------------------------------------|
| ``ce_clean``        | next-token cross-entropy of the unmodified model (nats per token)              |
| ``ce_sae``          | the same with the SAE reconstruction spliced in                                |
| ``ce_zero``         | the same with the hookpoint's activations replaced by zeros                    |
| ``ce_loss_recovered`` | (ce_zero - ce_sae) / (ce_zero - ce_clean): 1 = as good as clean, 0 = as bad as zeros |
| ``delta_lm_loss``   | ce_sae - ce_clean                                                              |
| ``kl_div``          | KL(clean || spliced) of the next-token distributions, mean per token            |
| ``kl_div_zero``     | KL(clean || zero-ablated), the baseline's                                      |

The loss ratios are ratios of means over all evaluated tokens, not means of per-batch ratios.

Which positions: padding (``attention_mask == 0``) is never replaced nor scored. With ``skip_first=True`` (the
default) the first real token of each sequence is left alone as well: the model turns it into an attention sink
whose residual norm is tens to hundreds of times the others', SAEs (Qwen-Scope's included) are trained without it,
and replacing it would measure a position the SAE never saw. It is then excluded from the SAE metrics, from the
replacement (SAE and zero-ablation alike) and from the loss and KL averages (its logits cannot change, so counting
it would only dilute ``delta_lm_loss`` and ``kl_div``). A ``keep_mask`` (True = replace and measure) narrows the
replaced positions further, e.g. to drop special tokens; the losses are still scored on every real position.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from qwenscope.errors import QwenscopeError
from qwenscope.evaluate.metrics import DENSE_THRESHOLD, SaeMetrics
from qwenscope.models.batching import pad_ids, pad_rows
from qwenscope.models.capture import capture
from qwenscope.models.hookpoints import Hook, check_sae_fits
from qwenscope.models.partial import record_outputs, shared_layer, skip_layers
from qwenscope.models.scoring import next_token_logprobs
from qwenscope.models.splice import splice
from qwenscope.sae.model import Sae

Tokens = Tensor | Iterable[Tensor]
"""Token ids: an (n, seq) tensor, or an iterable of (seq,) or (b, seq) LongTensors (rows may differ in length)."""
EV_DEFINITION = "1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the evaluated tokens (mean-centred)"
"""The explained-variance definition, written into every result beside the figures."""
RESULT_KEYS = (
    "n_sequences",
    "n_tokens",
    "skip_first",
    "dense_threshold",
    "ce_clean",
    "explained_variance_definition",
    "hookpoints",
)
"""The top-level keys of ``evaluate_saes``' result; a baseline set may not take one of these names."""


@dataclass
class Batch:
    """One padded batch of token rows."""

    input_ids: Tensor
    """(b, s) int64, right-padded with 0."""
    attention_mask: Tensor
    """(b, s) bool, False on padding."""
    keep: Tensor
    """(b, s) bool: positions whose activations are replaced and measured."""
    score: Tensor
    """(b, s) bool: tokens whose prediction (made at the position before) is scored (CE and KL)."""


# ---------------------------------------------------------------- batching
def _rows(tokens: Tokens) -> Iterator[Tensor]:
    """Each 1-D token row of ``tokens``."""
    items: Iterable[Tensor] = [tokens] if isinstance(tokens, Tensor) else tokens
    for t in items:
        if not isinstance(t, Tensor):
            raise QwenscopeError(f"token chunks must be tensors, got {type(t).__name__}; tokenize the text first")
        if t.ndim == 1:
            yield t
        elif t.ndim == 2:
            yield from t
        else:
            raise QwenscopeError(f"token chunks must have shape (seq,) or (batch, seq), got {tuple(t.shape)}")


def iter_batches(
    tokens: Tokens,
    keep_mask: Tokens | None = None,
    *,
    batch_size: int = 8,
    n_tokens: int | None = None,
    skip_first: bool = True,
) -> Iterator[Batch]:
    """Pad token rows into batches and work out the replaced and scored positions (see the module doc).

    Stops once ``n_tokens`` real tokens have been yielded (whole rows, so possibly a few more).
    """
    if batch_size < 1:
        raise QwenscopeError(f"batch_size must be at least 1, got {batch_size}")
    masks = _rows(keep_mask) if keep_mask is not None else None
    pending: list[tuple[Tensor, Tensor]] = []
    seen = 0
    for row in _rows(tokens):
        if row.dtype not in (torch.int64, torch.int32):
            raise QwenscopeError(f"expected token ids (integers), got a {row.dtype} tensor; tokenize first")
        mask = next(masks, None) if masks is not None else torch.ones_like(row, dtype=torch.bool)
        if mask is None or mask.shape != row.shape:
            got = "no mask" if mask is None else f"a mask of shape {tuple(mask.shape)}"
            raise QwenscopeError(
                f"keep_mask must match tokens row by row; got {got} for a row of shape {tuple(row.shape)}"
            )
        if row.numel() == 0:
            continue
        pending.append((row, mask.bool()))
        seen += row.numel()
        done = n_tokens is not None and seen >= n_tokens
        if len(pending) == batch_size or done:
            yield _pad(pending, skip_first)
            pending = []
        if done:
            return
    if pending:
        yield _pad(pending, skip_first)


def _pad(rows: list[tuple[Tensor, Tensor]], skip_first: bool) -> Batch:
    ids, attn = pad_ids([r for r, _ in rows])
    keep = pad_rows([m for _, m in rows], False, dtype=torch.bool)
    predicts = attn.clone()  # the prediction at t is scored where position t and token t + 1 are real
    if skip_first:
        predicts[:, 0] = False
        keep[:, 0] = False
    return Batch(ids, attn, keep & attn, F.pad(predicts[:, :-1] & attn[:, 1:], (1, 0)))


# ---------------------------------------------------------------- losses
@dataclass
class _Loss:
    """Running sums of per-token CE and KL in float64."""

    ce: float = 0.0
    kl: float = 0.0

    def add(self, logp: Tensor, targets: Tensor, clean: _Clean | None) -> None:
        """Add the CE (and KL to ``clean``) of ``logp`` (n_scored, vocab); with ``clean``, ``logp`` is overwritten."""
        self.ce += -logp.gather(-1, targets[:, None]).double().sum().item()
        if clean is not None:  # KL(clean || this) = sum_v p_clean (log p_clean - log p), as F.kl_div computes it,
            kl = logp.neg_().add_(clean.logp).mul_(clean.p).sum(-1)  # in place: no (n, vocab) temporaries
            self.kl += kl.double().sum().item()


@dataclass
class _Clean:
    """The clean forward's next-token distributions at the scored positions, (n_scored, vocab) float32."""

    logp: Tensor
    p: Tensor


@dataclass
class _SaeState:
    """One SAE at a hookpoint: its metrics and the losses with its reconstruction spliced in."""

    sae: Sae
    metrics: SaeMetrics
    zero: _Loss
    """The hookpoint's zero-ablated losses, one object shared by every SAE there."""
    spliced: _Loss = field(default_factory=_Loss)


@dataclass
class _HookState:
    hook: Hook
    shared: int | None
    """The last decoder layer the edited forwards share with the clean one (``partial.shared_layer``)."""
    zero: _Loss
    saes: dict[str | None, _SaeState]
    """The SAEs evaluated here: None = the main one, else the baseline set's name."""


def _check_layout(h: Tensor, keep: Tensor, name: str) -> None:
    if h.shape[:-1] != keep.shape:
        raise QwenscopeError(
            f"activations at {name} have shape {tuple(h.shape)}, expected (batch, seq, d) with batch, seq = "
            f"{tuple(keep.shape)}; evaluate SAEs at hookpoints laid out like the tokens (resid_post.L, ...)"
        )


def _replace(h: Tensor, keep: Tensor, values: Tensor | None) -> Tensor:
    """``h`` with the kept positions set to ``values`` ((n_kept, d); None for zeros)."""
    out = h.clone()
    out[keep.to(h.device)] = 0 if values is None else values.to(h.device, h.dtype)
    return out


# ---------------------------------------------------------------- evaluation
def _resolve_saes(model: nn.Module, saes: Mapping[str, Sae] | Sequence[Sae] | Sae) -> dict[str, tuple[Sae, Hook]]:
    if isinstance(saes, Sae):
        saes = [saes]
    if not isinstance(saes, Mapping):
        named: dict[str, Sae] = {}
        for i, sae in enumerate(saes):
            if sae.cfg.hookpoint is None:
                raise QwenscopeError(
                    f"SAE #{i} does not record its hookpoint; pass a dict {{hookpoint: sae}} such as "
                    "{'resid_post.3': sae}"
                )
            named[sae.cfg.hookpoint] = sae
        saes = named
    if not saes:
        raise QwenscopeError("no SAEs to evaluate; pass a dict {hookpoint: sae}")
    resolved: dict[str, tuple[Sae, Hook]] = {}
    for hookpoint, sae in saes.items():
        if not isinstance(sae, Sae):
            raise QwenscopeError(f"the SAE for {hookpoint} is a {type(sae).__name__}, not a qwenscope Sae; load_sae it")
        hook = check_sae_fits(sae, model, hookpoint)
        resolved[hook.name] = (sae, hook)
    return resolved


def _resolve_baselines(
    model: nn.Module, baselines: Mapping[str, Mapping[str, Sae]], hookpoints: Mapping[str, Any]
) -> dict[str, dict[str, Sae]]:
    """``{set name: {hook name: sae}}``, each SAE checked against the model and its hookpoint among ``hookpoints``."""
    resolved: dict[str, dict[str, Sae]] = {}
    for set_name, saes in baselines.items():
        if not isinstance(set_name, str) or set_name in RESULT_KEYS:
            raise QwenscopeError(
                f"baseline set name {set_name!r} is taken or not a string; the results' own keys are "
                f"{', '.join(RESULT_KEYS)}"
            )
        if not isinstance(saes, Mapping) or not saes:
            raise QwenscopeError(f"baseline set {set_name!r} must be a non-empty dict {{hookpoint: sae}}")
        resolved[set_name] = {}
        for hookpoint, sae in saes.items():
            if not isinstance(sae, Sae):
                raise QwenscopeError(
                    f"the {set_name!r} SAE for {hookpoint} is a {type(sae).__name__}, not a qwenscope Sae"
                )
            name = check_sae_fits(sae, model, hookpoint).name
            if name not in hookpoints:
                raise QwenscopeError(
                    f"baseline set {set_name!r} has an SAE at {hookpoint}, which is not among the evaluated "
                    f"hookpoints ({', '.join(hookpoints)}); a baseline shares the main SAE's forwards there"
                )
            resolved[set_name][name] = sae
    return resolved


@torch.no_grad()
def _evaluate_batch(model: nn.Module, states: dict[str, _HookState], batch: Batch, clean: _Loss) -> None:
    shared = {st.shared for st in states.values() if st.shared is not None}
    with (
        capture(model, [st.hook for st in states.values()], stop=False, detach=True) as acts,
        record_outputs(model, shared) as outputs,
    ):
        clean_logp = next_token_logprobs(model, batch.input_ids, batch.attention_mask, batch.score)
    ref = _Clean(clean_logp, clean_logp.exp())
    targets = batch.input_ids[batch.score].to(clean_logp.device)
    clean.add(clean_logp, targets, None)
    for name, st in states.items():
        if name not in acts:
            raise QwenscopeError(f"hookpoint {name} did not run during the forward; pick a module the model uses")
        h = acts.pop(name)
        _check_layout(h, batch.keep, name)
        x = h[batch.keep.to(h.device)]  # (n_kept, d)
        if x.shape[0] == 0:  # nothing replaced in this batch: every edited model is the clean one (KL 0)
            for run in st.saes.values():
                run.spliced.add(clean_logp, targets, None)
            st.zero.add(clean_logp, targets, None)
            continue
        edits: list[tuple[Tensor | None, _Loss]] = []
        for run in st.saes.values():
            out = run.sae(x.to(run.sae.device))
            run.metrics.update(x, out.sae_out.to(x.device), out.top_acts, out.top_indices)
            edits.append((out.sae_out, run.spliced))
            del out
        if targets.numel() == 0:  # nothing scored: the edited forwards would add nothing
            continue
        edits.append((None, st.zero))
        for values, loss in edits:
            with ExitStack() as stack:
                if st.shared is not None:
                    stack.enter_context(skip_layers(model, st.shared, outputs[st.shared]))
                stack.enter_context(splice(model, st.hook, partial(_replace, keep=batch.keep, values=values)))
                logp = next_token_logprobs(model, batch.input_ids, batch.attention_mask, batch.score)
            loss.add(logp, targets, ref)
            del logp


def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats become None."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _summary(st: _SaeState, clean: _Loss, n_scored: int) -> dict[str, Any]:
    res: dict[str, Any] = {"d_sae": st.sae.d_sae, **st.metrics.compute()}
    n = max(n_scored, 1)
    ce_clean, ce_sae, ce_zero = clean.ce / n, st.spliced.ce / n, st.zero.ce / n
    if n_scored == 0:
        ce_clean = ce_sae = ce_zero = math.nan
    denominator = ce_zero - ce_clean
    res.update(
        {
            "n_scored_tokens": n_scored,
            "ce_clean": ce_clean,
            "ce_sae": ce_sae,
            "ce_zero": ce_zero,
            "ce_loss_recovered": (ce_zero - ce_sae) / denominator if denominator != 0 else math.nan,
            "delta_lm_loss": ce_sae - ce_clean,
            "kl_div": st.spliced.kl / n if n_scored else math.nan,
            "kl_div_zero": st.zero.kl / n if n_scored else math.nan,
        }
    )
    return {k: _finite(v) for k, v in res.items()}


def evaluate_saes(
    model: nn.Module,
    saes: Mapping[str, Sae] | Sequence[Sae] | Sae,
    tokens: Tokens,
    *,
    keep_mask: Tokens | None = None,
    batch_size: int = 8,
    n_tokens: int | None = None,
    skip_first: bool = True,
    dense_threshold: float = DENSE_THRESHOLD,
    progress: bool = True,
    baselines: Mapping[str, Mapping[str, Sae]] | None = None,
) -> dict[str, Any]:
    """Evaluate SAEs spliced into ``model``, each at its hookpoint separately (see the module doc).

    Args:
        model: a Hugging Face causal LM (its weights are not changed; hooks are gone afterwards).
        saes: ``{hookpoint: sae}``, or SAEs (one or a list) that record their hookpoint.
        tokens: token ids: an (n, seq) tensor or an iterable of (seq,) / (b, seq) chunks; rows of different
            lengths are right-padded, and padding is neither replaced nor scored.
        keep_mask: optional bool masks shaped like ``tokens``: True = replace and measure this position.
        batch_size: rows per forward.
        n_tokens: stop after this many tokens (whole rows); default: all of ``tokens``.
        skip_first: leave each row's first token (the attention sink) alone; see the module doc.
        dense_threshold: a feature firing on more than this fraction of tokens is dense.
        progress: show a tqdm bar.
        baselines: ``{set name: {hookpoint: sae}}``, more SAEs at hookpoints of ``saes``, evaluated in the same
            pass (see the module doc).

    Returns a JSON-serialisable dict: ``n_sequences``, ``n_tokens`` (real tokens seen), ``skip_first``,
    ``dense_threshold``, ``ce_clean``, ``explained_variance_definition`` and ``hookpoints: {name: {metrics and
    losses}}``, then ``{set name: {"hookpoints": ...}}`` per baseline set; undefined values are None.
    """
    named = _resolve_saes(model, saes)
    extra = _resolve_baselines(model, baselines, named) if baselines is not None else {}
    if n_tokens is not None and n_tokens < 1:
        raise QwenscopeError(f"n_tokens must be at least 1, got {n_tokens}")
    states: dict[str, _HookState] = {}
    for name, (sae, hook) in named.items():
        here: dict[str | None, Sae] = {None: sae} | {set_name: s[name] for set_name, s in extra.items() if name in s}
        zero = _Loss()
        runs = {key: _SaeState(s, SaeMetrics(s.d_sae, dense_threshold), zero) for key, s in here.items()}
        states[name] = _HookState(hook, shared_layer(model, hook), zero, runs)
    clean = _Loss()
    n_rows = n_seen = n_scored = 0
    batches = iter_batches(tokens, keep_mask, batch_size=batch_size, n_tokens=n_tokens, skip_first=skip_first)
    with tqdm(total=n_tokens, unit="tok", desc="evaluating", disable=not progress) as bar:
        for batch in batches:
            _evaluate_batch(model, states, batch, clean)
            real = int(batch.attention_mask.sum())
            n_rows, n_seen = n_rows + batch.input_ids.shape[0], n_seen + real
            n_scored += int(batch.score.sum())
            bar.update(real)
    if n_seen == 0:
        raise QwenscopeError("no tokens to evaluate: the token data is empty; pass at least one non-empty chunk")
    results: dict[str, Any] = {
        "n_sequences": n_rows,
        "n_tokens": n_seen,
        "skip_first": skip_first,
        "dense_threshold": dense_threshold,
        "ce_clean": _finite(clean.ce / n_scored) if n_scored else None,
        "explained_variance_definition": EV_DEFINITION,
        "hookpoints": {name: _summary(st.saes[None], clean, n_scored) for name, st in states.items()},
    }
    for set_name in extra:
        results[set_name] = {
            "hookpoints": {
                name: _summary(st.saes[set_name], clean, n_scored) for name, st in states.items() if set_name in st.saes
            }
        }
    return results


def evaluate_sae(
    model: nn.Module, sae: Sae, tokens: Tokens, *, hookpoint: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Evaluate one SAE (at ``hookpoint``, default the one it records): its flat dict of metrics and losses,
    with ``hookpoint``, ``n_sequences`` and ``skip_first`` added. Keyword arguments as for ``evaluate_saes``."""
    if "baselines" in kwargs:
        raise QwenscopeError("evaluate_sae returns one SAE's metrics; pass baselines= to evaluate_saes instead")
    hp = hookpoint or sae.cfg.hookpoint
    if hp is None:
        raise QwenscopeError("the SAE does not record its hookpoint; pass hookpoint= (e.g. 'resid_post.12')")
    res = evaluate_saes(model, {hp: sae}, tokens, **kwargs)
    ((name, metrics),) = res["hookpoints"].items()
    return {"hookpoint": name, "n_sequences": res["n_sequences"], "skip_first": res["skip_first"], **metrics}
