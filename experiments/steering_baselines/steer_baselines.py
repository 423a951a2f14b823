r"""Experiment: SAE steering and detection against the field's simple baselines, on held-out prompts and texts.

For each concept of ``experiments/steering_concepts/concepts.py`` (its 16 + 16 search texts find every direction;
nothing is tuned on the evaluation prompts or the detection texts):

Steering, each method a direction added at every position (``steer``'s add mode, one direction SAE holding them
all, ``qwenscope.sae.direction_sae``), at each relative strength of ``--alphas`` (fractions of the residual's typical
size: every direction gets the same norm), greedy, on the concept's held-out prompts:

* ``effect``: the first feature of ``effect_ranked`` (its decoder row);
* ``contrastive``: the strongest contrastive hit silent on the negatives (``steer_concepts.contrastive_choice``);
* ``diffmeans``: the residual's mean on the positive texts minus its mean on the negative ones (CAA / AxBench);
* ``sae_combo``: the top five effect-ranked features' unit decoder rows, weighted by their positive effect scores;
* ``prompting``: no steering; the instruction of ``detection_texts.INSTRUCTIONS`` is added to each prompt.

Each direction's best strength is the one with the highest concept rate among those whose perplexity (of the
generated tokens under the unsteered model, given the prompt the model saw) stays at or under ``--cap``.

Detection, on held-out texts (``detection_texts.DETECTION``, 10 + 10 per concept): the AUROC of the effect and the
contrastive feature's largest activation over a text's tokens, of the projection of the text's mean residual on the
difference-in-means direction, and of a logistic probe on the mean residual trained on the search texts.

With ``--judge URL --judge-model NAME`` (an OpenAI-compatible endpoint), an LLM judge also rates every generation
(``qwenscope.steer.judge``: concept, instruction and fluency from 0 to 2, and their harmonic mean), the instruction
being the prompt without the prompting method's addition; each row gets the means and the unreadable count under
``judge``, each method a ``best_by_judge`` row (the highest mean harmonic, lowest alpha on ties).

    .venv/bin/python experiments/steering_baselines/steer_baselines.py [--concepts sea,music] [--n-prompts 50]
    .venv/bin/python experiments/steering_baselines/steer_baselines.py --judge http://127.0.0.1:8000/v1 \
        --judge-model Qwen/Qwen3-8B

Writes experiments/steering_baselines/results/steer_baselines.json (merged by concept) and a PNG.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qwenscope.errors import QwenscopeError
from qwenscope.experiment import load_script, set_threads, write_result
from qwenscope.features import EncodeConfig, diff_in_means, encode_texts
from qwenscope.features.search import contrastive, effect_ranked
from qwenscope.models import OpenAIChat, load_model_and_saes
from qwenscope.models.chat import Chat
from qwenscope.sae import direction_sae
from qwenscope.steer.judge import judge_generations, mean_ratings
from qwenscope.steer.strength import steering_unit
from qwenscope.steer.sweep import sweep_choices

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
_concepts = load_script(HERE.parent / "steering_concepts" / "concepts.py")
_steer_concepts = load_script(HERE.parent / "steering_concepts" / "steer_concepts.py")
_texts = load_script(HERE / "detection_texts.py")
CONCEPTS, PROMPTS = _concepts.CONCEPTS, _concepts.PROMPTS
METHODS = ("effect", "contrastive", "diffmeans", "sae_combo")
JUDGE_CONCEPTS = {
    "sea": "the sea (oceans, waves, ships, beaches)",
    "music": "music (songs, instruments, melodies)",
    "space": "outer space (stars, planets, rockets)",
    "food": "food and cooking",
    "dogs": "dogs",
    "french": "the French language (the text is written in French)",
}
"""What the LLM judge is told each concept is."""
N_EXAMPLES = 3
"""Generations kept per strength in the result file."""


def directions(concept, model, tokenizer, sae, hook: str, unit: float, candidates: int) -> tuple[dict, dict]:
    """The four steering directions (name -> (d,) float32) and what chose them."""
    hits = contrastive(model, tokenizer, sae, concept.positive, concept.negative, top=40, by="rate", hookpoint=hook)
    picked = _steer_concepts.contrastive_choice(hits)
    ranked = effect_ranked(
        model,
        tokenizer,
        sae,
        concept.positive,
        concept.negative,
        top=candidates,
        candidates=candidates,
        hookpoint=hook,
        unit=unit,
    )
    w = sae.W_dec.detach().float().cpu()
    unit_rows = w / w.norm(dim=1, keepdim=True)
    top = [h for h in ranked[:5] if h.score > 0] or ranked[:1]
    combo = sum(max(h.score, 1e-6) * unit_rows[h.feature] for h in top)
    out = {
        "effect": w[ranked[0].feature],
        "contrastive": w[picked.feature],
        "diffmeans": diff_in_means(model, tokenizer, concept.positive, concept.negative, hook),
        "sae_combo": combo,
    }
    chosen = {
        "effect": ranked[0].feature,
        "contrastive": picked.feature,
        "sae_combo": [[h.feature, h.score] for h in top],
        "effect_ranking": [vars(h) for h in ranked],
    }
    return out, chosen


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """scikit-learn's AUROC of the positives' scores against the negatives'."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def detection(concept, model, tokenizer, sae, hook: str, dirs: dict, chosen: dict) -> dict[str, float]:
    """AUROC per detector on the held-out texts (the module doc)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pos, neg = _texts.DETECTION[concept.name]
    cfg = EncodeConfig(pooling="max", mean_acts=True, skip_first=True, cache=False)
    (held,) = encode_texts(model, tokenizer, [*pos, *neg], [sae], [hook], cfg)
    (search,) = encode_texts(model, tokenizer, [*concept.positive, *concept.negative], [sae], [hook], cfg)
    n = len(pos)
    out = {}
    for name in ("effect", "contrastive"):
        act = np.asarray(held.pooled[:, chosen[name]].todense()).ravel()
        out[name] = auroc(act[:n], act[n:])
    proj = held.mean_acts @ dirs["diffmeans"].numpy()
    out["diffmeans"] = auroc(proj[:n], proj[n:])
    y = np.r_[np.ones(len(concept.positive)), np.zeros(len(concept.negative))]
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(search.mean_acts, y)
    score = probe.decision_function(held.mean_acts)
    out["probe"] = auroc(score[:n], score[n:])
    return out


def run_concept(concept, args) -> dict[str, Any]:
    model_name, hook = args.setup(concept)
    parts = load_model_and_saes(model_name, model_name, hook)
    model, tokenizer, (hook, sae) = parts.model, parts.tokenizer, parts.one()
    unit = steering_unit(model, tokenizer, hook)
    t0 = time.perf_counter()
    dirs, chosen = directions(concept, model, tokenizer, sae, hook, unit, args.candidates)
    stack = direction_sae(torch.stack([dirs[m] for m in METHODS]), hook)
    kind = concept.prompts
    prompts = list(PROMPTS[kind][: args.n_prompts])
    chat = kind == "instructions" and bool(getattr(tokenizer, "chat_template", None))
    common = {"max_new_tokens": args.max_new_tokens, "chat": chat, "hookpoint": hook, "batch_size": args.batch_size}
    common["n_examples"] = len(prompts) if args.judge_chat else N_EXAMPLES  # the judge reads every generation
    rows = sweep_choices(
        model,
        tokenizer,
        prompts,
        stack,
        [[i] for i in range(len(METHODS))],
        args.alphas,
        concept.score,
        relative=True,
        unit=unit,
        **common,
    )
    instruction = _texts.INSTRUCTIONS[concept.name]
    told = [f"{p} {instruction}" if kind == "instructions" else f"{instruction} {p}" for p in prompts]
    (prompted,) = sweep_choices(model, tokenizer, told, stack, [[0]], [0.0], concept.score, **common)
    result: dict[str, Any] = {
        "model": model_name,
        "hookpoint": hook,
        "unit": unit,
        "prompts": kind,
        "n_prompts": len(prompts),
        "chosen": chosen,
        "cosines": {
            f"{a}/{b}": float(torch.nn.functional.cosine_similarity(dirs[a], dirs[b], dim=0))
            for i, a in enumerate(METHODS)
            for b in METHODS[i + 1 :]
        },
    }
    for method, sweep in zip(METHODS, rows):
        dicts = [r.to_dict() for r in sweep]
        result[method] = {"rows": dicts, "best": _steer_concepts.best_row(dicts, args.cap)}
    result["prompting"] = {"instruction": instruction, "best": prompted[0].to_dict()}
    result["unsteered"] = {k: rows[0][0].to_dict()[k] for k in ("rate", "perplexity")}
    if args.judge_chat is not None:
        judge_result(args.judge_chat, JUDGE_CONCEPTS.get(concept.name, concept.name), prompts, result)
    result["detection_auroc"] = detection(concept, model, tokenizer, sae, hook, dirs, chosen)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def judge_result(chat: Chat, concept: str, prompts: list[str], result: dict[str, Any]) -> None:
    """Rate every row's generations (its ``examples``, one per prompt) by the LLM judge, in place: each row gets
    ``judge`` (``mean_ratings``), each method ``best_by_judge``, ``result["judge"]`` the answer counts; then the
    examples are cut to ``N_EXAMPLES`` as without the judge. Generations shared by rows (alpha 0) are judged once."""
    rows = [row for m in METHODS for row in result[m]["rows"]] + [result["prompting"]["best"]]
    judged: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        texts = tuple(row["examples"])
        if texts not in judged:
            judged[texts] = mean_ratings(judge_generations(chat, concept, zip(prompts, texts), progress=True))
        row["judge"] = judged[texts]
        row["examples"] = row["examples"][:N_EXAMPLES]
    for m in METHODS:
        result[m]["best_by_judge"] = max(result[m]["rows"], key=_judge_key)
    result["judge"] = {
        "concept": concept,
        "answers": 3 * sum(j["n"] for j in judged.values()),
        "unreadable": sum(j["unreadable"] for j in judged.values()),
    }


def _judge_key(row: dict[str, Any]) -> tuple[float, float]:
    """Highest mean harmonic first (none readable ranks last), then the lowest alpha."""
    harmonic = row["judge"]["harmonic"]
    return (-1.0 if harmonic is None else harmonic, -row["alpha"])


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Mean best rate per method; concepts where effect >= diffmeans; mean detection AUROC per detector; with the
    judge, the mean harmonic at the best strength by judge per method over the judged concepts."""
    methods = [*METHODS, "prompting"]
    rates = {m: [r[m]["best"]["rate"] for r in results.values()] for m in methods}
    detectors = ("effect", "contrastive", "diffmeans", "probe")
    judged = [r for r in results.values() if "judge" in r]
    if judged:
        best = {m: [r[m]["best_by_judge"]["judge"]["harmonic"] for r in judged] for m in METHODS}
        best["prompting"] = [r["prompting"]["best"]["judge"]["harmonic"] for r in judged]
        judge = {"mean_best_judge_harmonic": {m: _mean_known(v) for m, v in best.items()}, "judged": len(judged)}
    else:
        judge = {}
    return {
        "mean_best_rate": {m: float(np.mean(v)) for m, v in rates.items()},
        "effect_at_least_diffmeans": sum(
            r["effect"]["best"]["rate"] >= r["diffmeans"]["best"]["rate"] for r in results.values()
        ),
        "concepts": len(results),
        "mean_detection_auroc": {
            d: float(np.mean([r["detection_auroc"][d] for r in results.values()])) for d in detectors
        },
        **judge,
    }


