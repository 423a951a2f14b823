"""The TRL API that ``qwenscope.apps.posttrain.grpo.SteeredGRPOTrainer`` relies on: the GRPOTrainer methods it
overrides and calls (parameter names, order, defaults) and the attributes it reads. A TRL update that changes any of
them fails here, naming the method, rather than as a wrong call deep in a training step."""

import inspect

import pytest

pytest.importorskip("trl")
from trl import GRPOTrainer

from qwenscope.apps.posttrain.grpo import SteeredGRPOTrainer

# method -> its leading parameters after self, (name, default or EMPTY) in order, as grpo.py calls and overrides them
EMPTY = inspect.Parameter.empty
USED = {
    # overridden; calls super() positionally with all five and returns (completion_ids, logprobs)
    "_generate_single_turn": [
        ("prompt_ids", EMPTY),
        ("images", EMPTY),
        ("multimodal_fields", EMPTY),
        ("num_generations", EMPTY),
        ("has_tool_images", False),
    ],
    # overridden; reads and replaces output["old_per_token_logps"], reads prompt/completion ids and masks
    "_generate_and_score_completions": [("inputs", EMPTY)],
    # overridden; calls super() positionally and weights its (rows, funcs) result with self.reward_weights
    "_calculate_rewards": [
        ("inputs", EMPTY),
        ("prompts", EMPTY),
        ("completions", EMPTY),
        ("completion_ids_list", EMPTY),
    ],
    # called as (model, ids, mask, n_completion_tokens, batch_size), three values unpacked from its result
    "_get_per_token_logps_and_entropies": [
        ("model", EMPTY),
        ("input_ids", EMPTY),
        ("attention_mask", EMPTY),
        ("logits_to_keep", EMPTY),
        ("batch_size", None),
    ],
}
ATTRIBUTES = [  # set in GRPOTrainer.__init__, read by SteeredGRPOTrainer
    "use_vllm",
    "use_transformers_continuous_batching",
    "num_generations",
    "epsilon_low",
    "reward_weights",
    "_metrics",
]  # (and processing_class, accelerator, args, model: transformers' Trainer's)
OUTPUT_KEYS = ["prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "old_per_token_logps"]


@pytest.mark.parametrize("method", list(USED))
def test_the_grpo_trainer_methods_wrapped_keep_their_parameters(method):
    assert hasattr(GRPOTrainer, method), f"trl's GRPOTrainer has no {method} any more: update apps/posttrain/grpo.py"
    params = list(inspect.signature(getattr(GRPOTrainer, method)).parameters.values())[1:]  # without self
    got = [(p.name, p.default) for p in params[: len(USED[method])]]
    assert got == USED[method], (
        f"trl's GRPOTrainer.{method} now takes {got}, apps/posttrain/grpo.py relies on {USED[method]}"
    )
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    assert all(p.kind in positional for p in params[: len(USED[method])]), f"GRPOTrainer.{method}: passed positionally"


def test_the_overrides_take_what_trl_passes():
    for method in ("_generate_single_turn", "_generate_and_score_completions", "_calculate_rewards"):
        assert getattr(SteeredGRPOTrainer, method) is not getattr(GRPOTrainer, method), method
        ours = [p.name for p in inspect.signature(getattr(SteeredGRPOTrainer, method)).parameters.values()]
        theirs = [p.name for p in inspect.signature(getattr(GRPOTrainer, method)).parameters.values()]
        assert ours == theirs, f"SteeredGRPOTrainer.{method}{ours} no longer matches trl's GRPOTrainer.{method}{theirs}"


def test_the_attributes_and_output_keys_read_are_still_there():
    source = inspect.getsource(GRPOTrainer)
    for name in ATTRIBUTES:
        assert f"self.{name} =" in source, (
            f"trl's GRPOTrainer no longer sets self.{name}: apps/posttrain/grpo.py reads it"
        )
    method = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    for key in OUTPUT_KEYS:
        assert f'"{key}"' in method, f'trl\'s GRPOTrainer._generate_and_score_completions no longer gives "{key}"'


def test_our_keyword_arguments_do_not_shadow_trls():
    theirs = inspect.signature(GRPOTrainer.__init__).parameters
    assert not {"sae", "steering"} & set(theirs), "trl's GRPOTrainer.__init__ now takes sae= or steering= itself"
