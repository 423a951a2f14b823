"""experiments/sasft/sasft.py's data and reuse rules: an English-dominated mix keeps the older data at its default,
and a base arm measured on other prompts is never reused."""

import argparse
import json

import pytest
from bench_scripts import bench_script


@pytest.fixture(scope="module")
def sasft():
    with bench_script("sasft") as module:
        yield module


def chapters(n: int = 20) -> list:
    """Fake parallel chapters of 12 verses each: (book, chapter, English verses, Spanish verses)."""
    return [
        ("Book", c, [f"verse {c}.{v}." for v in range(12)], [f"versículo {c}.{v}." for v in range(12)])
        for c in range(n)
    ]


def test_spanish_share_thins_only_the_spanish_samples(sasft):
    train, held = sasft.build_data(chapters(), 0.0, 1.0, 0, response=2, switch_at=0)
    assert (train, held) == sasft.build_data(chapters(), 0.0, 1.0, 0, response=2, switch_at=0, spanish=1.0)
    thin, thin_held = sasft.build_data(chapters(200), 0.0, 1.0, 0, response=2, switch_at=0, spanish=0.2)
    spanish = sum(r["lang"] == "es" for r in thin)
    windows = 160 * 2  # 200 chapters, every fifth held out, two windows of six verses each
    assert sum(r["lang"] == "en" for r in thin) == windows  # --english 1: one English sample per window
    assert 0.1 * windows < spanish < 0.3 * windows
    assert len(thin_held) == 40 * 2 and all(h["lang"] == "es" for h in thin_held)  # held-out prompts untouched


def reuse(sasft, tmp_path, old_config: dict, **mine):
    config = {
        "model": "gemma3-270m",
        "response": 2,
        "eval": 50,
        "new_tokens": 48,
        "sample_temperature": 0.7,
        "seed": 0,
        "instruction": "",
        "steps": 80,
        "batch": 8,
        "lr": 5e-5,
        "max_length": 160,
        "switch": 0.0,
        "english": 1.0,
        "spanish": 1.0,
        "switch_at": 0,
        "freeze_after_hook": False,
        "train_seed": None,
        "hookpoint": "resid_post.9",
    }
    old = {**config, **old_config}
    for key in [k for k, v in old_config.items() if v is None]:
        del old[key]  # an older JSON, written before the setting existed
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"config": old, "n_train": 10, "arms": {"base": {"x": 1}, "sft": {"x": 2}}}))
    results = {"config": {**config, **mine}, "n_train": 10}
    return sasft.reuse_arms(argparse.Namespace(reuse=path), results)


def test_reuse_refuses_a_base_arm_measured_on_other_prompts(sasft, tmp_path):
    with pytest.raises(SystemExit, match="instruction"):
        reuse(sasft, tmp_path, {}, instruction="Continue this text: ")
    # a JSON from before --instruction and --spanish measured plain prompts of the full mix: both arms reused
    assert list(reuse(sasft, tmp_path, {"instruction": None, "spanish": None})) == ["base", "sft"]
    # another Spanish share is other training data: the base arm only
    assert list(reuse(sasft, tmp_path, {"spanish": None}, spanish=0.2)) == ["base"]


@pytest.mark.parametrize("share", [0.0, 1.5])
def test_spanish_share_outside_0_1_is_refused(sasft, share):
    with pytest.raises(SystemExit, match="--spanish"):
        sasft.build_data(chapters(), 0.0, 1.0, 0, response=2, switch_at=0, spanish=share)
