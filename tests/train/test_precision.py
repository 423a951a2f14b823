"""encoder="auto" uses bf16 only where the hardware has it and a micro-benchmark confirms it pays."""

import pytest
import torch

from qwenscope.train import precision


@pytest.fixture(autouse=True)
def _fresh_cache():
    precision.bf16_speedup.cache_clear()
    yield
    precision.bf16_speedup.cache_clear()


def test_cpu_without_bf16_flags_is_never_timed(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2", "fma"})

    def never(*_):
        raise AssertionError("an emulated bf16 product (~100x slower) must not even be timed")

    monkeypatch.setattr(precision, "_time_mm", never)
    assert not precision.use_bf16(torch.device("cpu"), 64, 1024)


@pytest.mark.parametrize(("fp32_s", "bf16_s", "expected"), [(0.30, 0.10, True), (0.30, 0.28, False)])
def test_cpu_with_bf16_flags_is_decided_by_the_measurement(monkeypatch, fp32_s, bf16_s, expected):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    timed = []

    def fake_time(a, b):
        timed.append(a.dtype)
        return bf16_s if a.dtype == torch.bfloat16 else fp32_s

    monkeypatch.setattr(precision, "_time_mm", fake_time)
    assert precision.use_bf16(torch.device("cpu"), 64, 1024) is expected
    assert timed == [torch.float32, torch.bfloat16]
