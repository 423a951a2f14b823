"""Shared fixtures. Tiny random models are built in-process (tests/tiny_models.py); nothing is downloaded."""

import pytest
import torch
from tiny_models import ARCHS, build_tiny, random_inputs  # tests/ is on pythonpath (pyproject.toml)

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", params=ARCHS)
def tiny(request):
    """(arch, model, inputs) for every architecture; session-scoped, so tests must not change the weights."""
    model = build_tiny(request.param)
    return request.param, model, random_inputs(model)
