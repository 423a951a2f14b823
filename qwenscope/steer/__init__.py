"""Steering: add, clamp or ablate SAE features at inference time (``steer``), and generation with it."""

from qwenscope.steer.generate import generate_pair, generate_text, parse_features
from qwenscope.steer.steer import SteerSpec, steer

__all__ = ["SteerSpec", "generate_pair", "generate_text", "parse_features", "steer"]
