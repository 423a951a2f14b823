"""A cheap causal probe of steering: how much does adding a feature make concept text more likely?

    effects = probe_effects(model, tokenizer, sae, [3904, 17], positive, negative, alphas=[0.25, 0.5], unit=unit)
    effects.gain_pos[0, 1]     # nats/token gained on the positive texts when #3904 is added at 0.5 x unit

Every text (positive and negative) follows one of a few neutral prefixes ("A short note:\\n..."); each feature is
added at each relative strength at every position (``steer``'s add mode, ``qwenscope.steer.strength`` units) and the
texts are teacher-forced: no generation. ``gain_pos`` is the change of the positive texts' mean log-likelihood per
token against the unsteered model, ``gain_neg`` the same for the negative texts. A feature that writes the concept
raises the first and lowers (or keeps) the second; one that merely breaks the model lowers both.

Cost: one forward per (feature, strength, text), batched, with the LM head only at the scored tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from qwenscope.errors import QwenscopeError
from qwenscope.models.batching import pad_ids, pad_rows
from qwenscope.models.hookpoints import check_sae_fits
from qwenscope.models.scoring import continuation_logprobs, head_inputs, row_sums, token_logprobs
from qwenscope.models.splice import splice
from qwenscope.sae.model import Sae

PREFIXES = ("A short note:", "Here is what I wrote today.", "Let me tell you something.", "From my notebook:")
"""Neutral openings the probe texts follow (none of them about anything)."""


@dataclass
class Effects:
    """What adding each feature at each strength does to the likelihood of the positive and negative texts."""

    features: list[int]
    alphas: list[float]
    gain_pos: Tensor
    """(n_features, n_alphas): change of the positive texts' mean log-likelihood per token (nats), steered - plain."""
    gain_neg: Tensor
    """(n_features, n_alphas): the same for the negative texts."""
    tokens: int
    """Tokens scored per (feature, strength)."""


@dataclass
class _Texts:
    ids: Tensor  # (T, S) right-padded
    mask: Tensor  # (T, S) attention mask
    scored: Tensor  # (T, S) True where the token is scored (the text, not the prefix)
    positive: Tensor  # (T,) True for positive texts


def _encode(tokenizer, positive: Sequence[str], negative: Sequence[str], max_tokens: int) -> _Texts:
    for what, texts in (("positive", positive), ("negative", negative)):
        if isinstance(texts, str) or not texts or any(not t.strip() for t in texts):
            raise QwenscopeError(f"the {what} texts must be a non-empty list of non-empty texts")
    rows, scored = [], []
    for i, text in enumerate([*positive, *negative]):
        head = tokenizer(PREFIXES[i % len(PREFIXES)])["input_ids"]
        body = tokenizer("\n" + text.strip(), add_special_tokens=False)["input_ids"][:max_tokens]
        rows.append(head + body)
        scored.append([False] * len(head) + [True] * len(body))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids, mask = pad_ids(rows, pad, mask_dtype=torch.long)
    score = pad_rows(scored, False, dtype=torch.bool)
    is_pos = torch.arange(len(rows)) < len(positive)
    return _Texts(ids, mask, score, is_pos)


def _repeat(value: Any, rows: int, copies: int) -> Any:
    """``value`` with every tensor of batch size ``rows`` (in tuples and dicts too) repeated ``copies`` times."""
    if isinstance(value, Tensor):
        return value.repeat(copies, *[1] * (value.ndim - 1)) if value.ndim >= 2 and value.shape[0] == rows else value
    if isinstance(value, (tuple, list)):
        return type(value)(_repeat(v, rows, copies) for v in value)
    if isinstance(value, dict):
        return {k: _repeat(v, rows, copies) for k, v in value.items()}
    return value


