"""The plain evaluation that ``evaluate_saes`` must match to float noise: per batch, one full clean forward and, per
hookpoint, two more full forwards (SAE-spliced, zero-ablated), the LM head at every position, log-softmax over the
scored rows afterwards. This is the package's computation before the fast path (partial forwards, the head at the
scored positions only); the tests compare every metric of the two, and bench/perf/eval.py times both.

Batching, the summary and the reconstruction metrics are the package's own (``iter_batches``, ``_summary``,
``SaeMetrics``): what differs is only how the per-batch losses are computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from qwenscope import Sae, capture, splice
from qwenscope.evaluate.metrics import DENSE_THRESHOLD, SaeMetrics
from qwenscope.evaluate.model_eval import EV_DEFINITION, _finite, _replace, _summary, iter_batches


@dataclass
class _Loss:
    ce: float = 0.0
    kl: float = 0.0

    def add(self, logp, targets, clean_logp) -> None:
        self.ce += -logp.gather(-1, targets[:, None]).double().sum().item()
        if clean_logp is not None:
            kl = F.kl_div(logp, clean_logp, log_target=True, reduction="none").sum(-1)
            self.kl += kl.double().sum().item()


@dataclass
class _State:
    sae: Sae
    metrics: SaeMetrics
    spliced: _Loss = field(default_factory=_Loss)
    zero: _Loss = field(default_factory=_Loss)


def _logits(model, batch):
    device = next(model.parameters()).device
    return model(
        input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.long().to(device), use_cache=False
    ).logits


def _scored(logits, score):
    return F.log_softmax(logits[:, :-1][score[:, 1:].to(logits.device)].float(), dim=-1)  # t - 1 predicts t


@torch.no_grad()
def _batch(model, states: dict[str, _State], batch, clean: _Loss) -> None:
    with capture(model, list(states), stop=False, detach=True) as acts:
        logits = _logits(model, batch)
    clean_logp = _scored(logits, batch.score)
    targets = batch.input_ids[batch.score].to(clean_logp.device)
    clean.add(clean_logp, targets, None)
    for name, st in states.items():
        x = acts.pop(name)[batch.keep]
        if x.shape[0] == 0:
            st.spliced.add(clean_logp, targets, clean_logp)
            st.zero.add(clean_logp, targets, clean_logp)
            continue
        out = st.sae(x.to(st.sae.device))
        st.metrics.update(x, out.sae_out.to(x.device), out.top_acts, out.top_indices)
        for values, loss in ((out.sae_out, st.spliced), (None, st.zero)):
            with splice(model, name, partial(_replace, keep=batch.keep, values=values)):
                logits = _logits(model, batch)
            loss.add(_scored(logits, batch.score), targets, clean_logp)


def reference_evaluate_saes(
    model,
    saes: dict[str, Sae],
    tokens,
    *,
    keep_mask=None,
    batch_size: int = 8,
    n_tokens: int | None = None,
    skip_first: bool = True,
    dense_threshold: float = DENSE_THRESHOLD,
) -> dict[str, Any]:
    """``evaluate_saes(model, saes, tokens, ...)`` computed the plain way (``saes``: ``{hookpoint: sae}``)."""
    states = {name: _State(sae, SaeMetrics(sae.d_sae, dense_threshold)) for name, sae in saes.items()}
    clean = _Loss()
    n_rows = n_seen = n_scored = 0
    for batch in iter_batches(tokens, keep_mask, batch_size=batch_size, n_tokens=n_tokens, skip_first=skip_first):
        _batch(model, states, batch, clean)
        n_rows += batch.input_ids.shape[0]
        n_seen += int(batch.attention_mask.sum())
        n_scored += int(batch.score.sum())
    return {
        "n_sequences": n_rows,
        "n_tokens": n_seen,
        "skip_first": skip_first,
        "dense_threshold": dense_threshold,
        "ce_clean": _finite(clean.ce / n_scored) if n_scored else None,
        "explained_variance_definition": EV_DEFINITION,
        "hookpoints": {name: _summary(st, clean, n_scored) for name, st in states.items()},  # type: ignore[arg-type]
    }
