"""Per-item scores of several models on a benchmark: read them from files, or compute them.

    scores = load_scores(["scores.csv"], item_ids)                     # a CSV, wide or long
    scores = load_scores(["run_a/samples_gsm8k.jsonl", "run_b/samples_gsm8k.jsonl"], item_ids)  # lm-eval
    ll = answer_loglik(model, tokenizer, items, batch_size=8, sae=sae)  # the reference answers' log-likelihood

A ``ScoreMatrix`` holds one row per model and one column per item, in the benchmark's item order. It is the input of
performance redundancy (``measures.performance_redundancy``): p = each model's mean score on the benchmark, p_hat(S)
on a subset S.

**Files.** A CSV is *long* when it has the columns ``model``, ``id`` and ``score`` (one row per model and item), else
*wide*: an id column (``id``, else the first column) and one column of scores per model. An lm-eval-harness
``--log_samples`` file (``samples_<task>_<date>.jsonl``) holds one model's records ``{"doc_id", "doc", ...,
"<metric>": value}``; the model's name is the folder lm-eval wrote it in (``<output>/<model>/samples_*.jsonl``), or
the file's name for other ``.jsonl`` names. Its ``doc_id`` is the position of the document in the task, mapped to our
item ids by position: the benchmark must list its items in the order of the dataset lm-eval ran on (the bundled ones
keep their files' order). The metric is ``metric``
when given, else the record's first listed metric (``"metrics"``), else its first numeric field; when the file holds
several filters (gsm8k's ``strict-match`` and ``flexible-extract``) the records of ``filter`` are used, by default the
first one in the file. Every item must get exactly one score per model: ids that are missing or not in the
benchmark raise a one-line QwenscopeError that counts them and shows two of each.

**Answer log-likelihood.** ``answer_loglik`` scores every item by the mean per-token log-likelihood (nats, <= 0) of its
reference ``answer`` given its ``text`` under teacher forcing, as lm-eval's ``loglikelihood`` requests do: text and
answer are joined by ``delimiter`` (a space) unless the text ends or the answer starts with whitespace; trailing
whitespace of the text moves to the answer; the answer's tokens are those of the joined string past the tokens of the
text alone. The LM head runs only at the positions that predict an answer token (the trunk's hidden states, then the
head on those rows, a chunk of rows at a time), so gemma's 262k-token vocabulary costs answer tokens x vocab, not
sequence x vocab. Batches are right-padded (padding never reaches a real token under the causal mask) and sorted by
length; a batched score equals the item-by-item one to float noise.

With ``sae``, the SAE's reconstruction replaces the activations at its hookpoint (``splice``, no error term) at every
real position but the first: the first token is the model's attention sink, whose norm is tens of times the others',
and SAEs are trained without it (as in ``qwenscope.evaluate``). The model then behaves as a different checkpoint,
which is what the performance-redundancy experiment needs.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from qwenscope import QwenscopeError
from qwenscope.models import check_sae_fits, head_input, pad_ids, row_sums, splice, token_logprobs
from qwenscope.sae import Sae
from qwenscope.util import atomic_write

logger = logging.getLogger(__name__)

LONG_COLUMNS = ("model", "id", "score")
"""The columns that make a CSV long (one row per model and item)."""
_NOT_METRICS = {
    "doc_id",
    "doc",
    "target",
    "arguments",
    "resps",
    "filtered_resps",
    "filter",
    "metrics",
    "doc_hash",
    "prompt_hash",
    "target_hash",
    "task_name",
}


@dataclass
class ScoreMatrix:
    """Per-item scores of several models on one benchmark."""

    models: list[str]
    """Model (checkpoint) names, one per row."""
    item_ids: list[str]
    """The benchmark's item ids, one per column, in the benchmark's order."""
    scores: np.ndarray
    """(n_models, n_items) float64: 1/0 accuracy or any per-item score (higher = better)."""

    def __post_init__(self) -> None:
        self.models, self.item_ids = [str(m) for m in self.models], [str(i) for i in self.item_ids]
        self.scores = np.asarray(self.scores, dtype=np.float64)
        shape = (len(self.models), len(self.item_ids))
        if self.scores.shape != shape:
            raise QwenscopeError(f"scores have shape {self.scores.shape}, expected (models, items) = {shape}")
        for what, names in (("model", self.models), ("item id", self.item_ids)):
            if len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                raise QwenscopeError(f"{what} {dup!r} appears twice in a score matrix; give each one a unique name")
        if not np.isfinite(self.scores).all():
            m, i = np.argwhere(~np.isfinite(self.scores))[0]
            raise QwenscopeError(
                f"score of model {self.models[m]!r} on item {self.item_ids[i]!r} is "
                f"{self.scores[m, i]}; every score must be a finite number"
            )

    def select(self, item_ids: Sequence[str]) -> ScoreMatrix:
        """The columns of ``item_ids`` (a benchmark subset), in that order."""
        where = {item: j for j, item in enumerate(self.item_ids)}
        absent = [str(i) for i in item_ids if str(i) not in where]
        if absent:
            examples = ", ".join(repr(i) for i in absent[:2])
            raise QwenscopeError(
                f"{len(absent)} of the {len(item_ids)} items have no scores (e.g. {examples}); "
                "score the whole benchmark first"
            )
        cols = [where[str(i)] for i in item_ids]
        return ScoreMatrix(self.models, [self.item_ids[j] for j in cols], self.scores[:, cols])

    @classmethod
    def stack(cls, matrices: Sequence[ScoreMatrix]) -> ScoreMatrix:
        """The models of several matrices over the same items, one after the other."""
        if not matrices:
            raise QwenscopeError("no score matrices to stack")
        ids = matrices[0].item_ids
        for m in matrices[1:]:
            if m.item_ids != ids:
                raise QwenscopeError(
                    f"score matrices cover different items ({len(ids)} vs {len(m.item_ids)}, or "
                    "another order); score the same benchmark"
                )
        return cls([n for m in matrices for n in m.models], list(ids), np.concatenate([m.scores for m in matrices]))

    def to_csv(self, path: str | Path) -> Path:
        """Write a wide CSV (``id`` + one column per model, scores with full float precision), atomically."""
        frame = pd.DataFrame(self.scores.T, columns=self.models)
        frame.insert(0, "id", self.item_ids)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.17g"))


# ---------------------------------------------------------------- reading score files
def _check_ids(item_ids: list[str], found: list[str], source: str) -> None:
    """Raise the one-line mismatch error unless ``found`` holds exactly the ids ``item_ids``."""
    expected, seen = set(item_ids), set(found)
    missing = [i for i in item_ids if i not in seen]
    unknown = [i for i in found if i not in expected]
    if not missing and not unknown:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} items have no score (e.g. {', '.join(repr(i) for i in missing[:2])})")
    if unknown:
        parts.append(f"{len(unknown)} ids are not in the benchmark (e.g. {', '.join(repr(i) for i in unknown[:2])})")
    raise QwenscopeError(
        f"{source} does not match the benchmark's {len(expected)} items: {'; '.join(parts)}; "
        "score the same benchmark (all of its items, ids as the benchmark names them)"
    )


def _as_float(value: Any, where: str) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise QwenscopeError(f"{where}: score {value!r} is not a number") from None
    if not math.isfinite(out):
        raise QwenscopeError(f"{where}: score {value!r} is not a finite number")
    return out


def _ordered(rows: dict[str, float], item_ids: list[str], source: str) -> np.ndarray:
    _check_ids(item_ids, list(rows), source)
    return np.array([rows[i] for i in item_ids], dtype=np.float64)


def _read_csv(path: Path, item_ids: list[str]) -> ScoreMatrix:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise QwenscopeError(f"could not read score file {path} ({type(error).__name__}); pass a CSV") from None
    columns = [str(c).strip() for c in frame.columns]
    frame.columns = pd.Index(columns)
    if set(LONG_COLUMNS) <= set(columns):
        by_model: dict[str, dict[str, float]] = {}
        for line, (model, item, value) in enumerate(frame[list(LONG_COLUMNS)].itertuples(index=False), start=2):
            scores = by_model.setdefault(model, {})
            if item in scores:
                raise QwenscopeError(f"{path}:{line}: model {model!r} has two scores for item {item!r}")
            scores[item] = _as_float(value, f"{path}:{line}")
        models = list(by_model)
        rows = [_ordered(by_model[m], item_ids, f"score file {path} (model {m!r})") for m in models]
    else:
        id_col = "id" if "id" in columns else columns[0]
        models = [c for c in columns if c != id_col]
        if not models:
            raise QwenscopeError(
                f"score file {path} has no score columns; write 'id' and one column per model, or "
                f"the long form with columns {', '.join(LONG_COLUMNS)}"
            )
        ids = frame[id_col].tolist()
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise QwenscopeError(f"score file {path}: item {dup!r} appears twice in column {id_col!r}")
        rows = []
        for m in models:
            values = {i: _as_float(v, f"{path} (model {m!r}, item {i!r})") for i, v in zip(ids, frame[m].tolist())}
            rows.append(_ordered(values, item_ids, f"score file {path}"))
    if not models:
        raise QwenscopeError(f"score file {path} holds no scores")
    return ScoreMatrix(models, item_ids, np.stack(rows))


def _pick_metric(record: dict[str, Any], metric: str | None, path: Path) -> str:
    numeric = [k for k, v in record.items() if k not in _NOT_METRICS and isinstance(v, (bool, int, float))]
    if metric is not None:
        if metric not in record:
            raise QwenscopeError(f"{path} has no metric {metric!r}; its records have {', '.join(numeric) or 'none'}")
        return metric
    listed = [m for m in record.get("metrics") or [] if m in record]
    if listed:
        return str(listed[0])
    if not numeric:
        raise QwenscopeError(
            f"{path}: no numeric metric in its records (fields: {', '.join(record)}); is it an "
            "lm-eval --log_samples file?"
        )
    return numeric[0]


def _lm_eval_model_name(path: Path) -> str:
    return path.parent.name if path.name.startswith("samples_") and path.parent.name else path.stem


def _read_lm_eval(path: Path, item_ids: list[str], metric: str | None, filter_name: str | None) -> ScoreMatrix:
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise QwenscopeError(
            f"could not read {path} as JSONL ({type(error).__name__}); pass an lm-eval --log_samples file"
        ) from None
    if not records or not all(isinstance(r, dict) and "doc_id" in r for r in records):
        raise QwenscopeError(f"{path} is not an lm-eval --log_samples file: its records need a 'doc_id' field")
    filters = list(dict.fromkeys(r.get("filter") for r in records))
    chosen = filter_name if filter_name is not None else filters[0]
    if filter_name is not None and filter_name not in filters:
        raise QwenscopeError(f"{path} has no filter {filter_name!r}; it has {', '.join(map(str, filters))}")
    records = [r for r in records if r.get("filter") == chosen]
    name = _pick_metric(records[0], metric, path)
    values: dict[str, float] = {}
    unknown: list[str] = []
    for r in records:
        doc = r["doc_id"]
        if not isinstance(doc, int) or not 0 <= doc < len(item_ids):
            unknown.append(f"doc_id {doc}")
            continue
        if item_ids[doc] in values:
            raise QwenscopeError(f"{path}: doc_id {doc} appears twice (filter {chosen!r}); pass one run per file")
        if name not in r:
            raise QwenscopeError(f"{path}: doc_id {doc} has no metric {name!r}")
        values[item_ids[doc]] = _as_float(r[name], f"{path} (doc_id {doc}, {name})")
    _check_ids(item_ids, list(values) + unknown, f"score file {path}")
    logger.info("%s: %d scores (%s, filter %s)", path, len(values), name, chosen)
    return ScoreMatrix([_lm_eval_model_name(path)], item_ids, np.array([[values[i] for i in item_ids]]))


def load_scores(
    paths: str | Path | Sequence[str | Path],
    item_ids: Sequence[str],
    *,
    metric: str | None = None,
    filter_name: str | None = None,
) -> ScoreMatrix:
    """Read per-item scores (the module doc: CSV wide or long, lm-eval ``--log_samples`` JSONL, one model per file)
    for the benchmark whose items are ``item_ids``; models of several files are stacked in the order given."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    ids = [str(i) for i in item_ids]
    if not paths:
        raise QwenscopeError("no score files given; pass a CSV or lm-eval --log_samples JSONL files")
    if not ids:
        raise QwenscopeError("the benchmark has no items to score")
    matrices = []
    for p in map(Path, paths):
        if not p.is_file():
            raise QwenscopeError(f"score file {p} does not exist")
        if p.suffix.lower() in (".jsonl", ".json"):
            matrices.append(_read_lm_eval(p, ids, metric, filter_name))
        else:
            matrices.append(_read_csv(p, ids))
    return ScoreMatrix.stack(matrices)