class _Tail:
    """The layers after a ``resid_post.L`` hookpoint, replayed from the inputs they got in one plain forward.

    Steering at ``resid_post.L`` leaves layers 0..L unchanged, so each steered batch runs only layers L+1.. and the
    final norm: about half the model for a middle layer. ``None`` from ``record`` when the hookpoint is not a
    decoder layer's output or the model has no final norm next to its layers; the probe then runs whole forwards.
    """

    def __init__(self, hidden: Tensor, final: Tensor, calls: list[tuple[nn.Module, tuple, dict]], norm: nn.Module):
        self.hidden, self.final, self.calls, self.norm = hidden, final, calls, norm

    @classmethod
    def record(cls, model: nn.Module, hook: str, ids: Tensor, mask: Tensor) -> _Tail | None:
        from qwenscope.models.capture import first_tensor
        from qwenscope.models.head import final_norm
        from qwenscope.models.hookpoints import decoder_layers, resolve_hookpoint

        resolved, norm = resolve_hookpoint(model, hook), final_norm(model)
        _, layers = decoder_layers(model)
        if norm is None or resolved.on_input or resolved.layer is None or resolved.module is not layers[resolved.layer]:
            return None
        calls: list[tuple[nn.Module, tuple, dict]] = []
        seen: dict[str, Tensor] = {}
        handles = [
            layer.register_forward_pre_hook(lambda m, a, k: calls.append((m, a, k)), with_kwargs=True)
            for layer in layers[resolved.layer + 1 :]
        ]
        handles.append(resolved.module.register_forward_hook(lambda m, a, out: seen.update(h=first_tensor(out))))
        handles.append(layers[-1].register_forward_hook(lambda m, a, out: seen.update(last=first_tensor(out))))
        try:
            with head_inputs(model) as final:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        replayable = len(calls) == len(layers) - resolved.layer - 1 and all(
            a and isinstance(a[0], Tensor) and "hidden_states" not in k for _, a, k in calls
        )  # each layer got the hidden states as its first positional argument
        if not replayable or not final or not torch.equal(norm(seen["last"]), final[0]):
            return None  # something runs between the last layer's norm and the head: replay whole forwards
        return cls(seen["h"], final[0], [(m, a[1:], k) for m, a, k in calls], norm)

    def run(self, hidden: Tensor, copies: int) -> Tensor:
        """The final-normed hidden states of ``copies`` stacked copies of the batch, from the hookpoint's ``hidden``."""
        from qwenscope.models.capture import first_tensor

        rows = len(self.hidden)
        for layer, args, kwargs in self.calls:
            hidden = first_tensor(layer(hidden, *_repeat(args, rows, copies), **_repeat(kwargs, rows, copies)))
        return self.norm(hidden)


def _shift(h: Tensor, delta: Tensor) -> Tensor:
    return h + delta.to(h.dtype)


@torch.no_grad()
def probe_effects(
    model: nn.Module,
    tokenizer,
    sae: Sae,
    features: Sequence[int],
    positive: Sequence[str],
    negative: Sequence[str],
    alphas: Sequence[float],
    *,
    unit: float,
    hookpoint: str | None = None,
    max_tokens: int = 24,
    batch_rows: int = 64,
    fast: bool = True,
) -> Effects:
    """Add each feature at each relative strength (``alpha * unit`` along its unit decoder direction) and measure the
    change in the log-likelihood of the positive and negative texts (see the module doc).

    ``fast``: after a ``resid_post`` hookpoint, replay only the later layers (``_Tail``); False runs whole forwards.
    """
    hook = check_sae_fits(sae, model, hookpoint).name
    features = [int(f) for f in features]
    if not features or not alphas:
        raise QwenscopeError("probe_effects needs at least one feature and one strength")
    if any(not 0 <= f < sae.d_sae for f in features):
        raise QwenscopeError(f"a feature id is outside this SAE (0..{sae.d_sae - 1}): {features}")
    texts = _encode(tokenizer, positive, negative, max_tokens)
    n_texts = len(texts.ids)
    device = next(model.parameters()).device
    ids, mask = texts.ids.to(device), texts.mask.to(device)
    tail = _Tail.record(model, hook, ids, mask) if fast else None
    if tail is None:
        base = continuation_logprobs(model, ids, mask, texts.scored)
    else:
        base = row_sums(token_logprobs(model, tail.final, ids, texts.scored), texts.scored)
    dirs = sae.W_dec.detach()[torch.tensor(features, device=sae.W_dec.device)].float()
    dirs = (dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)).to(device)  # (F, d) unit directions
    per_chunk = max(1, batch_rows // n_texts)
    gains = torch.zeros(len(features), len(alphas), n_texts)
    for a, alpha in enumerate(alphas):
        for start in range(0, len(features), per_chunk):
            chunk = dirs[start : start + per_chunk]  # (c, d)
            c = len(chunk)
            delta = (float(alpha) * unit * chunk).repeat_interleave(n_texts, dim=0)[:, None, :]  # (c * T, 1, d)
            rep_ids, rep_scored = texts.ids.repeat(c, 1), texts.scored.repeat(c, 1)
            if tail is not None:
                final = tail.run(tail.hidden.repeat(c, 1, 1) + delta.to(tail.hidden.dtype), c)
                logp = row_sums(token_logprobs(model, final, rep_ids, rep_scored), rep_scored)
            else:
                with splice(model, hook, partial(_shift, delta=delta)):
                    logp = continuation_logprobs(model, rep_ids, texts.mask.repeat(c, 1), rep_scored)
            gains[start : start + c, a] = logp.view(c, n_texts) - base
    counts = texts.scored[:, 1:].sum(1).float()  # scored tokens per text
    pos, neg = texts.positive, ~texts.positive
    return Effects(
        features,
        [float(a) for a in alphas],
        gains[..., pos].sum(-1) / counts[pos].sum(),
        gains[..., neg].sum(-1) / counts[neg].sum(),
        int(counts.sum()),
    )
