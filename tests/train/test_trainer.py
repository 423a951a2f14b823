"""The trainer: ground-truth recovery, exact resume after a kill, clear errors."""

import json
import multiprocessing as mp
import os
import signal

import pytest
import torch

from qwenscope import QwenscopeError, load_sae
from qwenscope.train import TrainConfig, Trainer


def synthetic(n_batches: int, batch: int, d_in=64, n_true=512, active=8, seed=1234):
    """Sparse combinations of known random unit directions: 8 of 512 active per sample, positive magnitudes."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_true, d_in, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    batches = []
    for _ in range(n_batches):
        idx = torch.rand(batch, n_true, generator=g).argsort(dim=1)[:, :active]
        mags = torch.rand(batch, active, generator=g) * 2 + 0.5
        batches.append(torch.zeros(batch, n_true).scatter_(1, idx, mags) @ dirs)
    return dirs, batches


def test_ground_truth_features_are_recovered(tmp_path):
    dirs, batches = synthetic(500, 512)  # (seed != the SAE's: an init equal to the truth would prove nothing)
    cfg = TrainConfig(
        expansion_factor=(16,),
        k=(8,),
        batch_size=512,
        steps=500,
        lr=1e-2,
        warmup_steps=20,
        dead_tokens=20_000,
        save_every=10_000,
        log_every=50,
    )
    sae = Trainer(cfg, {"resid_post.0": 64}, tmp_path).fit(batches)["resid_post.0"]
    W = sae.W_dec.detach()
    best = (dirs @ (W / W.norm(dim=1, keepdim=True)).T).max(dim=1).values
    assert best.mean() >= 0.9, f"mean best cosine {best.mean():.3f}"
    loaded = load_sae(tmp_path / "resid_post.0")
    assert torch.equal(loaded.W_dec, sae.W_dec.detach())
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 500


def _run(out, steps_before_kill=None):
    torch.manual_seed(123)
    _, batches = synthetic(40, 256, seed=1)
    cfg = TrainConfig(
        expansion_factor=(4,),
        k=(4, 8),
        batch_size=256,
        steps=40,
        lr=1e-3,
        warmup_steps=5,
        dead_tokens=1000,
        save_every=7,
        log_every=5,
    )
    trainer = Trainer(cfg, {"resid_post.1": 64}, out)
    stream = batches[trainer.step :]
    if steps_before_kill is not None:
        stream = iter(stream)

        def killing():
            for b in stream:
                if trainer.step == steps_before_kill:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield b

        return trainer.fit(killing())
    return trainer.fit(stream)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    reference = _run(tmp_path / "ref")
    ctx = mp.get_context("spawn")  # fork would inherit torch thread pools and can hang
    proc = ctx.Process(target=_run, args=(tmp_path / "killed", 23))
    proc.start()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    resumed = _run(tmp_path / "killed")  # picks up the step-21 checkpoint
    for name, sae in reference.items():
        for pname, p in sae.state_dict().items():
            # resumed from a checkpoint, the same batches in the same order: same kernels, same shapes: bit-identical
            assert torch.equal(p, resumed[name].state_dict()[pname]), (name, pname)


def test_resume_with_another_config_is_refused(tmp_path):
    _, batches = synthetic(5, 64)
    Trainer(TrainConfig(k=(4,), batch_size=64, steps=5), {"resid_post.0": 64}, tmp_path).fit(batches)
    with pytest.raises(QwenscopeError, match=r"another configuration \(k: \[4\] -> \[8\]\)"):
        Trainer(TrainConfig(k=(8,), batch_size=64, steps=5), {"resid_post.0": 64}, tmp_path)


def test_bad_batches(tmp_path):
    trainer = Trainer(TrainConfig(k=(4,), batch_size=8, steps=5), {"resid_post.0": 64}, tmp_path)
    with pytest.raises(QwenscopeError, match="NaN or inf"):
        trainer.train_step(torch.full((8, 64), float("nan")))
    with pytest.raises(QwenscopeError, match=r"shape \(8, 32\), expected \(batch, 64\)"):
        trainer.train_step(torch.randn(8, 32))
    with pytest.raises(QwenscopeError, match="no activations for resid_post.0"):
        trainer.train_step({"resid_post.9": torch.randn(8, 64)})
    with pytest.raises(QwenscopeError, match="data ran out after 2 of 5 steps"):
        trainer.fit([torch.randn(8, 64), torch.randn(8, 64)])


def test_init_from_continues_a_trained_sae(tmp_path):
    """--init-from starts from trained weights (fine-tuning): step 0 keeps them, b_dec included, and training
    from there beats a fresh start after the same few steps; a shape mismatch is a one-line error."""
    dirs, batches = synthetic(60, 512)
    cfg = TrainConfig(
        expansion_factor=(16,),
        k=(8,),
        batch_size=512,
        steps=50,
        lr=1e-2,
        warmup_steps=5,
        dead_tokens=20_000,
        save_every=10_000,
        log_every=1,
    )
    trained = Trainer(cfg, {"resid_post.0": 64}, tmp_path / "a").fit(batches[:50])["resid_post.0"]
    short = TrainConfig(**{**cfg.to_dict(), "steps": 3, "init_from": str(tmp_path / "a")})
    tuner = Trainer(short, {"resid_post.0": 64}, tmp_path / "b")
    for name, value in trained.state_dict().items():
        assert torch.equal(tuner.saes["resid_post.0"].state_dict()[name], value), name
    tuned = tuner.train_step(batches[50])["resid_post.0"]
    fresh = Trainer(TrainConfig(**{**short.to_dict(), "init_from": None}), {"resid_post.0": 64}, tmp_path / "c")
    # the fresh start has the same seed, so the two would be equal if --init-from were ignored
    assert tuned["fvu"] < 0.95 * fresh.train_step(batches[50])["resid_post.0"]["fvu"]
    wrong = TrainConfig(**{**short.to_dict(), "k": (4,)})
    with pytest.raises(QwenscopeError, match=r"--init-from .* k 8 at resid_post.0; train with the same"):
        Trainer(wrong, {"resid_post.0": 64}, tmp_path / "d")


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_bf16_encoder_trains_the_same_sae(tmp_path, activation):
    _, batches = synthetic(12, 256, d_in=32, n_true=128)
    saes = {}
    for encoder in ("exact", "bf16"):
        cfg = TrainConfig(
            expansion_factor=(4,),
            k=(4,),
            activation=activation,
            batch_size=256,
            steps=12,
            lr=1e-3,
            warmup_steps=2,
            dead_tokens=512,
            encoder=encoder,
        )
        saes[encoder] = Trainer(cfg, {"resid_post.0": 32}, tmp_path / encoder).fit(batches)["resid_post.0"]
    for name, p in saes["exact"].state_dict().items():
        # bf16 picks the features, values recomputed in fp32: other kernels, ~1e-6 after 12 steps
        torch.testing.assert_close(saes["bf16"].state_dict()[name], p, atol=1e-5, rtol=1e-5, msg=name)


def test_unknown_encoder_is_refused():
    with pytest.raises(QwenscopeError, match="encoder must be exact, bf16 or auto"):
        TrainConfig(encoder="int8")  # type: ignore[arg-type]
