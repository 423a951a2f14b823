"""Log-likelihood of chosen tokens, with the LM head run only where a token is scored.

A *scored* mask (batch, seq) marks target tokens: True at position t scores ``input_ids[:, t]`` by the prediction
made at position t - 1, so position 0 is never scored. Two results:

- ``token_logprobs``: log p(token | tokens before it) at every scored position, float32, in row-major order, and
  ``continuation_logprobs`` its per-row sums. The model's own forward runs up to the lm_head (the final norm
  included) and stops; the head then runs on the scored rows only, ``chunk_rows`` at a time, with the model's
  final-logit soft-capping (Gemma), so a 262K vocabulary costs ``chunk_rows`` x vocab floats at once.
- ``next_token_logprobs``: the whole next-token distributions (n_scored, vocab), for losses that need them (KL);
  the model's forward runs the head itself at the scored positions (``logits_at``).

Both go through the model's own forward: no architecture is re-implemented.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qwenscope.models.head import output_head
from qwenscope.models.partial import logits_at

HEAD_ROWS = 512
"""Rows of hidden states sent through the LM head at once (512 x 262K float32 logits = 0.5 GB for Gemma 3)."""


class _Stop(Exception):
    pass


@contextmanager
def head_inputs(model: nn.Module) -> Iterator[list[Tensor]]:
    """While the block runs, a forward records the lm_head's input (the final-normed hidden states) into the
    yielded list and stops there: the head and everything after it are skipped."""
    head, _ = output_head(model)
    seen: list[Tensor] = []

    def grab(module: nn.Module, args: tuple) -> None:
        seen.append(args[0])
        raise _Stop

    handle = head.register_forward_pre_hook(grab)
    try:
        yield seen
    except _Stop:
        pass
    finally:
        handle.remove()


@torch.no_grad()
def head_input(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The lm_head's input (B, S, d) for a batch: one forward that stops before the head."""
    device = next(model.parameters()).device
    with head_inputs(model) as seen:
        model(input_ids=input_ids.to(device), attention_mask=attention_mask.long().to(device), use_cache=False)
    return seen[0]


@torch.no_grad()
def token_logprobs(
    model: nn.Module, final: Tensor, input_ids: Tensor, scored: Tensor, *, chunk_rows: int = HEAD_ROWS
) -> Tensor:
    """(n_scored,) float32: log p of each scored token (``scored`` (B, S), the module doc) from the lm_head's input
    ``final`` (B, S, d), row-major."""
    target = scored[:, 1:].to(final.device)
    hidden = final[:, :-1][target]  # (n_scored, d): position t - 1 predicts token t
    tokens = input_ids[:, 1:].to(final.device)[target]
    head, _ = output_head(model)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=final.device)
    for start in range(0, hidden.shape[0], chunk_rows):
        logits = head(hidden[start : start + chunk_rows]).float()
        if cap:
            logits = cap * torch.tanh(logits / cap)
        picked = tokens[start : start + chunk_rows, None]
        out[start : start + logits.shape[0]] = logits.log_softmax(-1).gather(-1, picked)[:, 0]
    return out


def row_sums(values: Tensor, scored: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B,) on the CPU: per row, the sum of ``values`` (n_scored,), given in the row-major order of ``scored``."""
    rows = scored[:, 1:].nonzero()[:, 0]
    return torch.zeros(scored.shape[0], dtype=dtype).index_add_(0, rows, values.cpu().to(dtype))


@torch.no_grad()
def continuation_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, scored: Tensor, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """(B,) on the CPU: per row, the summed log-probability of its scored tokens (the module doc)."""
    final = head_input(model, input_ids, attention_mask)
    return row_sums(token_logprobs(model, final, input_ids, scored), scored, dtype)


@torch.no_grad()
def next_token_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, scored: Tensor) -> Tensor:
    """(n_scored, vocab) float32: the log-probabilities of the next-token distributions that predict the scored
    tokens (the module doc), row-major; the model's forward runs its head at those positions only."""
    device = next(model.parameters()).device
    positions = F.pad(scored[:, 1:], (0, 1))  # (B, S): the prediction at t - 1 scores token t
    with logits_at(model, positions):
        out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.long().to(device), use_cache=False)
    return F.log_softmax(out.logits[0].float(), dim=-1)
