"""torch.distributed glue: data parallelism (each rank a slice of every batch) or one rank per hookpoint group.

Started by ``torchrun --nproc_per_node N -m qwenscope train ...``: NCCL on GPUs, gloo on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment; False when not launched by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


@contextmanager
def process_group() -> Iterator[bool]:
    """``init_from_env`` for the block (yields whether ranks are joined), then destroy the group if the block joined
    it, as torch asks of every process before it exits (a group the caller made is left to the caller)."""
    started = not (dist.is_available() and dist.is_initialized())
    active = init_from_env()
    try:
        yield active
    finally:
        if active and started:
            dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_sum(t: Tensor, active: bool) -> Tensor:
    """Sum over ranks, in place, when ``active``."""
    if active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_max(t: Tensor, active: bool) -> Tensor:
    if active:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier(active: bool) -> None:
    if active:
        dist.barrier()
