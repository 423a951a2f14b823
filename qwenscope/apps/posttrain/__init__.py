"""Post-training with SAE features (the report's section 6), as glue for TRL's trainers.

    texts = texts_by_language({"en": "fortunes:en", "es": "fortunes:es", "it": "fortunes:it"}, 300)
    feats = language_features(model, tokenizer, sae, texts, "en").top(2)     # English features, alpha per language
    trainer = SasftTrainer(model, SFTConfig(...), sae=sae, sasft=SasftConfig(feats, lam=1e-3),
                           train_dataset=data, processing_class=tokenizer)      # data: a "lang" column
    trainer.train()
    code_switching(responses, expected="es", unwanted="en").sentence_unwanted

The CLI is ``qwenscope sasft``. The TRL-dependent names (``SasftTrainer``, ``SasftConfig``) load TRL on first use,
so the language features and the metric work without the ``[posttrain]`` extra's trainers.
"""

from typing import Any

from qwenscope.apps.posttrain.codeswitch import CodeSwitch, WordSwitch, code_switching, only_in, word_switching
from qwenscope.apps.posttrain.language import LanguageFeatures, language_features, texts_by_language

_LAZY = {"SasftConfig": "sasft", "SasftTrainer": "sasft", "sasft_penalty": "sasft"}

__all__ = [
    "CodeSwitch",
    "LanguageFeatures",
    "SasftConfig",
    "SasftTrainer",
    "WordSwitch",
    "code_switching",
    "language_features",
    "only_in",
    "sasft_penalty",
    "texts_by_language",
    "word_switching",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        from qwenscope.util import require

        require("trl", "posttrain", f"qwenscope.apps.posttrain.{name}")
        return getattr(importlib.import_module(f"qwenscope.apps.posttrain.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'qwenscope.apps.posttrain' has no attribute {name!r}")
