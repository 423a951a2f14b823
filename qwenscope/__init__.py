"""qwenscope: sparse autoencoder features of Qwen models as everyday development tools."""

from qwenscope.errors import QwenscopeError
from qwenscope.models.capture import capture, get_activations
from qwenscope.models.hookpoints import check_sae_fits, resolve_hookpoint
from qwenscope.models.load import load_model
from qwenscope.models.splice import splice
from qwenscope.sae import RELEASES, Sae, SaeConfig, load_sae
from qwenscope.steer import SteerSpec, steer

__version__ = "0.1.0"
__all__ = [
    "RELEASES",
    "QwenscopeError",
    "Sae",
    "SaeConfig",
    "SteerSpec",
    "capture",
    "check_sae_fits",
    "get_activations",
    "load_model",
    "load_sae",
    "resolve_hookpoint",
    "splice",
    "steer",
]
