"""``qwenscope classify fit | predict | eval | compare``.

    qwenscope classify fit --data toxic.jsonl --model smollm2-135m --k 5 --out toxic.json
    qwenscope classify fit --data fortunes-off:es --model gemma3-270m --out es.json     # the discovery split
    qwenscope classify predict toxic.json --text "You are an idiot" --html why.html
    qwenscope classify eval toxic.json --data test.csv --json
    qwenscope classify compare --data fortunes-off:it --model gemma3-270m --html report.html

Data: a JSONL, JSON or CSV file with a text and a label column (label 1/0, true/false, toxic/clean; other names by
--text-column, --label-column, --positive), ``hf:NAME[:config][@split]``, or the offline real sets
``fortunes-off:es`` / ``fortunes-off:it`` (Debian's offensive fortunes against the ordinary ones). ``--part``: which
side of the deterministic discovery/test split to use (``auto``: fit on discovery and eval on test for the fortunes,
all of a file). ``compare`` always splits (or takes ``--test``).

``eval --json`` prints ``{precision, recall, f1, precision_ci, recall_ci, f1_ci, auroc, auroc_ci, n, n_pos, tp, fp,
fn, tn}``; ``compare --json`` prints ``{comparison: [rows], k_curve, k_chosen, hookpoint, rule, ...}``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from qwenscope import QwenscopeError

logger = logging.getLogger(__name__)

Action = Literal["fit", "predict", "eval", "compare"]
DEFAULT_MODEL = "smollm2-135m"


@dataclass
class ClassifyConfig:
    action: Action
    """fit: choose K features and save the classifier; predict: classify texts (and say which feature fired on which
    token); eval: precision, recall and F1 on labelled data; compare: the feature rule at K = 1..10 beside the
    baselines (probes, difference-in-means, TF-IDF) on one split."""
    classifier: str = ""
    """predict / eval: the classifier JSON that fit wrote."""
    data: str = ""
    """Labelled data: a JSONL/JSON/CSV file, hf:NAME[:config][@split], or fortunes-off:es / fortunes-off:it."""
    test: str = ""
    """compare: separate test data (same forms as --data); default: the test side of --data's split."""
    text: str = ""
    """predict: one text to classify (or --data for many)."""
    text_column: str = "text"
    """The column holding the text."""
    label_column: str = "label"
    """The column holding the label."""
    positive: str = ""
    """Label values that mean toxic, comma-separated, when the labels are not 1/0, true/false or toxic/clean."""
    part: Literal["auto", "all", "discovery", "test"] = "auto"
    """Which side of the deterministic discovery/test split to read: auto = discovery for fit and test for eval on
    the fortunes sets, all of a file."""
    model: str = ""
    """Model: an embedded name (smollm2-135m, gemma3-270m), a local HF folder or a hub id; default smollm2-135m
    (predict / eval: the classifier's own)."""
    sae: str = ""
    """SAE source: a folder, a file or a hub repo id; default the embedded model's shipped SAEs."""
    hookpoint: str = ""
    """Hookpoints to read, comma-separated; default every shipped SAE of an embedded model (or the SAE's own)."""
    k: int = 5
    """fit: how many features the rule keeps (the report: 1-10)."""
    choose: str = "top1-diff"
    """Which hookpoint: top1-diff (its best single feature has the largest Δ), combine (rank all hookpoints'
    features together), or one hookpoint's name."""
    max_tokens: int = 256
    """Texts are cut to this many tokens."""
    out: str = ""
    """fit: where to write the classifier JSON."""
    html: str = ""
    """predict: the texts with the tokens where a kept feature fired highlighted; compare: the report page."""
    seed: int = 0
    """Seed of the bootstrap intervals and the baselines."""
    json: bool = False
    """Print JSON instead of tables."""

    def __post_init__(self) -> None:
        if self.action in ("predict", "eval") and not self.classifier:
            raise QwenscopeError(
                f"classify {self.action} needs the classifier file: qwenscope classify {self.action} CLF.json ..."
            )
        if self.action in ("fit", "eval", "compare") and not self.data:
            raise QwenscopeError(
                f"classify {self.action} needs --data (a JSONL/CSV file with text and label columns, "
                "hf:NAME or fortunes-off:es)"
            )
        if self.action == "fit" and not self.out:
            raise QwenscopeError("classify fit needs --out CLF.json (where to save the classifier)")
        if self.action == "predict" and not (self.text or self.data):
            raise QwenscopeError('classify predict needs --text "..." or --data FILE')
        if not 1 <= self.k <= 100:
            raise QwenscopeError(f"--k is how many features the rule keeps, 1-10 as in the report; got {self.k}")


# ---------------------------------------------------------------- data
def load_data(cfg: ClassifyConfig, spec: str, default_part: str) -> Any:
    """The labelled set ``spec`` (one side of its split, see --part)."""
    from qwenscope.apps.classify.data import load_labelled, split

    positive = tuple(p.strip() for p in cfg.positive.split(",") if p.strip())
    data = load_labelled(spec, text_column=cfg.text_column, label_column=cfg.label_column, positive=positive)
    part = cfg.part if cfg.part != "auto" else (default_part if spec.startswith("fortunes-off:") else "all")
    if part == "all":
        return data
    discovery, test = split(data)
    return discovery if part == "discovery" else test


def load_parts(cfg: ClassifyConfig) -> tuple[Any, Any, str, dict[str, Any]]:
    """(model, tokenizer, sae id, {hookpoint: SAE}) from --model, --sae, --hookpoint (default: every hookpoint of
    an embedded model's shipped SAEs)."""
    from qwenscope.models import load_model_and_saes

    parts = load_model_and_saes(cfg.model or DEFAULT_MODEL, cfg.sae, cfg.hookpoint, no_hookpoints="shipped")
    return parts.model, parts.tokenizer, parts.sae_id, parts.saes