# ---------------------------------------------------------------- answer log-likelihood
def _text_answer(item: Any, index: int) -> tuple[str, str]:
    if hasattr(item, "text") and hasattr(item, "answer"):
        text, answer = item.text, item.answer
        name = repr(getattr(item, "id", f"#{index}"))
    elif isinstance(item, tuple) and len(item) == 2:
        text, answer = item
        name = f"#{index}"
    else:
        raise QwenscopeError(
            f"item #{index} is a {type(item).__name__}; pass items with text and answer, or (text, answer) pairs"
        )
    if not isinstance(answer, str) or not answer.strip():
        raise QwenscopeError(f"item {name} has no reference answer; answer_loglik scores items with an answer")
    if not isinstance(text, str) or not text:
        raise QwenscopeError(f"item {name} has an empty text (prompt); give every item a prompt")
    return text, answer


def join_answer(text: str, answer: str, delimiter: str = " ") -> tuple[str, str]:
    """(context, continuation) as scored: ``delimiter`` between text and answer unless either side has whitespace
    there; trailing whitespace of the text moved onto the answer (a token boundary as the joined text has it)."""
    if not (text[-1:].isspace() or answer[:1].isspace()):
        answer = delimiter + answer
    context = text.rstrip()
    return context, text[len(context) :] + answer


