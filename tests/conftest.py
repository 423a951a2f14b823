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


@pytest.fixture
def one_thread():
    """Tiny-model forwards are many small ops: one thread is faster, and far faster when the cores are shared.
    Folders of such tests use it for every test (an autouse fixture in their conftest.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
