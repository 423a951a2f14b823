r"""SASFT against code-switching on a real model: plain SFT against SASFT on the same contaminated data, steps and seed.

Setting (gemma3-270m, its shipped SAE at resid_post.9): a Spanish continuation task built from the parallel Bibles
(``sword-text-web`` / ``sword-text-sparv``, New Testament: the same books, chapters and verses in both). A sample's
prompt is two Spanish verses, its response the next four. In ``--switch`` of the Spanish samples (default 50%) the
response switches to English halfway (the next two verses in Spanish, then the English text of the two after): an SFT
set contaminated with switching responses. ``--english`` more samples are honest English ones (lang "en", trained by
CE only). ``--spanish`` below 1 keeps only that share of the Spanish samples: with ``--switch 0 --english 1`` an
English-dominated mix of clean samples (nothing in the data asks for English on a Spanish prompt).
``--instruction "Continue this text: "`` puts that text before every prompt (training and held-out): an English
instruction over Spanish text, which the base model already answers partly in English. Held-out: every fifth chapter,
never trained on.

Arms: the base model, plain SFT (TRL's SFTTrainer) and SASFT (SasftTrainer, one arm per λ in ``--lam``, the top
``--top`` English features by monolinguality, alpha measured on the training chapters of both Bibles and Italian
fortunes). Measured on ``--eval`` held-out prompts (``--new-tokens``: covers the ~60 tokens of Spanish before the
switch point and ~60 after): the code-switching metric (share of generated sentences in English, share of responses
with an English sentence; langid restricted to en/es) of greedy responses and of sampled ones
(``--sample-temperature``, seeded): greedy decoding turns a learned switching probability near 50% into
all-or-nothing per prompt, sampling measures the probability itself; fluency: perplexity of held-out clean Spanish
continuations (in domain) and of Spanish fortunes (out of domain). Also per arm: the share of English-only words
(``word_switching``, word list from the training chapters of both Bibles), which sees a switch inside a sentence.

    # a tiny run that checks the pipeline (6 min on 1 busy CPU core)
    .venv/bin/python experiments/sasft/sasft.py --quick
    # the GPU setting: switch halfway, 300 steps at batch 8
    .venv/bin/python experiments/sasft/sasft.py
    # the CPU setting (~2.5 h on 2 cores)
    .venv/bin/python experiments/sasft/sasft.py --device cpu --threads 2 --steps 80 --batch 8 --max-length 160 \
        --response 2 --switch-at 0 --eval 50 --new-tokens 48 --lam 1e-2 5e-2

``--more-hookpoints resid_post.14`` also penalises the top ``--top`` English features at those hookpoints (one SAE
each, from ``--sae``: a folder of hookpoint folders, default the model's shipped SAEs); the plain SFT arm is the
same, so ``--reuse`` takes it.

``--train-seed`` changes only the training's seed (the order of the samples; ``--seed`` also draws the data and the
sampling); ``--arms sasft`` trains the SASFT arm(s) alone, e.g. to see how far one arm moves across training seeds.
``experiments/sasft/sasft_seeds.py`` gathers the runs of several training seeds into one table and plot.

``--freeze-after-hook`` trains only the decoder layers up to the hookpoint's in every arm. ``--reuse`` takes the base
and SFT arms from an earlier run of the same settings, only the base arm when the training data or schedule differ
(``--switch``, ``--steps``, ``--freeze-after-hook``, ...).

In the CPU setting a switched response is wholly English (``--switch-at 0``: Spanish prompts answered in English) and
two verses long: a switch the model learns within 80 steps, so plain SFT switches under greedy decoding too.

Measured on CPU (--quick, 1 thread of a shared 2-core machine): full fine-tuning of gemma3-270m at batch 2 takes
23-43 s per step, so the default 300 steps at batch 8 is a GPU job; on CPU try --steps 100 --batch 4.

Writes experiments/sasft/results/sasft.json and experiments/sasft/results/sasft.png (``--quick``: sasft-quick.*;
``--out`` another folder), the JSON also after each arm (``"partial": true``). The Bibles are read from
``$QWENSCOPE_SWORD`` (default /usr/share/sword).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from qwenscope import load_model, load_sae, resolve_hookpoint
from qwenscope.apps.posttrain import SasftConfig, SasftTrainer, code_switching, language_features, texts_by_language
from qwenscope.apps.posttrain.codeswitch import only_in, word_switching
from qwenscope.apps.posttrain.sasft import POSITIONS
from qwenscope.experiment import add_common_args, set_threads, write_result
from qwenscope.models.hookpoints import decoder_layers

RESULTS = Path(__file__).resolve().parent / "results"
BIBLES = {"en": "engWEB2015eb", "es": "spaRV1909eb"}
logger = logging.getLogger("bench.sasft")


# ---------------------------------------------------------------- data
def verse_text(raw: str) -> str:
    """A verse's plain text: OSIS notes dropped, tags removed, spaces collapsed."""
    raw = re.sub(r"<note\b.*?</note>", " ", raw, flags=re.DOTALL)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]*>", "", raw)).strip()