def encode_items(tokenizer: Any, items: Sequence[Any], delimiter: str = " ") -> list[tuple[list[int], int]]:
    """Per item (token ids of text + answer, number of context tokens): the tokens past the context are scored."""
    pairs = [join_answer(*_text_answer(item, i), delimiter) for i, item in enumerate(items)]
    contexts = tokenizer([c for c, _ in pairs])["input_ids"]
    wholes = tokenizer([c + a for c, a in pairs])["input_ids"]
    out = []
    for i, (ctx, whole) in enumerate(zip(contexts, wholes)):
        n = 0  # tokens shared by the context alone and the joined text (all of the context but a merged boundary)
        while n < min(len(ctx), len(whole)) and ctx[n] == whole[n]:
            n += 1
        if n == 0 or n >= len(whole):
            what = "its text encodes to no tokens" if n == 0 else "its answer adds no tokens"
            raise QwenscopeError(f"item #{i} cannot be scored: {what}")
        out.append((list(whole), n))
    return out


def _replace_with_sae(sae: Sae, keep: Tensor):
    def edit(h: Tensor) -> Tensor:
        out = h.clone()
        where = keep.to(h.device)
        out[where] = sae(h[where].to(sae.device)).sae_out.to(h.device, h.dtype)
        return out

    return edit


