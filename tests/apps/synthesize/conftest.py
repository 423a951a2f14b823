"""Every synthesis test: its own cache folder (pooled features are cached there) and one torch thread."""

import pytest


@pytest.fixture(autouse=True)
def own_cache_one_thread(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "cache"))
