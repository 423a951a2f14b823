"""Steering: add, clamp or ablate SAE features at inference time (``steer``), and generation with it.

Relative strengths are fractions of the residual's typical size at the hookpoint (``steering_unit``)."""

from qwenscope.steer.generate import generate_pair, generate_text, parse_features
from qwenscope.steer.steer import SteerSpec, steer, steer_rows
from qwenscope.steer.strength import DEFAULT_STRENGTH, steering_unit
from qwenscope.steer.sweep import prompt_batch

__all__ = [
    "DEFAULT_STRENGTH",
    "SteerSpec",
    "generate_pair",
    "generate_text",
    "parse_features",
    "prompt_batch",
    "steer",
    "steer_rows",
    "steering_unit",
]
