"""The Triton kernel of qwenscope::steer against the op's torch body, run by Triton's interpreter on the CPU.

The kernel runs in a subprocess with ``TRITON_INTERPRET=1`` (read when a kernel is decorated) and Triton on its path:
``make setup`` installs Triton beside the virtualenv (``QWENSCOPE_TRITON_SITE``), not into it, because sparsify
switches its own decoder to Triton kernels, which need a GPU, whenever Triton imports. Tolerances: the kernel sums in
fp32 in another order than the body's matrix products, so steered tokens agree to fp32 rounding, and in fp16 to one
fp16 step where the delta's rounding lands elsewhere; bf16 is checked to a few bf16 steps only, because the
interpreter casts fp32 to bf16 by truncation (``_convert_float`` with no rounding mode) where a GPU rounds to nearest
even. Unsteered tokens are copied and equal the input exactly.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwenscope.vllm_plugin.op import steer_body

REPO = Path(__file__).resolve().parents[2]
RUN_KERNEL = """
import sys
from safetensors.torch import load_file, save_file
from qwenscope.vllm_plugin.kernel import steer_triton
cases = load_file(sys.argv[1])
names = sorted({k.split('/')[0] for k in cases})
out = {}
for name in names:
    args = [cases[f'{name}/{a}'] for a in ('hidden', 'rows', 'add', 'enc', 'bias', 'threshold', 'dec', 'target')]
    out[name] = steer_triton(*args)