# ---------------------------------------------------------------- actions
def run_fit(cfg: ClassifyConfig) -> dict[str, Any]:
    from qwenscope.apps.classify.classifier import fit
    from qwenscope.apps.classify.data import check_binary

    data = load_data(cfg, cfg.data, "discovery")
    check_binary(data, cfg.data)  # before the model loads
    model, tokenizer, sae_id, saes = load_parts(cfg)
    clf, _ = fit(
        model,
        tokenizer,
        cfg.model or DEFAULT_MODEL,
        sae_id,
        saes,
        data.texts,
        data.labels,
        k=cfg.k,
        choose=cfg.choose,
        max_tokens=cfg.max_tokens,
        meta={"data": cfg.data, "part": cfg.part},
    )
    clf.save(cfg.out)
    return clf.as_dict()


def run_predict(cfg: ClassifyConfig) -> list[dict[str, Any]]:
    from qwenscope.apps.classify.classifier import Classifier
    from qwenscope.apps.classify.explain import explain, write_html

    clf = Classifier.load(cfg.classifier)
    texts = [cfg.text] if cfg.text else load_data(cfg, cfg.data, "test").texts
    model, tokenizer, saes = clf.load_parts(cfg.model or None, cfg.sae or None)
    records = explain(clf, model, tokenizer, saes, texts)
    if cfg.html:
        write_html(records, cfg.html, [vars(f) for f in clf.rule.features])
        logger.info("wrote %s", cfg.html)
    return records


def run_eval(cfg: ClassifyConfig) -> dict[str, Any]:
    from qwenscope.apps.classify.classifier import Classifier
    from qwenscope.apps.classify.data import check_binary
    from qwenscope.apps.classify.metrics import classification_scores

    clf = Classifier.load(cfg.classifier)
    data = load_data(cfg, cfg.data, "test")
    check_binary(data, cfg.data)  # before the model loads
    model, tokenizer, saes = clf.load_parts(cfg.model or None, cfg.sae or None)
    preds, scores = clf.predict(model, tokenizer, saes, data.texts, progress=True)
    return classification_scores(data.labels, preds, scores.astype(float), seed=cfg.seed)


def run_compare(cfg: ClassifyConfig) -> dict[str, Any]:
    from qwenscope.apps.classify.analysis import Part, compare
    from qwenscope.apps.classify.data import check_binary, load_labelled, split
    from qwenscope.apps.classify.pooled import pool_texts

    positive = tuple(p.strip() for p in cfg.positive.split(",") if p.strip())
    data = load_labelled(cfg.data, text_column=cfg.text_column, label_column=cfg.label_column, positive=positive)
    if cfg.test:
        train = data
        test = load_labelled(cfg.test, text_column=cfg.text_column, label_column=cfg.label_column, positive=positive)
    else:
        train, test = split(data)
    check_binary(train, f"the discovery part of {cfg.data}")
    check_binary(test, f"the test part of {cfg.test or cfg.data}")
    model, tokenizer, sae_id, saes = load_parts(cfg)
    hooks = list(saes)
    texts = train.texts + test.texts
    pooled = pool_texts(model, tokenizer, texts, [saes[h] for h in hooks], hooks, max_tokens=cfg.max_tokens)
    n = len(train.texts)
    whole = Part(texts, np.concatenate([train.labels, test.labels]), dict(zip(hooks, pooled)))
    result = compare(whole.rows(range(n)), whole.rows(range(n, len(texts))), choose=cfg.choose, seed=cfg.seed)
    result["meta"] = {"model": cfg.model or DEFAULT_MODEL, "sae": sae_id, "data": cfg.data, "test": cfg.test or "split"}
    if cfg.html:
        from qwenscope.apps.classify.report import write_report

        write_report({"title": f"Toxicity classification: {cfg.data}", **result}, cfg.html)
        logger.info("wrote %s", cfg.html)
    return result


def print_records(records: list[dict[str, Any]]) -> None:
    for r in records:
        fired = sorted({f"{f['hookpoint']}#{f['id']}" for t in r["tokens"] for f in t["features"]})
        where = [f"{t['token']!r}" for t in r["tokens"] if t["features"]][:8]
        verdict = "toxic" if r["prediction"] else "clean"
        print(f"{verdict:<6} {r['text'][:70]!r}")
        if fired:
            print(f"       fired: {', '.join(fired)} on {', '.join(where)}")


def run_classify(cfg: ClassifyConfig) -> None:
    from qwenscope.apps.classify.report import format_table

    if cfg.action == "fit":
        out = run_fit(cfg)
        if cfg.json:
            print(json.dumps(out))
            return
        print(f"wrote {cfg.out}: {len(out['rule']['features'])} features")
        for f in out["rule"]["features"]:
            print(
                f"  {f['hookpoint']}#{f['id']}: Δ {f['delta']:+.3f} (fires on {f['p_pos']:.1%} of toxic, "
                f"{f['p_neg']:.1%} of clean)"
            )
    elif cfg.action == "predict":
        records = run_predict(cfg)
        print(json.dumps(records)) if cfg.json else print_records(records)
    elif cfg.action == "eval":
        scores = run_eval(cfg)
        if cfg.json:
            print(json.dumps(scores))
            return
        print(format_table([{"method": "feature rule", **scores}]))
    else:
        result = run_compare(cfg)
        print(json.dumps(result)) if cfg.json else print(format_table(result["comparison"]))