def new_testament() -> list[tuple[str, int, list[str], list[str]]]:
    """(book, chapter, English verses, Spanish verses) of every NT chapter whose verse counts agree."""
    from pysword.modules import SwordModules

    modules = SwordModules(os.environ.get("QWENSCOPE_SWORD", "/usr/share/sword"))
    modules.parse_modules()
    bibles = {lang: modules.get_bible_from_module(name) for lang, name in BIBLES.items()}
    chapters = []
    for book in bibles["en"].get_structure().get_books()["nt"]:
        for chapter in range(1, book.num_chapters + 1):
            verses = {
                lang: [verse_text(v) for v in b.get_iter(books=[book.name], chapters=[chapter], clean=False)]
                for lang, b in bibles.items()
            }
            if len(verses["en"]) == len(verses["es"]) and all(verses["en"]) and all(verses["es"]):
                chapters.append((book.name, chapter, verses["en"], verses["es"]))
    return chapters


def windows(verses_en: list[str], verses_es: list[str]) -> list[tuple[list[str], list[str]]]:
    """Non-overlapping windows of six verses: (English, Spanish)."""
    return [(verses_en[i : i + 6], verses_es[i : i + 6]) for i in range(0, len(verses_es) - 5, 6)]


def build_data(
    chapters, switch: float, english: float, seed: int, response: int = 4, switch_at: int = 2, spanish: float = 1.0
) -> tuple[list[dict], list[dict]]:
    """(training samples, held-out samples); see the module doc. A response is ``response`` verses; a switched one
    has ``switch_at`` Spanish verses, then English (0: the whole response in English). ``spanish`` < 1 keeps that
    share of the Spanish samples (an English-dominated mix; 1 draws nothing, so older data stay the same)."""
    if not 0 <= switch_at < response <= 4:
        raise SystemExit(f"--switch-at {switch_at} and --response {response}: need 0 <= switch-at < response <= 4")
    if not 0 < spanish <= 1:
        raise SystemExit(f"--spanish {spanish}: give the share of Spanish samples kept, in (0, 1]")
    gen = torch.Generator().manual_seed(seed)
    train, held = [], []
    for i, (_, _, en, es) in enumerate(chapters):
        for w_en, w_es in windows(en, es):
            prompt, clean = " ".join(w_es[:2]), " " + " ".join(w_es[2 : 2 + response])
            if i % 5 == 0:
                held.append({"prompt": prompt, "completion": clean, "lang": "es"})
                continue
            switched = torch.rand((), generator=gen) < switch
            keep = spanish >= 1 or bool(torch.rand((), generator=gen) < spanish)
            mixed = w_es[2 : 2 + switch_at] + w_en[2 + switch_at : 2 + response]
            completion = " " + " ".join(mixed) if switched else clean
            if keep:
                train.append({"prompt": prompt, "completion": completion, "lang": "es", "switched": bool(switched)})
            if torch.rand((), generator=gen) < english:
                train.append(
                    {
                        "prompt": " ".join(w_en[:2]),
                        "completion": " " + " ".join(w_en[2 : 2 + response]),
                        "lang": "en",
                        "switched": False,
                    }
                )
    order = torch.randperm(len(train), generator=gen).tolist()
    return [train[j] for j in order], held


