"""``qwenscope synthesize``: feature-targeted data synthesis end to end, with a progress bar and a summary.

    qwenscope synthesize --seed fortunes:es --positives pos.txt --negatives neg.txt \\
        --description "offensive / vulgar language" --model gemma3-270m --inventory contrast \\
        --out synth.jsonl --budget 8 --method prompt,rewrite --steer 0.4
    qwenscope synthesize ... --method plain --out plain.jsonl          # the untargeted baseline, same budget

Run it again with the same arguments after a kill: it continues where it stopped (``qwenscope.apps.synthesize.run``).
"""

from __future__ import annotations

import json

from qwenscope.apps.synthesize.run import SynthesizeConfig, run


def run_synthesize(cfg: SynthesizeConfig) -> None:
    summary = run(cfg)
    if cfg.json:
        print(json.dumps(summary.as_dict()))
        return
    print(summary.text())
    for t in summary.targets:
        spent = summary.attempts.get(t.key)
        of = f" of {spent:>3}" if spent is not None else ""
        print(f"  {t.key:<22} kept {summary.kept.get(t.key, 0):>3}{of}  {t.why}")


__all__ = ["SynthesizeConfig", "run_synthesize"]
