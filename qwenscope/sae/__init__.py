"""The SAE itself: config, module, our file format, other formats, the Qwen-Scope releases."""

from qwenscope.sae.config import SaeConfig
from qwenscope.sae.directions import direction_sae
from qwenscope.sae.load import EMBEDDED_MODELS, embedded_saes, load_sae
from qwenscope.sae.model import EncoderOutput, ForwardOutput, Sae
from qwenscope.sae.random import random_like
from qwenscope.sae.releases import RELEASES, Release

__all__ = [
    "EMBEDDED_MODELS",
    "RELEASES",
    "EncoderOutput",
    "ForwardOutput",
    "Release",
    "Sae",
    "SaeConfig",
    "direction_sae",
    "embedded_saes",
    "load_sae",
    "random_like",
]