# ---------------------------------------------------------------- measures
def generate(
    model, tokenizer, prompts: list[str], new_tokens: int, batch_size: int = 8, temperature: float = 0.0
) -> list[str]:
    """Greedy (``temperature`` 0) or sampled continuations of ``prompts`` (left-padded batches)."""
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {}
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    out = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(device)
        with torch.no_grad():
            ids = model.generate(
                **enc,
                max_new_tokens=new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **(sampling or {"do_sample": False}),
            )
        out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def perplexity(model, tokenizer, pairs: list[tuple[str, str]], max_tokens: int = 256) -> float:
    """exp(mean NLL) of the second text of each pair given the first (an empty first text: the whole text)."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    model.eval()
    for context, text in pairs:
        ctx = tokenizer(context)["input_ids"] if context else tokenizer("")["input_ids"]
        full = tokenizer(context + text)["input_ids"][:max_tokens]
        ids = torch.tensor([full], device=device)
        with torch.no_grad():
            logits = model(ids).logits.float()
        targets = ids[0, 1:]
        logp = torch.log_softmax(logits[0, :-1], -1).gather(1, targets[:, None])[:, 0]
        start = max(len(ctx) - 1, 0)
        nll -= float(logp[start:].sum())
        count += int(logp[start:].numel())
    return math.exp(nll / max(count, 1))


def measure(
    model, tokenizer, held: list[dict], fortunes: list[str], english_words: frozenset[str], args
) -> dict[str, Any]:
    start = time.perf_counter()
    prompts = [h["prompt"] for h in held[: args.eval]]
    batch = 32 if args.device.startswith("cuda") else 8
    responses = generate(model, tokenizer, prompts, args.new_tokens, batch)
    cs = code_switching(responses, expected="es", unwanted="en")
    torch.manual_seed(args.seed)
    sampled = generate(model, tokenizer, prompts, args.new_tokens, batch, args.sample_temperature)
    cs_sampled = code_switching(sampled, expected="es", unwanted="en")
    ws, ws_sampled = word_switching(responses, english_words), word_switching(sampled, english_words)
    result = {
        "code_switching": cs.to_dict(),
        "code_switching_sampled": cs_sampled.to_dict(),
        "word_switching": ws.to_dict(),
        "word_switching_sampled": ws_sampled.to_dict(),
        "ppl_bible_es": perplexity(model, tokenizer, [(h["prompt"], h["completion"]) for h in held[: args.eval]]),
        "ppl_fortunes_es": perplexity(model, tokenizer, [("", t) for t in fortunes]),
        "examples": [{"prompt": p, "response": r, "sampled": q} for p, r, q in zip(prompts, responses, sampled)][:5],
        "eval_seconds": time.perf_counter() - start,
    }
    logger.info(
        "  switched sentences %.3f, responses %.3f (sampled %.3f, %.3f), English-only words %.4f (sampled "
        "%.4f), ppl bible %.2f, fortunes %.2f",
        cs.sentence_unwanted,
        cs.response_switched,
        cs_sampled.sentence_unwanted,
        cs_sampled.response_switched,
        ws.word_unwanted,
        ws_sampled.word_unwanted,
        result["ppl_bible_es"],
        result["ppl_fortunes_es"],
    )
    return result


# ---------------------------------------------------------------- arms
def train_up_to_hook(model, hookpoint: str) -> None:
    """Freeze everything but the decoder layers up to the hookpoint's: the layers after it (and the tied embeddings
    and head) keep reading the residual stream as the base model wrote it, so English output cannot be rebuilt
    downstream of the penalised features."""
    layer = resolve_hookpoint(model, hookpoint).layer
    if layer is None:
        raise SystemExit(f"--freeze-after-hook needs a hookpoint inside a decoder layer, got {hookpoint!r}")
    model.requires_grad_(False)
    for block in decoder_layers(model)[1][: layer + 1]:
        block.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "training layers 0..%d only: %.1fM of %.1fM parameters",
        layer,
        trainable / 1e6,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )


def train_seed(args) -> int:
    """The trainer's seed (the order of the samples): ``--train-seed``, else ``--seed``."""
    return args.seed if args.train_seed is None else args.train_seed


