"""Data workflows: toxicity (or any binary label) from a handful of SAE features, the report's section 5, with the
obvious baselines beside it.

    data = load_labelled("fortunes-off:es")                     # or a JSONL/CSV file, hf:NAME@split
    discovery, test = split(data)                               # deterministic, by a hash of each text
    clf, _ = fit(model, tokenizer, "gemma3-270m", "gemma3-270m", {"resid_post.9": sae}, discovery.texts,
                 discovery.labels, k=5)                         # Δ-ranked features, rule "any fires"
    clf.save("toxic.json"); preds, scores = clf.predict(model, tokenizer, saes, test.texts)
    explain(clf, model, tokenizer, saes, ["..."])               # which feature fired on which token

``analysis.compare`` puts the rule at K = 1..10 beside the SAE-feature probe, the activation probe,
difference-in-means and TF-IDF on one split; ``efficiency`` and ``transfer`` are the report's other analyses.
The CLI is ``qwenscope classify fit | predict | eval | compare``.
"""

from qwenscope.apps.classify.analysis import Part, compare, efficiency, transfer
from qwenscope.apps.classify.baselines import BASELINES, Inputs, fit_baselines
from qwenscope.apps.classify.classifier import Classifier, fit
from qwenscope.apps.classify.data import LabelledSet, fortunes_offensive, load_labelled, split, subsample
from qwenscope.apps.classify.explain import explain
from qwenscope.apps.classify.metrics import classification_scores
from qwenscope.apps.classify.pooled import Pooled, pool_texts
from qwenscope.apps.classify.rule import FeatureRule, firing_rates, fit_rule

__all__ = [
    "BASELINES",
    "Classifier",
    "FeatureRule",
    "Inputs",
    "LabelledSet",
    "Part",
    "Pooled",
    "classification_scores",
    "compare",
    "efficiency",
    "explain",
    "firing_rates",
    "fit",
    "fit_baselines",
    "fit_rule",
    "fortunes_offensive",
    "load_labelled",
    "pool_texts",
    "split",
    "subsample",
    "transfer",
]
