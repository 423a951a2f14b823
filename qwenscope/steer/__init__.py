"""Steering: add, clamp or ablate SAE features at inference time (``steer``), generation with it, and an LLM judge of
the steered texts (``judge_generations``: concept, instruction and fluency scores, as in AxBench).

Relative strengths are fractions of the residual's typical size at the hookpoint (``steering_unit``)."""

from qwenscope.steer.generate import generate_pair, generate_text, parse_features
from qwenscope.steer.judge import Rating, judge_generation, judge_generations, mean_ratings, parse_rating
from qwenscope.steer.steer import SteerSpec, steer, steer_rows
from qwenscope.steer.strength import DEFAULT_STRENGTH, steering_unit
from qwenscope.steer.sweep import prompt_batch

__all__ = [
    "DEFAULT_STRENGTH",
    "Rating",
    "SteerSpec",
    "generate_pair",
    "generate_text",
    "judge_generation",
    "judge_generations",
    "mean_ratings",
    "parse_features",
    "parse_rating",
    "prompt_batch",
    "steer",
    "steer_rows",
    "steering_unit",
]
