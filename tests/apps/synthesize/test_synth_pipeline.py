"""Feature-targeted synthesis on a tiny Llama with a random SAE: the inventory and the seed's gaps against brute force,
verification equal to the pooled features of the text alone, provenance, sampling seeded per row, resume after a kill
without duplicates, and one-line errors."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from tiny_models import TINY_HIDDEN, make_byte_tokenizer

from qwenscope import QwenscopeError, Sae, SaeConfig
from qwenscope.apps.classify.pooled import pool_texts
from qwenscope.apps.synthesize import cli as cli_module
from qwenscope.apps.synthesize import output as output_module
from qwenscope.apps.synthesize import run as run_module
from qwenscope.apps.synthesize.cli import SynthesizeConfig
from qwenscope.apps.synthesize.generate import (
    Arm,
    GenerationConfig,
    Steering,
    generate_texts,
    prompt_batch,
    target_prompt,
    text_snippets,
)
from qwenscope.apps.synthesize.inventory import Target, contrast_inventory, unreached
from qwenscope.apps.synthesize.run import synthesize, synthesize_plain
from qwenscope.apps.synthesize.verify import verify
from qwenscope.cli import main

HOOK = "resid_post.2"
SEEDS = ["The cat sat on the mat.", "A quiet afternoon with tea.", "Numbers: 12 + 30 = 42.", "Lovely weather today."]
POSITIVES = ["You stupid idiot!", "Shut up, fool", "What a dumb moron.", "Idiots everywhere!!", "Go away, creep."]
NEGATIVES = [
    "Good morning to you.",
    "The train leaves at six.",
    "I like green apples.",
    "Please sit down.",
    "Water boils at 100 C.",
]
GEN = GenerationConfig(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=3, batch_size=3)


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(1)
    sae = Sae(SaeConfig(d_in=TINY_HIDDEN, d_sae=64, k=4, hookpoint=HOOK))
    with torch.no_grad():
        sae.b_enc.uniform_(-0.3, 0.1)
    return sae


def brute_fires(model, tokenizer, sae, text: str) -> np.ndarray:
    """(d_sae,) bool: the feature is active at some non-special token of the text run alone."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        z = sae.encode(model(input_ids=ids, output_hidden_states=True).hidden_states[3][0])
    ordinary = ~torch.isin(ids[0], torch.tensor(tokenizer.all_special_ids))
    return (z[ordinary].max(0).values > 0).numpy()


def common_targets(model, tokenizer, sae, n: int = 3) -> list[Target]:
    """Features that fire on some but not all of a few texts: targets random generations sometimes hit."""
    fires = np.stack([brute_fires(model, tokenizer, sae, t) for t in SEEDS + POSITIVES + NEGATIVES])
    rate = fires.mean(0)
    ids = [int(i) for i in np.argsort(-rate) if 0.2 < rate[i] < 0.9][:n]
    return [Target(HOOK, i, 1.0, "test") for i in ids]


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- inventory and targets
def test_targets_are_the_inventory_features_no_seed_text_activates(model, tokenizer, sae):
    every = [Target(HOOK, i, 0.0, "all") for i in range(sae.d_sae)]
    gaps = unreached(model, tokenizer, sae, HOOK, every, SEEDS)
    seed_fires = np.stack([brute_fires(model, tokenizer, sae, t) for t in SEEDS]).any(0)
    assert {t.id for t in gaps} == set(np.flatnonzero(~seed_fires))
    assert 0 < len(gaps) < sae.d_sae  # the test can fail both ways


def test_contrast_inventory_ranks_by_firing_rate_difference(model, tokenizer, sae):
    found = contrast_inventory(model, tokenizer, sae, HOOK, POSITIVES, NEGATIVES, top=10, min_delta=0.2)
    pos = np.stack([brute_fires(model, tokenizer, sae, t) for t in POSITIVES]).mean(0)
    neg = np.stack([brute_fires(model, tokenizer, sae, t) for t in NEGATIVES]).mean(0)
    delta = pos - neg
    expected = [int(i) for i in np.lexsort((np.arange(len(delta)), -delta))[:10] if delta[i] >= 0.2]
    assert [t.id for t in found] == expected and expected
    assert all(abs(t.score - delta[t.id]) < 1e-4 for t in found)


