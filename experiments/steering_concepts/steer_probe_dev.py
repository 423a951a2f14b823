"""Which probe strength ranks steering features best? The development check behind effect_ranked's default.

For each concept (experiments/steering_concepts/concepts.py), the first 12 contrastive candidates are probed
(``probe_effects``: gain_pos - gain_neg, nats per token) at relative strengths 0.25, 0.5 and 0.75, and each is steered
alone at 0.5 on 12 development chat prompts (experiments/steering_effect/steer_effect.py's, none of them
experiments/steering_concepts/steer_concepts.py's evaluation prompts; 24 new tokens). For each probe strength it reports
the rate of the candidate the probe ranks first, against the best rate of any candidate.

    # sea, music, food, space (~20 min on 2 cores)
    .venv/bin/python experiments/steering_concepts/steer_probe_dev.py

Writes experiments/steering_concepts/results/steer_probe_dev.json.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from qwenscope import load_sae
from qwenscope.experiment import load_script, write_result
from qwenscope.features.search import contrastive
from qwenscope.models.load import load_model
from qwenscope.steer.probe import probe_effects
from qwenscope.steer.strength import steering_unit
from qwenscope.steer.sweep import sweep_choices

RESULTS = Path(__file__).parent / "results"
HERE = Path(__file__).resolve().parent
_concepts = load_script(HERE / "concepts.py")  # the sibling (experiments/* are no packages)
CONCEPTS, INSTRUCTIONS = _concepts.CONCEPTS, _concepts.INSTRUCTIONS
OTHER_INSTRUCTIONS = load_script(HERE.parent / "steering_effect" / "steer_effect.py").INSTRUCTIONS
PROBE_ALPHAS = (0.25, 0.5, 0.75)
DEV = [OTHER_INSTRUCTIONS[i] for i in (0, 1, 2, 3, 4, 6, 7, 9, 13, 14, 16, 17)]  # about none of the concepts
assert not set(DEV) & set(INSTRUCTIONS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concepts", default="sea,music,food,space")
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--steer-alpha", type=float, default=0.5)
    parser.add_argument("--out", default=str(RESULTS / "steer_probe_dev.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    model, tokenizer = load_model("smollm2-135m")
    sae = load_sae("smollm2-135m", hookpoint="resid_post.15")
    hook = sae.cfg.hookpoint
    unit = steering_unit(model, tokenizer, hook)
    results: dict = {"dev_prompts": DEV, "probe_alphas": list(PROBE_ALPHAS), "steer_alpha": args.steer_alpha}
    for name in args.concepts.split(","):
        concept = CONCEPTS[name]
        hits = contrastive(model, tokenizer, sae, concept.positive, concept.negative, top=args.candidates)
        features = [h.feature for h in hits]
        effects = probe_effects(
            model,
            tokenizer,
            sae,
            features,
            concept.positive[:8],
            concept.negative[:8],
            PROBE_ALPHAS,
            unit=unit,
            hookpoint=hook,
        )
        diff = effects.gain_pos - effects.gain_neg  # (candidates, probe alphas)
        rows = sweep_choices(
            model,
            tokenizer,
            DEV,
            sae,
            [[f] for f in features],
            [args.steer_alpha],
            concept.score,
            max_new_tokens=24,
            relative=True,
            unit=unit,
            batch_size=len(features) * len(DEV),
        )
        rates = [r[0].rate for r in rows]
        picked = {f"{a:g}": rates[int(diff[:, i].argmax())] for i, a in enumerate(PROBE_ALPHAS)}
        results[name] = {
            "features": features,
            "diff": diff.tolist(),
            "rates": rates,
            "perplexities": [r[0].perplexity for r in rows],
            "best_rate": max(rates),
            "rate_of_probe_pick": picked,
        }
        print(f"{name}: best rate {max(rates):.2f}; rate of the probe's first pick by probe strength: {picked}")
        write_result(Path(args.out), results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