@torch.no_grad()
def _batch_loglik(
    model: nn.Module, rows: list[tuple[list[int], int]], pad_id: int, sae: Sae | None, hook: Any, skip_first: bool
) -> Tensor:
    """Mean answer log-likelihood of each row (float64, on the CPU)."""
    device = next(model.parameters()).device
    ids, mask = pad_ids([row for row, _ in rows], pad_id)
    scored = torch.zeros_like(mask)  # the answer tokens
    for i, (row, n_ctx) in enumerate(rows):
        scored[i, n_ctx : len(row)] = True
    with ExitStack() as stack:
        if sae is not None:
            keep = mask.clone()
            if skip_first:
                keep[:, 0] = False  # the attention sink keeps its own activations
            stack.enter_context(splice(model, hook, _replace_with_sae(sae, keep.to(device))))
        final = head_input(model, ids, mask)
    logp = token_logprobs(model, final, ids, scored)
    return row_sums(logp, scored, torch.float64) / scored.sum(1).double()


def answer_loglik(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Any],
    batch_size: int = 8,
    *,
    sae: Sae | None = None,
    hookpoint: str | None = None,
    skip_first: bool = True,
    delimiter: str = " ",
) -> np.ndarray:
    """Mean per-token log-likelihood (nats) of each item's ``answer`` given its ``text`` (the module doc), float64,
    in the order of ``items`` (objects with ``text`` and ``answer``, e.g. ``data.Item``, or (text, answer) pairs).

    ``sae`` (at ``hookpoint``, default its own) replaces the activations by its reconstruction while scoring, at
    every real position but the first unless ``skip_first=False``."""
    if batch_size < 1:
        raise QwenscopeError(f"batch_size must be at least 1, got {batch_size}")
    if not items:
        raise QwenscopeError("no items to score; the benchmark is empty")
    hook = check_sae_fits(sae, model, hookpoint) if sae is not None else None
    encoded = encode_items(tokenizer, items, delimiter)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))  # similar lengths share a batch
    result = np.empty(len(encoded), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        result[chosen] = _batch_loglik(model, [encoded[i] for i in chosen], pad_id, sae, hook, skip_first).numpy()
        logger.debug("scored %d/%d items", min(start + batch_size, len(order)), len(order))
    return result
