"""The SAE itself: config, module, our file format, other formats, the Qwen-Scope releases."""

from qwenscope.sae.config import SaeConfig
from qwenscope.sae.load import load_sae
from qwenscope.sae.model import EncoderOutput, ForwardOutput, Sae
from qwenscope.sae.releases import RELEASES, Release

__all__ = ["RELEASES", "EncoderOutput", "ForwardOutput", "Release", "Sae", "SaeConfig", "load_sae"]
