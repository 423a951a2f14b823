"""k-sparse probing: can k SAE latents, chosen on training texts, tell the two classes of a task apart?

    tasks = [load_task(name) for name in CPU_TASKS]                          # sae-probes' binary tasks
    result = sparse_probing(model, tokenizer, {"resid_post.15": sae}, tasks)  # JSON-serialisable dict

The tasks are the binary classification datasets that ship in the PyPI package ``sae-probes`` (data only, from
"Are Sparse Autoencoders Useful? A Case Study in Sparse Probing", Kantamneni et al. 2025; install it with
``pip install --no-deps sae-probes zstandard``). Each is a balanced sample: ``n_train`` and ``n_test`` texts, half of
each class, drawn without overlap by a seeded shuffle; the class whose label sorts last is the positive one.

Per task and hookpoint, each text becomes one vector at the hookpoint: the activation at its last token (``last``,
sae-probes' convention) or the mean over its tokens but the first (``mean``, SAEBench's). Then, for each k:

- ``sae``: the k latents with the largest absolute difference of class means on the training texts, and a logistic
  regression on them (standardised; scikit-learn, lbfgs, C = 1);
- ``resid_topk``: the same selection and probe on the k residual dimensions with the largest mean difference;
- ``random`` (with ``baseline``): the SAE of the same shape and k with random weights (``random_like``), as ``sae``;

and once, ``resid_full``: a logistic regression on the whole residual vector, C chosen by 3-fold cross-validation.
Test accuracy and AUROC for each; summaries are means over tasks with a 95% bootstrap interval over tasks.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from qwenscope.errors import QwenscopeError
from qwenscope.features.encode import read_batches, tokenize_texts
from qwenscope.models.hookpoints import check_sae_fits
from qwenscope.sae.model import Sae
from qwenscope.sae.random import random_like
from qwenscope.util.optional import require

logger = logging.getLogger(__name__)

CPU_TASKS = (
    "5_hist_fig_ismale",
    "6_hist_fig_isamerican",
    "21_headline_istrump",
    "92_glue_sst2",
    "106_hate_hate",
    "125_world_country_Italy",
    "126_art_type_book",
    "149_twt_emotion_happiness",
)
"""The CPU subset: eight binary tasks of different kinds (people, places, headlines, sentiment, hate speech, art,
emotion) with short texts, so that a layer's probing takes minutes on two cores."""
K_VALUES = (1, 2, 5, 20)
FULL_PROBE_CS = (1e-3, 1e-2, 1e-1, 1.0)
"""The inverse regularisation strengths the full-width residual probe chooses from."""
Pooling = Literal["last", "mean"]


@dataclass
class ProbingTask:
    """A balanced binary task: texts and 0/1 labels, split into training and test texts."""

    name: str
    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    classes: tuple[str, str]
    """The task's two labels as written in its file; the second is the positive class (1)."""


def data_dir() -> Path:
    """The folder of sae-probes' task files (``<n>_<name>.csv.zst``); one clear line when it is not installed."""
    spec = importlib.util.find_spec("sae_probes")  # not imported: its own dependencies are heavy and unused here
    if spec is None or not spec.submodule_search_locations:
        raise QwenscopeError(
            "k-sparse probing reads the tasks of the sae-probes package, which is not installed; install it with: "
            "pip install --no-deps sae-probes zstandard"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "cleaned_data"


def task_names() -> list[str]:
    """Every task file name of the installed sae-probes (binary or not), in their numeric order."""
    names = [p.name.removesuffix(".csv.zst") for p in data_dir().glob("*.csv.zst")]
    return sorted(names, key=lambda n: (int(n.split("_")[0]) if n.split("_")[0].isdigit() else 10**9, n))


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """Task names from ``cpu`` (``CPU_TASKS``), ``all`` (every binary task is checked when loaded) or names,
    comma-separated; a name may omit its number (``glue_sst2``)."""
    wanted = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    wanted = [w for w in wanted if w]
    known = task_names()
    if wanted == ["all"]:
        return known
    out: list[str] = []
    for w in CPU_TASKS if wanted == ["cpu"] else wanted:
        match = [n for n in known if n == w or n.split("_", 1)[-1] == w]
        if not match:
            raise QwenscopeError(
                f"probing task {w!r} is not in the installed sae-probes; choose from its {len(known)} tasks "
                f"(e.g. {', '.join(known[:3])}), or pass cpu or all"
            )
        out.append(match[0])
    return out


def _read_rows(path: Path) -> list[dict[str, str]]:
    zstandard = require("zstandard", "eval", "reading the sae-probes tasks")
    try:
        with path.open("rb") as handle:
            raw = zstandard.ZstdDecompressor().stream_reader(handle).read()
        return list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error, zstandard.ZstdError) as e:
        raise QwenscopeError(
            f"cannot read the probing task {path} ({type(e).__name__}: {e}); reinstall sae-probes"
        ) from e


