"""``qwenscope synthesize`` end to end on a tiny Qwen3 (real tokenizer and chat template) with a random SAE: the
contrast inventory, the seed's gaps, prompt and rewrite candidates with steering, the summary, a rerun that resumes
(nothing added), and the plain baseline."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from tiny_models import save_tiny_qwen3

from qwenscope import Sae, SaeConfig, load_model
from qwenscope.apps.classify.pooled import pool_texts
from qwenscope.cli import main

SEED = ["the garden is green", "a river runs by the town", "music in the evening", "fresh bread today"]
POSITIVES = ["you stupid idiot", "shut up, moron", "what a dumb fool", "get lost, jerk", "idiots, all of you"]
NEGATIVES = ["you kind friend", "sit down, please", "what a nice cloud", "come in, friend", "friends, all of you"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth-cli")
    save_tiny_qwen3(root / "model")
    torch.manual_seed(0)
    sae = Sae(SaeConfig(d_in=64, d_sae=256, k=8, hookpoint="resid_post.1"))
    with torch.no_grad():
        sae.b_enc.uniform_(-0.5, 0.0)
    sae.save(root / "saes" / "resid_post.1")
    (root / "seed.txt").write_text("\n".join(SEED) + "\n")
    (root / "pos.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in POSITIVES) + "\n")
    (root / "neg.txt").write_text("\n".join(NEGATIVES) + "\n")
    return root


def synth(root, out, *extra: str, capsys) -> dict:
    code = main(
        [
            "synthesize",
            "--seed",
            str(root / "seed.txt"),
            "--positives",
            str(root / "pos.jsonl"),
            "--negatives",
            str(root / "neg.txt"),
            "--description",
            "rude words",
            "--model",
            str(root / "model"),
            "--sae",
            str(root / "saes"),
            "--hookpoint",
            "resid_post.1",
            "--min-delta",
            "0.1",
            "--top",
            "40",
            "--budget",
            "2",
            "--max-new-tokens",
            "6",
            "--out",
            str(out),
            "--json",
            "--no-progress",
            *extra,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_synthesize_end_to_end_and_rerun(setup, tmp_path, capsys, monkeypatch):
    # the steering unit is measured on these instead of the offline multilingual corpus (reading it takes ~25 s)
    monkeypatch.setattr(importlib.import_module("qwenscope.steer.strength"), "unit_texts", lambda: SEED + NEGATIVES)
    out = tmp_path / "synth.jsonl"
    summary = synth(setup, out, "--method", "prompt,rewrite", "--steer", "0.5", capsys=capsys)
    targets = [t["id"] for t in summary["targets"]]
    assert targets and summary["attempts"] == {t["hookpoint"] + "#" + str(t["id"]): 2 for t in summary["targets"]}
    model, tokenizer = load_model(str(setup / "model"))
    sae = Sae.load(setup / "saes" / "resid_post.1")
    seed = pool_texts(model, tokenizer, SEED, [sae], ["resid_post.1"], cache=False, progress=False)[0]
    assert np.asarray(seed.fires[:, targets].sum(axis=0)).ravel().tolist() == [0] * len(targets)  # the seed's gaps
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == summary["examples"]
    assert all(r["target"]["id"] in targets and r["steered"] and r["strength"] == 0.5 for r in records)
    again = synth(setup, out, "--method", "prompt,rewrite", "--steer", "0.5", capsys=capsys)  # resumes: all done
    assert again == summary and len(out.read_text().splitlines()) == len(records)
    plain = synth(setup, tmp_path / "plain.jsonl", "--method", "plain", capsys=capsys)
    assert plain["attempts"] == {"plain": 2 * len(targets)} and plain["arms"] == ["plain"]
