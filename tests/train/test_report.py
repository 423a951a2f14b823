"""Training metrics: metrics.jsonl always, tensorboard and wandb (offline) when asked for, one-line errors otherwise."""

import importlib.util
import json
import time

import pytest
import torch

from qwenscope import QwenscopeError
from qwenscope.train import TrainConfig, Trainer
from qwenscope.train.report import flatten, parse_report_to


def _batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 16, generator=g) for _ in range(n)]


def _cfg(steps=6):
    return TrainConfig(
        expansion_factor=(2,), k=(4,), batch_size=64, steps=steps, warmup_steps=1, log_every=2, save_every=3
    )


def _jsonl(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_the_same_scalars_as_the_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(_cfg(), {"resid_post.0": 16}, tmp_path, report_to="tensorboard").fit(_batches())
    rows = _jsonl(tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "resid_post.0/fvu" in events.Tags()["scalars"]
    fvu = events.Scalars("resid_post.0/fvu")
    assert [e.step for e in fvu] == [r["step"] for r in rows] == [2, 4, 6]
    assert [e.value for e in fvu] == pytest.approx([r["resid_post.0"]["fvu"] for r in rows])


def test_wandb_offline_run_is_written_and_resumed_with_the_same_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    with pytest.raises(QwenscopeError, match="data ran out"):  # a run cut short, then resumed
        Trainer(_cfg(), {"resid_post.0": 16}, out, report_to="wandb").fit(_batches()[:4])
    run_id = (out / "wandb-id").read_text()
    # wandb names an offline session's folder by the second it starts (offline-run-YYYYMMDD_HHMMSS-<id>): two
    # sessions within one second share a folder, so the resumed one starts in the next second
    time.sleep(1.0 - time.time() % 1.0 + 0.05)
    Trainer(_cfg(), {"resid_post.0": 16}, out, report_to="wandb").fit(_batches()[4:])  # resumes at step 4
    assert (out / "wandb-id").read_text() == run_id
    logs = sorted((out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(logs) == 2  # both sessions logged to the same run id
    assert b"resid_post.0/fvu" in logs[-1].read_bytes()
    assert [r["step"] for r in _jsonl(out)] == [2, 4, 6]  # the cut-short run saved at step 4 and went on from there


def test_report_to_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(QwenscopeError, match="unknown --report-to 'mlflow'"):
        Trainer(_cfg(), {"resid_post.0": 16}, tmp_path, report_to="mlflow")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(QwenscopeError, match="needs the wandb package; pip install wandb"):
        parse_report_to("tensorboard,wandb")
    assert parse_report_to("none") == [] and parse_report_to("tensorboard, tensorboard") == ["tensorboard"]


def test_flatten_names_metrics_by_sae():
    assert flatten({"resid_post.3/x16_k32": {"fvu": 0.5, "l0": 32}}) == {
        "resid_post.3/x16_k32/fvu": 0.5,
        "resid_post.3/x16_k32/l0": 32.0,
    }
