"""Shared fixtures. Tiny random models are built in-process (tests/tiny_models.py); nothing is downloaded."""

import os

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


REQUIRE_OPTIONAL = "QWENSCOPE_REQUIRE_OPTIONAL"


def missing_optional(report) -> str | None:
    """The reason of a skip that ``pytest.importorskip`` gave for a missing library (the optional equivalence tests
    against SAELens, sparsify, TRL, the server's uvicorn and openai), else None."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    return reason if reason.startswith("could not import") else None


def _require_optional(report) -> None:
    """Under QWENSCOPE_REQUIRE_OPTIONAL=1 (``make test`` sets it) a test skipped for a missing library fails."""
    reason = missing_optional(report)
    if reason is not None and os.environ.get(REQUIRE_OPTIONAL) == "1":
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_OPTIONAL}=1 but {reason} (make setup installs it)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _require_optional(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level importorskip skips the whole module at collection
    _require_optional(outcome.get_result())
