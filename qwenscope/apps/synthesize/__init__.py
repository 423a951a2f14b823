"""Feature-targeted data synthesis (the Qwen-Scope report, section 5): the features a target description needs that a
seed corpus never activates, generation aimed at each, and the target feature itself as the check that a candidate
hits its mark.

    targets = contrast_inventory(model, tokenizer, sae, hook, positives, negatives, top=20)   # or label / judge
    targets = unreached(model, tokenizer, sae, hook, targets, seed_texts)                     # the seed's gaps
    summary = synthesize(model, tokenizer, sae, targets, "offensive language", "synth.jsonl",
                         arms=[Arm("prompt"), Arm("rewrite", 0.4)], budget=8, positives=positives, seeds=seed_texts)

``qwenscope synthesize`` runs it end to end (``qwenscope.apps.synthesize.cli.run``).
"""

from qwenscope.apps.synthesize.cli import SynthesizeConfig
from qwenscope.apps.synthesize.generate import Arm, GenerationConfig
from qwenscope.apps.synthesize.inventory import (
    Target,
    contrast_inventory,
    judge_inventory,
    label_inventory,
    unreached,
)
from qwenscope.apps.synthesize.output import Summary
from qwenscope.apps.synthesize.run import synthesize, synthesize_plain
from qwenscope.apps.synthesize.verify import verify

__all__ = [
    "Arm",
    "GenerationConfig",
    "Summary",
    "SynthesizeConfig",
    "Target",
    "contrast_inventory",
    "judge_inventory",
    "label_inventory",
    "synthesize",
    "synthesize_plain",
    "unreached",
    "verify",
]
