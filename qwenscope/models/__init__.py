"""Language models: loading (alone or with their SAEs), hookpoint names, capture and splice, padding and
log-likelihood. Never re-implements a model."""

from qwenscope.models.batching import pad_ids, pad_rows
from qwenscope.models.capture import capture, get_activations, hooked
from qwenscope.models.chat import Chat, HFChat, OpenAIChat, says_yes, strip_thinking
from qwenscope.models.head import final_norm, output_head, unembed
from qwenscope.models.hookpoints import Hook, check_sae_fits, resolve_hookpoint, resolve_hookpoints
from qwenscope.models.load import EMBEDDED, cache_dir, load_model, model_fingerprint, model_name
from qwenscope.models.parts import ModelAndSaes, load_model_and_saes, sae_pairs
from qwenscope.models.scoring import continuation_logprobs, head_input, next_token_logprobs, row_sums, token_logprobs
from qwenscope.models.splice import splice

__all__ = [
    "EMBEDDED",
    "Chat",
    "HFChat",
    "Hook",
    "ModelAndSaes",
    "OpenAIChat",
    "cache_dir",
    "capture",
    "check_sae_fits",
    "continuation_logprobs",
    "final_norm",
    "get_activations",
    "head_input",
    "hooked",
    "load_model",
    "load_model_and_saes",
    "model_fingerprint",
    "model_name",
    "next_token_logprobs",
    "output_head",
    "pad_ids",
    "pad_rows",
    "resolve_hookpoint",
    "resolve_hookpoints",
    "row_sums",
    "sae_pairs",
    "says_yes",
    "splice",
    "strip_thinking",
    "token_logprobs",
    "unembed",
]