def _mean_known(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def print_judge_table(results: dict[str, Any]) -> None:
    """Per judged concept and method: the mean harmonic at the best strength by judge, and that strength."""
    judged = {name: r for name, r in results.items() if "judge" in r}
    if not judged:
        return
    print("\nLLM judge: mean harmonic of concept, instruction and fluency (0-2) at the best strength by judge")
    print(f"{'concept':<9}" + "".join(f"{m:>16}" for m in [*METHODS, "prompting"]) + f"{'unreadable':>14}")
    for name, r in judged.items():
        best = [r[m]["best_by_judge"] for m in METHODS] + [r["prompting"]["best"]]
        cells = "".join(f"{_cell(b['judge']['harmonic']):>7} (α {b['alpha']:<4g})" for b in best)
        print(f"{name:<9}{cells}{r['judge']['unreadable']:>8} / {r['judge']['answers']}")


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(results: dict[str, Any]) -> None:
    methods = [*METHODS, "prompting"]
    print(f"\n{'concept':<9}{'unsteered':>10}" + "".join(f"{m:>18}" for m in methods))
    for name, r in results.items():
        cells = "".join(f"{r[m]['best']['rate']:>8.2f} (ppl {r[m]['best']['perplexity']:>4.1f})" for m in methods)
        print(f"{name:<9}{r['unsteered']['rate']:>10.2f}{cells}")
    print(f"\n{'concept':<9}" + "".join(f"{d:>13}" for d in ("effect", "contrastive", "diffmeans", "probe")))
    for name, r in results.items():
        print(
            f"{name:<9}"
            + "".join(f"{r['detection_auroc'][d]:>13.3f}" for d in ("effect", "contrastive", "diffmeans", "probe"))
        )


def plot(results: dict[str, Any], path: Path) -> None:
    from qwenscope.util import figure

    methods = [*METHODS, "prompting"]
    names = list(results)
    fig = figure(12, 3.8)
    ax = fig.add_subplot(1, 2, 1)
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        ax.bar(
            [i + j * width for i in range(len(names))], [results[n][m]["best"]["rate"] for n in names], width, label=m
        )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
    ax.set_title("concept rate at the best strength within the perplexity cap", fontsize=10)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 2, 2)
    detectors = ("effect", "contrastive", "diffmeans", "probe")
    width = 0.8 / len(detectors)
    for j, d in enumerate(detectors):
        ax.bar(
            [i + j * width for i in range(len(names))],
            [results[n]["detection_auroc"][d] for n in names],
            width,
            label=d,
        )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
    ax.set_ylim(0.4, 1.02)
    ax.set_title("detection AUROC on held-out texts", fontsize=10)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--alphas", default="0,0.2,0.35,0.5,0.75,1.0")
    parser.add_argument("--n-prompts", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--cap", type=float, default=10.0, help="perplexity budget of a strength")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "steer_baselines.json"))
    parser.add_argument("--judge", metavar="URL", help="an OpenAI-compatible endpoint (.../v1) for the LLM judge")
    parser.add_argument("--judge-model", metavar="NAME", help="the judge's model name at that endpoint")
    args = parser.parse_args()
    if bool(args.judge) != bool(args.judge_model):
        parser.error("--judge and --judge-model go together: the endpoint URL and the model name it serves")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    args.alphas = [float(a) for a in args.alphas.split(",")]
    args.setup = lambda c: _steer_concepts.DEFAULT_SETUP.get(c.name, _steer_concepts.ENGLISH_SETUP)
    args.judge_chat = OpenAIChat(args.judge, args.judge_model) if args.judge else None
    if args.judge_chat is not None:
        try:
            args.judge_chat.check("run without --judge to use the automatic scorers only", "judge")
        except QwenscopeError as error:
            parser.exit(1, f"error: {error}\n")
    out = Path(args.out)
    results = json.loads(out.read_text())["concepts"] if out.exists() else {}
    for name in args.concepts.split(","):
        results[name] = run_concept(CONCEPTS[name], args)
        write_result(out, {"cap": args.cap, "alphas": args.alphas, "concepts": results, "summary": summary(results)})
        print_table(results)
        print_judge_table(results)
    plot(results, out.with_suffix(".png"))
    print(json.dumps(summary(results), indent=1))


if __name__ == "__main__":
    main()