def train_arm(name: str, train: list[dict], args, sasft: SasftConfig | None, saes: list) -> tuple[Any, Any, dict]:
    model, tokenizer = load_model(args.model, device=args.device, dtype=torch.float32)
    cuda = args.device.startswith("cuda")
    config = SFTConfig(
        output_dir=str(args.work / name),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        max_length=args.max_length,
        logging_steps=max(1, args.steps // 20),
        save_strategy="no",
        seed=train_seed(args),
        report_to=[],
        use_cpu=not cuda,
        bf16=cuda,
        disable_tqdm=True,
        remove_unused_columns=sasft is None,
    )
    if args.freeze_after_hook:
        train_up_to_hook(model, args.hookpoint)
    data = Dataset.from_list([{k: v for k, v in r.items() if k != "switched"} for r in train])
    if sasft is None:
        trainer: SFTTrainer = SFTTrainer(model, config, train_dataset=data, processing_class=tokenizer)
    else:
        trainer = SasftTrainer(model, config, sae=saes, sasft=sasft, train_dataset=data, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    info = {
        "train_seconds": seconds,
        "seconds_per_step": seconds / args.steps,
        "log": [e for e in trainer.state.log_history if "loss" in e],
    }
    logger.info("%s: %d steps in %.0f s (%.2f s/step)", name, args.steps, seconds, seconds / args.steps)
    return trainer.model, tokenizer, info


SAME_EVAL = {
    "model": None,
    "response": None,
    "eval": None,
    "new_tokens": None,
    "sample_temperature": None,
    "seed": None,
    "instruction": "",
}
"""Settings the base arm's measure depends on (the held-out prompts come before any random draw), each with the
value an older JSON without it had (None: always written)."""
SAME_TRAINING = {
    "steps": None,
    "batch": None,
    "lr": None,
    "max_length": None,
    "switch": None,
    "english": None,
    "spanish": 1.0,
    "switch_at": None,
    "freeze_after_hook": False,
    "train_seed": None,
}
"""Settings of the training data and schedule, each with the value an older JSON without it had (None: always
written): another value reuses the base arm only. ``--hookpoint`` joins them under ``--freeze-after-hook``."""


def reuse_arms(args, results: dict[str, Any]) -> dict[str, Any]:
    """The base and sft arms of ``args.reuse``: both when it was run on the same data, model and training settings,
    only the base arm when just the training data or schedule differ."""
    old = json.loads(args.reuse.read_text())
    mine = results["config"]
    differ = [k for k, missing in SAME_EVAL.items() if old["config"].get(k, missing) != mine[k]]
    if differ:
        raise SystemExit(
            f"--reuse {args.reuse}: measured with other settings ({', '.join(differ)}); rerun the baselines instead"
        )
    names = ["base", "sft"]
    trained = [k for k, missing in SAME_TRAINING.items() if old["config"].get(k, missing) != mine[k]]
    if mine["freeze_after_hook"] and old["config"]["hookpoint"] != mine["hookpoint"]:
        trained.append("hookpoint")  # the plain SFT arm trained other layers
    if trained or old["n_train"] != results["n_train"]:
        names = ["base"]  # the plain SFT arm trained otherwise: run it again
    logger.info("%s arm(s) taken from %s", " and ".join(names), args.reuse)
    reused = {name: old["arms"][name] for name in names if name in old["arms"]}
    results["reused_from"], results["reused"] = str(args.reuse), list(reused)
    return reused


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(results["arms"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.38
    for j, key in enumerate(("sentence_unwanted", "response_switched")):
        values = [results["arms"][a]["code_switching"][key] for a in arms]
        axes[0].bar([i + (j - 0.5) * width for i in range(len(arms))], values, width, label=key.replace("_", " "))
    axes[0].set_xticks(range(len(arms)), arms)
    axes[0].set_ylabel("share in English")
    axes[0].set_ylim(0, max(0.05, *(results["arms"][a]["code_switching"]["response_switched"] for a in arms)) * 1.15)
    axes[0].set_title(f"code-switching, {results['n_eval']} held-out prompts")
    axes[0].legend()
    for j, key in enumerate(("ppl_bible_es", "ppl_fortunes_es")):
        values = [results["arms"][a][key] for a in arms]
        axes[1].bar([i + (j - 0.5) * width for i in range(len(arms))], values, width, label=key)
    axes[1].set_xticks(range(len(arms)), arms)
    axes[1].set_title("perplexity of held-out Spanish")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run that checks the pipeline")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--hookpoint", default="resid_post.9")
    parser.add_argument(
        "--lam",
        type=float,
        nargs="+",
        default=[1e-3, 1e-2],
        help="SASFT arm(s): the first is arm 'sasft', others 'sasft-<lam>'",
    )
    parser.add_argument(
        "--more-hookpoints",
        nargs="*",
        default=[],
        help="penalise the top features at these hookpoints too (one SAE each, from --sae)",
    )
    parser.add_argument("--sae", default="", help="SAE source holding every hookpoint's (default: the shipped ones)")
    parser.add_argument("--top", type=int, default=2, help="English features penalised per hookpoint")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--switch", type=float, default=0.5, help="share of Spanish samples whose response switches")
    parser.add_argument("--english", type=float, default=0.2, help="honest English samples per Spanish one")
    parser.add_argument(
        "--spanish",
        type=float,
        default=1.0,
        help="share of the Spanish samples kept (below 1: an English-dominated mix)",
    )
    parser.add_argument("--instruction", default="", help="text put before every prompt, e.g. 'Continue this text: '")
    parser.add_argument("--response", type=int, default=4, help="verses per response (at most 4)")
    parser.add_argument(
        "--switch-at",
        type=int,
        default=2,
        help="Spanish verses before a switched response turns English (0: all English)",
    )
    parser.add_argument(
        "--positions",
        choices=POSITIONS,
        default="response",
        help="where the penalty reads: the response tokens, or the positions predicting them",
    )
    parser.add_argument(
        "--freeze-after-hook",
        action="store_true",
        help="every arm trains only the decoder layers up to the hookpoint's (the later layers, "
        "the embeddings and the head stay frozen)",
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="an earlier sasft.json of the same model and held-out settings: its base arm (and its "
        "sft arm, when the training data and schedule are the same) is taken from it",
    )
    parser.add_argument("--eval", type=int, default=60, help="held-out prompts (>= 50 for the acceptance)")
    parser.add_argument("--new-tokens", type=int, default=120)
    parser.add_argument("--sample-temperature", type=float, default=0.7, help="for the sampled code-switching")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and PNG")
    parser.add_argument("--feature-texts", type=int, default=200, help="texts per language for nu and alpha")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data draw, the training and the sampling")
    parser.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="another seed for the training alone (the order of the samples): the same data",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=["sft", "sasft"],
        default=["sft", "sasft"],
        help="arms to train (the base model is always measured or reused)",
    )
    add_common_args(parser, device="auto")
    parser.add_argument("--work", type=Path, default=Path("/tmp/qwenscope-bench-sasft"))
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch, args.eval, args.new_tokens, args.feature_texts = 2, 2, 4, 24, 8
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)

    chapters = new_testament()
    set_threads(args.threads)
    train, held = build_data(
        chapters, args.switch, args.english, args.seed, args.response, args.switch_at, args.spanish
    )
    if args.quick:
        train = train[:16]
    for sample in (*train, *held):
        sample["prompt"] = args.instruction + sample["prompt"]
    fortunes = texts_by_language({"es": "fortunes:es"}, max(args.eval, 4), split="test")["es"]
    logger.info(
        "%d chapters, %d training samples (%d switched), %d held-out prompts",
        len(chapters),
        len(train),
        sum(r["switched"] for r in train),
        len(held),
    )

    model, tokenizer = load_model(args.model, device=args.device, dtype=torch.float32)
    hookpoints = [args.hookpoint, *args.more_hookpoints]
    saes = [load_sae(args.sae or args.model, hookpoint=h, device=args.device) for h in hookpoints]
    train_chapters = [c for i, c in enumerate(chapters) if i % 5]
    bible_en = [" ".join(c[2]) for c in train_chapters]
    bible_es = [" ".join(c[3]) for c in train_chapters]
    english_words = only_in(bible_en, bible_es)  # English-only words: the word-level code-switching measure
    texts = {
        "en": bible_en[: args.feature_texts],
        "es": bible_es[: args.feature_texts],
        **texts_by_language({"it": "fortunes:it"}, args.feature_texts),
    }
    sets = [language_features(model, tokenizer, sae, texts, "en", top=args.top) for sae in saes]
    for feats in sets:
        logger.info(
            "English features at %s: %s, nu %s",
            feats.hookpoint,
            feats.ids,
            [round(float(feats.nu[i]), 3) for i in feats.ids],
        )

    def described(feats) -> dict[str, Any]:
        return {
            "ids": feats.ids,
            "nu": [float(feats.nu[i]) for i in feats.ids],
            "alpha": {k: v[feats.ids].tolist() for k, v in feats.alpha.items()},
            "n_tokens": feats.n_tokens,
        }

    features = described(sets[0])  # the --hookpoint's, as before --more-hookpoints
    if args.more_hookpoints:
        features["more"] = {f.hookpoint: described(f) for f in sets[1:]}
    results: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "n_train": len(train),
        "n_switched": sum(r["switched"] for r in train),
        "n_eval": min(args.eval, len(held)),
        "features": features,
        "arms": {},
    }
    stem = "sasft-quick" if args.quick else "sasft"
    args.out.mkdir(parents=True, exist_ok=True)

    def write(partial: bool) -> None:
        results["partial"] = partial
        write_result(args.out / f"{stem}.json", results, ensure_ascii=False)

    reused = reuse_arms(args, results) if args.reuse else {}
    results["arms"].update(reused)
    if "base" not in reused:
        logger.info("base model")
        results["arms"]["base"] = measure(model, tokenizer, held, fortunes, english_words, args)
        write(partial=True)
    del model
    sasft_arms = [
        (f"sasft-{lam:g}" if i else "sasft", SasftConfig(sets, lam=lam, positions=args.positions))
        for i, lam in enumerate(args.lam)
    ]
    for name, sasft in [("sft", None), *sasft_arms]:
        if name in reused or name.split("-")[0] not in args.arms:
            continue
        trained, tokenizer, info = train_arm(name, train, args, sasft, saes)
        results["arms"][name] = {**measure(trained, tokenizer, held, fortunes, english_words, args), **info}
        write(partial=True)
        del trained
    results["all_arms"] = {
        name: {
            "sentence_unwanted": arm["code_switching"]["sentence_unwanted"],
            "ppl_bible_es": arm["ppl_bible_es"],
            "sentence_unwanted_sampled": arm["code_switching_sampled"]["sentence_unwanted"],
        }
        for name, arm in results["arms"].items()
    }
    arms = results["arms"]
    if "sft" in arms and "sasft" in arms:
        base_ratio = arms["sft"]["code_switching"]["sentence_unwanted"]
        sasft_ratio = arms["sasft"]["code_switching"]["sentence_unwanted"]
        results["ratio_cut"] = None if base_ratio == 0 else 1 - sasft_ratio / base_ratio
        sampled = [arms[arm]["code_switching_sampled"]["sentence_unwanted"] for arm in ("sft", "sasft")]
        results["ratio_cut_sampled"] = None if sampled[0] == 0 else 1 - sampled[1] / sampled[0]
        results["ppl_change"] = arms["sasft"]["ppl_bible_es"] / arms["sft"]["ppl_bible_es"] - 1
    write(partial=False)
    plot(results, args.out / f"{stem}.png")
    summary = ", ".join(f"{name} {arm['code_switching']['sentence_unwanted']:.3f}" for name, arm in arms.items())
    change = f"; perplexity SASFT vs SFT {results['ppl_change']:+.1%}" if "ppl_change" in results else ""
    print(f"code-switching (share of English sentences): {summary}{change}; wrote {args.out / stem}.json/.png")


if __name__ == "__main__":
    main()