def test_snippets_are_the_tokens_around_the_max_activation(model, tokenizer, sae):
    target = contrast_inventory(model, tokenizer, sae, HOOK, POSITIVES, NEGATIVES, top=1, min_delta=0.0)[0]
    shots = text_snippets(model, tokenizer, sae, HOOK, target.id, POSITIVES, n=2, window=3)
    assert 1 <= len(shots) <= 2
    assert all(any(s in " ".join(p.split()) for p in POSITIVES) for s in shots)
    assert all(len(s) <= 7 for s in shots)  # 3 bytes each side of the top byte


# ---------------------------------------------------------------- generation and verification
def test_sampling_is_seeded_per_row_and_steering_changes_the_text(model, tokenizer, sae):
    prompts = [target_prompt("rude words", ["you fool"])] * 3
    a = generate_texts(model, tokenizer, prompts, [1, 2, 3], GEN)
    b = generate_texts(model, tokenizer, prompts, [1, 2, 3], GEN)
    assert a == b and len(set(a)) > 1  # the same seeds draw the same texts; different seeds differ
    steered = generate_texts(model, tokenizer, prompts, [1, 2, 3], GEN, Steering(sae, 5, 4.0, 1.0))
    assert steered != a


def test_prompts_go_through_the_chat_template_when_there_is_one():
    chat = make_byte_tokenizer(chat=True)
    batch = prompt_batch(chat, ["hi", "hello there"])
    assert (batch["input_ids"] == chat.convert_tokens_to_ids("<|user|>")).any(1).all()
    assert (batch["attention_mask"][0, :3] == 0).all()  # left-padded


def test_verification_is_the_pooled_features_of_the_candidate_alone(model, tokenizer, sae):
    texts = generate_texts(model, tokenizer, ["Write a rude text.\nText:"] * 3, [7, 8, 9], GEN) + [""]
    ids = list(range(sae.d_sae))
    acts = verify(model, tokenizer, sae, HOOK, texts, ids)
    pooled = pool_texts(model, tokenizer, texts[:3], [sae], [HOOK], cache=False, progress=False)[0]
    np.testing.assert_allclose(acts[:3], pooled.max_acts.toarray(), atol=1e-6)
    assert (acts[3] == 0).all()  # an empty candidate fires nothing
    for text, row in zip(texts[:3], acts[:3]):
        assert set(np.flatnonzero(row > 0)) == set(np.flatnonzero(brute_fires(model, tokenizer, sae, text)))


def test_records_carry_provenance_and_their_activation(model, tokenizer, sae, tmp_path):
    targets = common_targets(model, tokenizer, sae)
    out = tmp_path / "synth.jsonl"
    arms = [Arm("prompt"), Arm("rewrite", 0.5)]
    summary = synthesize(
        model,
        tokenizer,
        sae,
        targets,
        "rude words",
        out,
        arms=arms,
        budget=6,
        gen=GEN,
        positives=POSITIVES,
        seeds=SEEDS,
        model_id="tiny",
        unit=1.0,
        progress=False,
    )
    records = read(out)
    assert records and summary.examples == len(records) and summary.covered
    assert summary.attempts == {t.key: 6 for t in targets} and summary.seconds > 0
    for r in records:
        assert r["target"]["hookpoint"] == HOOK and r["target"]["id"] in {t.id for t in targets}
        assert r["method"] in ("prompt", "rewrite") and r["steered"] == (r["method"] == "rewrite")
        assert r["strength"] == (0.5 if r["steered"] else 0.0)
        assert set(r["generator"]) >= {"model", "temperature", "top_p", "seed", "max_new_tokens", "sampling_seed"}
        assert r["generator"]["model"] == "tiny" and r["generator"]["seed"] == 3
        assert (r["seed_text"] in SEEDS) == (r["method"] == "rewrite")
        assert r["attempt"] % 2 == (r["method"] == "rewrite")  # attempts take the arms in turn
        alone = pool_texts(model, tokenizer, [r["text"]], [sae], [HOOK], cache=False, progress=False)[0]
        assert abs(alone.max_acts[0, r["target"]["id"]] - r["activation"]) < 1e-4 and r["activation"] > 0


