"""Serving SAE features: the gradio playground (``build_app``; gradio is imported only when an app is built)."""

from qwenscope.serve.playground import Playground, PlaygroundConfig, build_app, run_playground

__all__ = ["Playground", "PlaygroundConfig", "build_app", "run_playground"]