def load_task(name: str, n_train: int = 512, n_test: int = 256, seed: int = 0) -> ProbingTask:
    """The task ``name`` as a balanced sample (the module doc); fewer texts where a class has too few."""
    if n_train < 2 or n_test < 2:
        raise QwenscopeError(f"n_train and n_test must be at least 2 (one text per class), got {n_train}, {n_test}")
    (full,) = resolve_tasks([name])
    rows = [r for r in _read_rows(data_dir() / f"{full}.csv.zst") if r.get("prompt", "").strip()]
    classes = sorted({r["target"] for r in rows})
    if len(classes) != 2:
        raise QwenscopeError(f"probing task {full} has {len(classes)} classes, not 2; choose a binary task")
    rng = random.Random(f"{full}/{seed}")
    by_class = [[r["prompt"] for r in rows if r["target"] == c] for c in classes]
    for texts in by_class:
        rng.shuffle(texts)
    per_train = min(n_train // 2, min(len(t) for t in by_class) // 2)
    per_test = min(n_test // 2, min(len(t) for t in by_class) - per_train)
    train = [(t, y) for y, texts in enumerate(by_class) for t in texts[:per_train]]
    test = [(t, y) for y, texts in enumerate(by_class) for t in texts[per_train : per_train + per_test]]
    rng.shuffle(train)
    rng.shuffle(test)
    return ProbingTask(
        full,
        [t for t, _ in train],
        np.array([y for _, y in train], np.int64),
        [t for t, _ in test],
        np.array([y for _, y in test], np.int64),
        (classes[0], classes[1]),
    )


# ---------------------------------------------------------------- activations
@torch.no_grad()
def pooled_activations(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    saes: Mapping[str, Sequence[Sae]],
    *,
    pooling: Pooling = "last",
    max_tokens: int = 128,
    batch_size: int = 32,
) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """Per hookpoint, the pooled activations (n, d_in) and each of its SAEs' pooled codes (n, d_sae), float32, in
    the order of ``texts`` (the module doc): one early-stopped forward per batch for every hookpoint."""
    if pooling not in ("last", "mean"):
        raise QwenscopeError(f"pooling must be last or mean, got {pooling!r}")
    ids = tokenize_texts(tokenizer, texts, max_tokens)
    n = len(ids)
    resid = {hp: np.zeros((n, group[0].d_in), np.float32) for hp, group in saes.items()}
    codes = {hp: [np.zeros((n, s.d_sae), np.float32) for s in group] for hp, group in saes.items()}
    for batch in read_batches(
        model, tokenizer, ids, list(saes), skip_first=True, skip_special=False, batch_size=batch_size
    ):
        rows = np.asarray(batch.rows)
        for hp, group in saes.items():
            h = batch.acts[hp]
            if pooling == "last":
                x = h[torch.arange(h.shape[0]), batch.tokens.lengths.to(h.device) - 1].float()
                resid[hp][rows] = x.cpu().numpy()
                for s, out in zip(group, codes[hp]):
                    out[rows] = s.encode(x.to(s.device, s.dtype)).float().cpu().numpy()
                continue
            keep = batch.keep.to(h.device)
            keep[~keep.any(1), 0] = True  # a one-token text is its first token
            count = keep.sum(1, keepdim=True).float()
            resid[hp][rows] = ((h.float() * keep[..., None]).sum(1) / count).cpu().numpy()
            r, c = keep.nonzero(as_tuple=True)
            for s, out in zip(group, codes[hp]):
                code = s.encode(h[r, c].to(s.device, s.dtype)).float()
                total = torch.zeros(h.shape[0], s.d_sae, device=code.device).index_add_(0, r.to(code.device), code)
                out[rows] = (total / count.to(code.device)).cpu().numpy()
    return resid, codes


# ---------------------------------------------------------------- probes
def top_mean_diff(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` columns of ``x`` with the largest absolute difference between the class means (ties: lower id)."""
    diff = np.abs(x[y == 1].mean(0) - x[y == 0].mean(0))
    return np.argsort(-diff, kind="stable")[:k]


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, cv: bool = False):
    """Test accuracy and AUROC of a standardised logistic regression (lbfgs, C = 1; with ``cv``, C from
    ``FULL_PROBE_CS`` by 3-fold stratified cross-validation on accuracy)."""
    require("sklearn", "eval", "k-sparse probing")
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model: Any = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    folds = min(3, int(np.bincount(y_train).min()))
    if cv and folds >= 2:
        split = StratifiedKFold(folds, shuffle=True, random_state=0)
        grid = {"logisticregression__C": list(FULL_PROBE_CS)}
        model = GridSearchCV(model, grid, cv=split, scoring="accuracy")
    model.fit(x_train, y_train)
    score = model.decision_function(x_test)
    acc = float(((score > 0).astype(np.int64) == y_test).mean())
    return {"accuracy": acc, "auroc": float(roc_auc_score(y_test, score))}


def _interval(values: Sequence[float], seed: int = 0, n: int = 1000) -> list[float]:
    """95% bootstrap interval of the mean of ``values`` (resampling the tasks)."""
    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return [float(v.mean()), float(v.mean())]
    means = np.random.default_rng(seed).choice(v, size=(n, len(v))).mean(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def _summary(per_task: dict[str, dict[str, Any]], method: str, k: int | None) -> dict[str, Any]:
    key = method if k is None else f"{method}@{k}"
    acc = [t[key]["accuracy"] for t in per_task.values()]
    auroc = [t[key]["auroc"] for t in per_task.values()]
    return {
        "accuracy": float(np.mean(acc)),
        "accuracy_ci95": _interval(acc),
        "auroc": float(np.mean(auroc)),
        "auroc_ci95": _interval(auroc),
    }


def sparse_probing(
    model: nn.Module,
    tokenizer,
    saes: Mapping[str, Sae],
    tasks: Sequence[ProbingTask],
    *,
    ks: Sequence[int] = K_VALUES,
    pooling: Pooling = "last",
    baseline: bool = True,
    seed: int = 0,
    max_tokens: int = 128,
    progress: bool = True,
) -> dict[str, Any]:
    """k-sparse probes on SAE latents and their baselines for every task and hookpoint (the module doc).

    Returns ``{"tasks", "pooling", "ks", "n_train", "n_test", "hookpoints": {hp: {"tasks": {task: {"sae@k",
    "random@k", "resid_topk@k", "resid_full": {"accuracy", "auroc"}}}, "summary": {same keys: means and
    intervals}}}}``."""
    if not tasks:
        raise QwenscopeError("no probing tasks; pass at least one (see qwenscope.evaluate.probing.CPU_TASKS)")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise QwenscopeError(f"k must be positive integers, got {list(ks)}")
    for hp, sae in saes.items():
        check_sae_fits(sae, model, hp)
    groups = {hp: [sae, random_like(sae, seed=seed)] if baseline else [sae] for hp, sae in saes.items()}
    out: dict[str, Any] = {hp: {"tasks": {}} for hp in saes}
    from tqdm.auto import tqdm

    for task in tqdm(tasks, desc="k-sparse probing", unit="task", disable=not progress):
        texts = task.train_texts + task.test_texts
        resid, codes = pooled_activations(model, tokenizer, texts, groups, pooling=pooling, max_tokens=max_tokens)
        tr = np.arange(len(task.train_texts))
        te = np.arange(len(task.train_texts), len(texts))
        y_tr, y_te = task.train_labels, task.test_labels
        for hp in saes:
            row: dict[str, Any] = {}
            named = {"sae": codes[hp][0], "resid_topk": resid[hp]}
            if baseline:
                named["random"] = codes[hp][1]
            for method, x in named.items():
                for k in ks:
                    cols = top_mean_diff(x[tr], y_tr, min(k, x.shape[1]))
                    row[f"{method}@{k}"] = fit_probe(x[tr][:, cols], y_tr, x[te][:, cols], y_te)
            row["resid_full"] = fit_probe(resid[hp][tr], y_tr, resid[hp][te], y_te, cv=True)
            out[hp]["tasks"][task.name] = row
        logger.info("probed %s (%d train / %d test texts)", task.name, len(tr), len(te))
    methods = ["sae", "resid_topk"] + (["random"] if baseline else [])
    for hp in saes:
        per_task = out[hp]["tasks"]
        summary = {f"{m}@{k}": _summary(per_task, m, k) for m in methods for k in ks}
        summary["resid_full"] = _summary(per_task, "resid_full", None)
        out[hp]["summary"] = summary
    return {
        "tasks": [t.name for t in tasks],
        "pooling": pooling,
        "ks": ks,
        "n_train": [len(t.train_texts) for t in tasks],
        "n_test": [len(t.test_texts) for t in tasks],
        "baseline": f"random_like: the same shape, k and b_dec, random weights (seed {seed})" if baseline else None,
        "hookpoints": out,
    }