def test_plain_baseline_checks_every_target(model, tokenizer, sae, tmp_path):
    targets = common_targets(model, tokenizer, sae)
    out = tmp_path / "plain.jsonl"
    summary = synthesize_plain(model, tokenizer, sae, targets, "rude words", out, budget=2, gen=GEN, progress=False)
    assert summary.attempts == {"plain": 2 * len(targets)}
    records = read(out)
    for r in records:
        fires = brute_fires(model, tokenizer, sae, r["text"])
        assert {h["id"] for h in r["targets"]} == {t.id for t in targets if fires[t.id]}
    assert sum(summary.kept.values()) == sum(len(r["targets"]) for r in records)
    every = synthesize_plain(
        model,
        tokenizer,
        sae,
        targets,
        "rude words",
        tmp_path / "all.jsonl",
        budget=2,
        gen=GEN,
        keep_all=True,
        progress=False,
    )
    assert len(read(tmp_path / "all.jsonl")) == 2 * len(targets)  # every generation, verified or not
    assert every.kept == summary.kept and every.examples == summary.examples == len(records)


# ---------------------------------------------------------------- resume
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_records(model, tokenizer, sae, tmp_path, monkeypatch):
    targets = common_targets(model, tokenizer, sae)
    kw = {
        "arms": [Arm("prompt"), Arm("rewrite", 0.5)],
        "budget": 6,
        "gen": GEN,
        "positives": POSITIVES,
        "seeds": SEEDS,
        "unit": 1.0,
        "progress": False,
    }
    whole = tmp_path / "whole.jsonl"
    synthesize(model, tokenizer, sae, targets, "rude words", whole, **kw)
    expected = read(whole)
    assert len(expected) >= 4

    killed = tmp_path / "killed.jsonl"
    write = output_module.Output.write
    for kill_after in (1, len(expected) // 2):
        calls = {"n": 0}

        def dying(self, record, calls=calls, kill_after=kill_after):
            if calls["n"] == kill_after:
                raise KeyboardInterrupt  # killed mid-batch, after some records of the batch were written
            calls["n"] += 1
            return write(self, record)

        monkeypatch.setattr(output_module.Output, "write", dying)
        with pytest.raises(KeyboardInterrupt):
            synthesize(model, tokenizer, sae, targets, "rude words", killed, **kw)
        monkeypatch.setattr(output_module.Output, "write", write)
    with killed.open("a") as f:
        f.write('{"text": "cut sho')  # a kill while a line was being written
    summary = synthesize(model, tokenizer, sae, targets, "rude words", killed, **kw)
    assert read(killed) == expected  # the same records, none twice
    assert summary.attempts == {t.key: 6 for t in targets}
    again = synthesize(model, tokenizer, sae, targets, "rude words", killed, **kw)  # finished: nothing more
    assert read(killed) == expected and again.kept == summary.kept and abs(again.seconds - summary.seconds) < 0.01


def test_a_run_that_verified_nothing_yet_resumes_too(model, tokenizer, sae, tmp_path, monkeypatch):
    targets = common_targets(model, tokenizer, sae, 1)
    out = tmp_path / "none.jsonl"
    monkeypatch.setattr(run_module, "verify", lambda *a, **k: np.zeros((len(a[4]), len(a[5])), np.float32))
    first = synthesize(model, tokenizer, sae, targets, "rude words", out, budget=3, gen=GEN, progress=False)
    assert out.read_text() == "" and first.attempts == {targets[0].key: 3}

    def no_generation(*args, **kwargs):
        raise AssertionError("a finished run generated again")

    monkeypatch.setattr(run_module, "generate_texts", no_generation)
    again = synthesize(model, tokenizer, sae, targets, "rude words", out, budget=3, gen=GEN, progress=False)
    assert again.attempts == first.attempts and again.covered == []


def test_another_runs_output_is_refused(model, tokenizer, sae, tmp_path):
    targets = common_targets(model, tokenizer, sae, 1)
    out = tmp_path / "synth.jsonl"
    synthesize(model, tokenizer, sae, targets, "rude words", out, budget=3, gen=GEN, unit=1.0, progress=False)
    with pytest.raises(QwenscopeError, match="other settings \\(budget differs\\)"):
        synthesize(model, tokenizer, sae, targets, "rude words", out, budget=4, gen=GEN, progress=False)
    other = tmp_path / "notes.jsonl"
    other.write_text('{"text": "mine"}\n')
    with pytest.raises(QwenscopeError, match="not a synthesis run"):
        synthesize(model, tokenizer, sae, targets, "rude words", other, budget=3, gen=GEN, progress=False)


# ---------------------------------------------------------------- one-line errors
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_judge_names_the_fallback_in_one_line(tmp_path, capsys):
    seed = tmp_path / "seed.txt"
    seed.write_text("one text\n")
    code = main(
        [
            "synthesize",
            "--seed",
            str(seed),
            "--description",
            "rude words",
            "--inventory",
            "judge",
            "--judge-url",
            f"http://127.0.0.1:{closed_port()}/v1",
            "--judge-model",
            "m",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "unreachable" in err and "--inventory contrast" in err and "--judge-model <local HF model>" in err


def test_bad_input_gets_one_clear_line(model, tokenizer, sae, tmp_path):
    with pytest.raises(QwenscopeError, match="seed corpus is empty"):
        unreached(model, tokenizer, sae, HOOK, [Target(HOOK, 1, 1.0, "")], [])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(QwenscopeError, match="holds no texts"):
        cli_module.read_texts(str(empty))
    with pytest.raises(QwenscopeError, match="feature 64 is beyond this SAE's width: its ids run 0..63"):
        synthesize(model, tokenizer, sae, [Target(HOOK, 64, 1.0, "")], "rude", tmp_path / "o.jsonl", progress=False)
    with pytest.raises(QwenscopeError, match="feature 99 is beyond"):
        verify(model, tokenizer, sae, HOOK, ["text"], [99])
    with pytest.raises(QwenscopeError, match="rewrite method needs seed texts"):
        synthesize(
            model,
            tokenizer,
            sae,
            [Target(HOOK, 1, 1.0, "")],
            "rude",
            tmp_path / "r.jsonl",
            arms=[Arm("rewrite")],
            progress=False,
        )
    with pytest.raises(QwenscopeError, match="plain is the untargeted baseline"):
        SynthesizeConfig(seed="s.txt", description="rude", method="prompt,plain", features="1")
    with pytest.raises(QwenscopeError, match="needs --positives and --negatives"):
        SynthesizeConfig(seed="s.txt", description="rude")


def test_the_sampler_draws_from_the_nucleus_only():
    from qwenscope.apps.synthesize.generate import RowSampler

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]]))
    drawn = [RowSampler([s, s + 1000], 1.0, 0.7)(None, logits).argmax(-1) for s in range(300)]
    first, second = (torch.stack(drawn)[:, i].bincount(minlength=4) for i in (0, 1))
    assert first[2:].sum() == 0 and first[0] > first[1] > 0  # 0.5 + 0.3 reach 0.7: tokens 2 and 3 never
    assert (second == 0).sum() == 1 and (second > 60).sum() == 3  # 3 of the 4 equally likely tokens reach 0.7
