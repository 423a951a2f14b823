"""Fixtures for the playground and API tests: a tiny Qwen3 with the real Qwen3 tokenizer, a random SAE, a feature
store built from them, a free port, an app served by uvicorn, and a headless Chromium driven by selenium (skipped
when missing, unless required)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket

import pytest
import torch
from serving import running
from tiny_models import tiny_qwen3

from qwenscope import Sae, SaeConfig
from qwenscope.features.stats import StatsConfig, compute_feature_stats
from qwenscope.features.store import FeatureStore

HOOK = "resid_post.0"
ANIMALS, PLACES = ["cat", "dog", "bird", "fish"] * 15, ["river", "tower", "park"] * 20
DOCS = [
    f"Note {i}: the {a} sat near the {p} <b>bold</b> at {i % 13} o'clock."
    for i, (a, p) in enumerate(zip(ANIMALS, PLACES))
]


@pytest.fixture(scope="session")
def qwen3_parts():
    """(model, tokenizer, sae): a 2-layer random Qwen3 on the real tokenizer's vocabulary, a TopK SAE at HOOK."""
    model, tokenizer = tiny_qwen3()
    model.eval()
    torch.manual_seed(1)
    sae = Sae(SaeConfig(d_in=64, d_sae=128, k=4, hookpoint=HOOK))
    return model, tokenizer, sae


@pytest.fixture(scope="session")
def qwen3_store(qwen3_parts, tmp_path_factory) -> FeatureStore:
    model, tokenizer, sae = qwen3_parts
    cfg = StatsConfig(
        n_tokens=400,
        seq_len=32,
        batch_size=8,
        top_n=3,
        window_before=4,
        window_after=1,
        hist_bins=8,
        hist_min=0.01,
        hist_max=10.0,
        lens_top=3,
        progress=False,
    )
    stats = compute_feature_stats(model, tokenizer, sae, DOCS, cfg)
    meta = {"model": "tiny-qwen3", "sae": "random", "dataset": "notes"}
    return FeatureStore.write(tmp_path_factory.mktemp("store") / "store", stats, tokenizer, meta)


@pytest.fixture
def port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def serve_app():
    """``serve_app(app)`` runs an ASGI app on uvicorn in a thread on a free port (``running``) and gives its base URL;
    the servers it started stop when the test module ends."""
    pytest.importorskip("uvicorn")
    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(running(app))


def _browser_problem() -> str | None:
    """Why a headless Chromium cannot be driven here, or None."""
    missing = [
        name for name, found in (("chromium", _chromium()), ("chromedriver", shutil.which("chromedriver"))) if not found
    ]
    if missing:
        return f"{' and '.join(missing)} not found; install with: apt-get install chromium chromium-driver (make setup)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed; install with: pip install -e '.[dev]'"
    return None


def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (selenium webdriver). Skips when none is installed; fails instead when
    QWENSCOPE_REQUIRE_BROWSER=1 (``make test`` sets it, so CI never silently skips the browser test)."""
    problem = _browser_problem()
    if problem:
        if os.environ.get("QWENSCOPE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"QWENSCOPE_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(_chromium())
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,2000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
