"""The tiny model most app tests read with: a 4-layer random Llama and the byte tokenizer (a test module may define
its own ``model`` / ``tokenizer`` fixtures instead)."""

import pytest
from tiny_models import build_tiny, make_byte_tokenizer


@pytest.fixture(scope="module")
def model():
    return build_tiny("llama", num_layers=4)


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()
