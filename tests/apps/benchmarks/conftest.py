"""Every benchmark-app test: its own cache folder (feature sets and stores are cached there) and one torch thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread_and_own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QWENSCOPE_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