save_file(out, sys.argv[2])
"""


def triton_env() -> dict[str, str]:
    env = dict(os.environ, TRITON_INTERPRET="1")
    paths = [os.environ.get("QWENSCOPE_TRITON_SITE", ""), str(REPO), os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


@pytest.fixture(scope="module")
def interpreted():
    """Runs the kernel on a dict of named cases in the interpreter; the outputs by name."""
    env = triton_env()
    probe = subprocess.run([sys.executable, "-c", "import triton"], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("could not import 'triton' (make setup installs it beside the venv; QWENSCOPE_TRITON_SITE)")

    def run(cases: dict[str, tuple[torch.Tensor, ...]], tmp: Path) -> dict[str, torch.Tensor]:
        names = ("hidden", "rows", "add", "enc", "bias", "threshold", "dec", "target")
        flat = {f"{c}/{n}": t.contiguous() for c, args in cases.items() for n, t in zip(names, args, strict=True)}
        save_file(flat, tmp / "in.safetensors")
        done = subprocess.run(
            [sys.executable, "-c", RUN_KERNEL, str(tmp / "in.safetensors"), str(tmp / "out.safetensors")],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return load_file(tmp / "out.safetensors")

    return run


def table(rows: int, slots: int, d: int, used: int, seed: int) -> tuple[torch.Tensor, ...]:
    """A table whose rows 1.. hold random steering, row 0 zeros, and only ``used`` of the slots filled per row (the
    rest zero, as the table writes them); thresholds of 3-4 on half the slots (JumpReLU: most active features fall
    below them), zero elsewhere."""
    g = torch.Generator().manual_seed(seed)
    add = torch.randn(rows, d, generator=g) * 0.5
    enc = torch.randn(rows, slots, d, generator=g) / d**0.5
    bias = torch.randn(rows, slots, generator=g) * 0.1
    threshold = (3 + torch.rand(rows, slots, generator=g)) * (torch.arange(slots) % 2 == 0)
    dec = torch.randn(rows, slots, d, generator=g) / d**0.5
    target = torch.randn(rows, slots, generator=g).abs() * 3
    for t in (enc, bias, threshold, dec, target):
        t[:, used:] = 0
    for t in (add, enc, bias, threshold, dec, target):
        t[0] = 0
    return add, enc, bias, threshold, dec, target


def test_kernel_matches_the_body_on_mixed_rows(interpreted, tmp_path):
    """Tokens of five rows (row 0 unsteered, row 1 add-only, rows 2-4 add and clamp) at a width below one block and
    one that spans two blocks of 1024 with a ragged end, 3 slots (padded to 4 and masked) and 4, the last slot empty,
    JumpReLU thresholds that switch some features off, int32 and int64 row indices, fp32, fp16 and bf16 hidden states
    against an fp32 table."""
    cases = {}
    for name, d, n, slots, dtype, index_dtype in (
        ("small", 40, 15, 3, torch.float32, torch.int32),
        ("ragged", 1100, 10, 4, torch.float32, torch.int64),
        ("fp16", 96, 15, 3, torch.float16, torch.int32),
        ("bf16", 96, 10, 4, torch.bfloat16, torch.int64),
    ):
        g = torch.Generator().manual_seed(d)
        hidden = (torch.randn(n, d, generator=g) * 2).to(dtype)
        rows = torch.tensor([i % 5 for i in range(n)], dtype=index_dtype)
        add, enc, bias, threshold, dec, target = table(5, slots, d, used=slots - 1, seed=d)
        for t in (enc, bias, threshold, dec, target):
            t[1] = 0  # row 1 only adds
        cases[name] = (hidden, rows, add, enc, bias, threshold, dec, target)
    out = interpreted(cases, tmp_path)
    for name, args in cases.items():
        hidden, rows = args[0], args[1]
        want, got = steer_body(*args), out[name]
        assert got.dtype == hidden.dtype and got.shape == hidden.shape
        assert torch.equal(got[rows == 0], hidden[rows == 0]), name
        assert not torch.equal(want[rows != 0], hidden[rows != 0])  # the cases steer: a no-op kernel would fail
        no_threshold = steer_body(*args[:5], torch.zeros_like(args[5]), *args[6:])
        assert not torch.allclose(no_threshold, want, rtol=1e-2, atol=1e-2)  # and the thresholds bite
        if hidden.dtype == torch.float32:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
        elif hidden.dtype == torch.float16:
            # add-only: every step rounds as the body's does, so bit-identical; with clamps the fp32 delta sums in
            # another order, and its rounding to fp16 can land one step away
            assert torch.equal(got[rows == 1], want[rows == 1]), name
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3, msg=name)
        else:  # the interpreter truncates each of the four fp32 -> bf16 casts (a GPU rounds to nearest even)
            torch.testing.assert_close(got.float(), want.float(), rtol=2**-5, atol=2**-5, msg=name)


def test_kernel_clamps_and_ablates_as_the_body_does(interpreted, tmp_path):
    """A row that pins two features to targets and one that ablates two (targets 0), with orthonormal encoder rows
    and decoder rows equal to them: after the kernel each feature's own activation is its target, as with the body."""
    d, slots = 64, 2
    add, enc, bias, threshold, dec, target = table(3, slots, d, used=2, seed=1)
    # decoder rows = encoder directions scaled so that one step of Σ (t − a) dec moves a_j to t_j exactly
    # (orthonormal encoder rows, dec_j = enc_j / |enc_j|^2, zero bias and thresholds)
    q, _ = torch.linalg.qr(torch.randn(d, 4, generator=torch.Generator().manual_seed(2)))
    enc[1:] = q.T.reshape(2, 2, d)
    dec[1:] = enc[1:]
    bias.zero_()
    threshold.zero_()
    add.zero_()
    target[1] = torch.tensor([4.0, 0.5])
    target[2] = 0.0  # ablate
    active = 4 * q.sum(1)  # every feature on (pre > 0) before the edit
    hidden = torch.randn(6, d, generator=torch.Generator().manual_seed(3)) + active
    rows = torch.tensor([1, 1, 2, 2, 0, 1], dtype=torch.int32)
    got = interpreted({"pin": (hidden, rows, add, enc, bias, threshold, dec, target)}, tmp_path)["pin"]
    torch.testing.assert_close(got, steer_body(hidden, rows, add, enc, bias, threshold, dec, target))
    own = torch.einsum("td,tmd->tm", got, enc[rows.long()]).relu()
    torch.testing.assert_close(own[rows == 1], target[1].expand(3, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(own[rows == 2], torch.zeros(2, 2), atol=1e-5, rtol=0)


def test_a_kernel_that_fails_on_its_first_call_falls_back_to_the_body(monkeypatch, caplog):
    """On a GPU the Triton kernel is compiled at the op's first call; if that fails the op runs the torch body (with
    a warning naming QWENSCOPE_STEER_KERNEL), unless the kernel was asked for explicitly or has already run."""
    from qwenscope.vllm_plugin import op

    args = (torch.randn(3, 8), torch.tensor([0, 1, 1], dtype=torch.int32), *table(2, 2, 8, used=2, seed=0))

    def broken(*a):
        raise RuntimeError("PTX assembly failed\nmore detail")

    monkeypatch.setattr(op, "steer_triton", broken)
    with caplog.at_level("WARNING", logger=op.__name__):
        fallback = op._CudaSteer(explicit=False)
        assert torch.equal(fallback(*args), op.steer_body(*args))
        assert torch.equal(fallback(*args), op.steer_body(*args))  # stays on the body, warned once
    assert [r.getMessage().count("QWENSCOPE_STEER_KERNEL=torch") for r in caplog.records] == [1]
    assert "PTX assembly failed" in caplog.text and "more detail" not in caplog.text
    with pytest.raises(RuntimeError, match="PTX"):
        op._CudaSteer(explicit=True)(*args)
    ran = op._CudaSteer(explicit=False)
    monkeypatch.setattr(op, "steer_triton", op.steer_body)
    ran(*args)
    monkeypatch.setattr(op, "steer_triton", broken)
    with pytest.raises(RuntimeError, match="PTX"):  # a failure after it has run is a real error, not a fallback
        ran(*args)
