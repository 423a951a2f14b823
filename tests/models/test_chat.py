"""The shared LLM client (qwenscope.models.chat): p(yes) against the model's own logits, one-line endpoint errors."""

import pytest
import torch

from qwenscope.errors import QwenscopeError
from qwenscope.models import HFChat, OpenAIChat, says_yes
from tests.tiny_models import build_tiny, make_byte_tokenizer


def _want(model, tokenizer, prompt: str) -> float:
    """p(y or Y) / p(y, Y, n or N) at the end of the prompt, from one unpadded full forward."""
    ids = torch.tensor([tokenizer(f"{prompt}\n")["input_ids"]])
    with torch.no_grad():
        p = model(input_ids=ids).logits[0, -1].float().softmax(-1)
    yes = p[[tokenizer.convert_tokens_to_ids(c) for c in "yY"]].sum()
    no = p[[tokenizer.convert_tokens_to_ids(c) for c in "nN"]].sum()
    return float(yes / (yes + no))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_yes_probability_is_the_models_own_next_token_odds(arch):
    model, tokenizer = build_tiny(arch, num_layers=2), make_byte_tokenizer()
    if arch == "gemma3":  # the soft-capped logits are the model's own
        model.config.final_logit_softcapping = 0.5
    prompts = ["Is it blue? Answer yes or no.", "Sea?", "A much longer question about the tide, yes or no?"]
    chat = HFChat(model, tokenizer, batch_size=2)  # two batches, the first padded
    got = chat.yes_probability(prompts)
    # byte tokens: " yes" and " no" share their first token " ", so only y/Y against n/N count. Batched and padded
    # against alone, with the head on one row against all positions: other GEMM shapes, float32 rounding
    assert got == pytest.approx([_want(model, tokenizer, p) for p in prompts], abs=1e-5)
    assert all(0 < x < 1 for x in got)


def test_says_yes_reads_answers():
    assert says_yes(" Yes, it does") and says_yes('"yes"') and says_yes("<think>hmm, no</think>**Yes**")
    assert not says_yes("No.") and not says_yes("I think yes")


def test_an_endpoint_that_does_not_answer_is_one_line_naming_the_fallback():
    chat = OpenAIChat("http://127.0.0.1:9/v1", "m", timeout=2)  # port 9: nothing listens
    with pytest.raises(QwenscopeError) as err:
        chat.check("use --judge-model <local model>", "judge")
    assert str(err.value).startswith("the judge endpoint http://127.0.0.1:9/v1/chat/completions is unreachable")
    assert str(err.value).endswith("use --judge-model <local model>") and "\n" not in str(err.value)
    with pytest.raises(QwenscopeError, match="check the URL, model and key"):
        chat.complete("hi")
