"""torch.distributed with two gloo processes on the CPU: data parallelism equals one process on the same batches;
one-rank-per-hookpoint mode trains each hookpoint once."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qwenscope import load_sae
from qwenscope.train import TrainConfig, Trainer


def _batches():
    g = torch.Generator().manual_seed(7)
    return [
        {"resid_post.0": torch.randn(128, 32, generator=g), "resid_post.1": torch.randn(128, 32, generator=g)}
        for _ in range(12)
    ]


def _cfg(**kw):
    return TrainConfig(
        expansion_factor=(4,),
        k=(4,),
        batch_size=128,
        steps=12,
        lr=2e-3,
        warmup_steps=2,
        dead_tokens=256,
        save_every=5,
        log_every=1,
        **kw,
    )


def _worker(rank: int, world: int, port: int, out: str, modules: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        Trainer(_cfg(distribute_modules=modules), {"resid_post.0": 32, "resid_post.1": 32}, out).fit(_batches())
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    return _free_ports(1)[0]


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free at the time of the call (held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    single = Trainer(_cfg(), {"resid_post.0": 32, "resid_post.1": 32}, tmp_path / "one").fit(_batches())
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "two"), False), nprocs=2, start_method="spawn")
    for name, sae in single.items():
        other = load_sae(tmp_path / "two" / name)
        for pname, p in sae.state_dict().items():
            # two ranks vs one process: gradients all-reduced in another order, fp32 ~1e-6 after the steps
            torch.testing.assert_close(other.state_dict()[pname], p, atol=1e-5, rtol=1e-5, msg=f"{name} {pname}")


def test_one_rank_per_hookpoint(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path), True), nprocs=2, start_method="spawn")
    single = Trainer(_cfg(), {"resid_post.0": 32, "resid_post.1": 32}, tmp_path / "one").fit(_batches())
    for name, sae in single.items():  # each rank trained its hookpoint on the full batches: same SAE
        torch.testing.assert_close(load_sae(tmp_path / name).W_dec, sae.W_dec.detach(), atol=1e-6, rtol=1e-6)
    assert (tmp_path / "metrics-rank0.jsonl").is_file() and (tmp_path / "metrics-rank1.jsonl").is_file()


def _group_worker(rank: int, world: int, port: int, second_port: int) -> None:
    from qwenscope.train.dist import process_group

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    with process_group() as active:  # as torchrun starts a rank: the block joins the group
        assert active and dist.get_world_size() == world
    assert not dist.is_initialized()  # and leaves it, so the process exits with no gloo threads up
    # a group the caller made is the caller's to end (on a port of its own: the first group's may still be closing)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{second_port}", rank=rank, world_size=world)
    with process_group() as active:
        assert active
    assert dist.is_initialized()
    dist.destroy_process_group()


def test_process_group_leaves_only_the_group_it_joined():
    mp.start_processes(_group_worker, args=(2, *_free_ports(2)), nprocs=2, start_method="spawn")
