"""Does this device multiply bf16 matrices faster than fp32? Decides ``TrainConfig.encoder = "auto"``.

A bf16 product only pays where the hardware does bf16 natively: CUDA GPUs from Ampere on, x86 CPUs with AVX-512 BF16
or AMX. Elsewhere (AVX2 CPUs) torch emulates it, far slower than fp32 (docs/results/training.md), so it is never even
timed there. Where the hardware claims it, a one-time micro-benchmark at the SAE's shape confirms it before it is used.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_SPEEDUP = 1.3
"""bf16 must beat fp32 by this much in the micro-benchmark (the candidates' exact rescoring costs a little)."""


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def hardware_bf16(device: torch.device) -> bool:
    """Whether the hardware claims native bf16 matrix products."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in _cpu_flags() for flag in CPU_BF16_FLAGS)
    return False


def _time_mm(a: torch.Tensor, b: torch.Tensor, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        if a.device.type == "cuda":
            torch.cuda.synchronize(a.device)
        t0 = time.perf_counter()
        a @ b
        if a.device.type == "cuda":
            torch.cuda.synchronize(a.device)
        best = min(best, time.perf_counter() - t0)
    return best


@functools.cache
def bf16_speedup(device_str: str, d_in: int, d_sae: int, rows: int = 512) -> float:
    """fp32 time / bf16 time of a (rows, d_in) @ (d_in, d_sae) product; 0 where the hardware lacks bf16."""
    device = torch.device(device_str)
    if not hardware_bf16(device):
        return 0.0
    a = torch.randn(rows, d_in, device=device)
    b = torch.randn(d_in, d_sae, device=device)
    fp32 = _time_mm(a, b)
    bf16 = _time_mm(a.bfloat16(), b.bfloat16())
    return fp32 / bf16


def use_bf16(device: torch.device, d_in: int, d_sae: int) -> bool:
    """The ``auto`` choice: bf16 candidate selection where bf16 products are native and measured faster."""
    speedup = bf16_speedup(str(device), d_in, d_sae)
    logger.info("bf16 product on %s: %s", device, f"{speedup:.2f}x fp32" if speedup else "not native")
    return speedup >= MIN_SPEEDUP
