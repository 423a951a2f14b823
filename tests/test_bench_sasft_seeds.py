"""experiments/sasft/sasft_seeds.py: gathers per-seed SASFT runs, pairs the arms by training seed, refuses mixed
settings."""

import json
from pathlib import Path

import pytest
from bench_scripts import bench_script


@pytest.fixture(scope="module")
def seeds():
    with bench_script("sasft_seeds") as module:
        yield module


def arm(greedy: float, sampled: float, ppl: float, n: int = 100) -> dict:
    return {
        "code_switching": {"sentence_unwanted": greedy, "n_sentences": n},
        "code_switching_sampled": {"sentence_unwanted": sampled, "n_sentences": n},
        "ppl_bible_es": ppl,
    }


def run(path: Path, train_seed, results: dict, **config) -> Path:
    settings = {
        "seed": 0,
        "train_seed": train_seed,
        "lam": [0.01],
        "top": 32,
        "steps": 80,
        "out": str(path.parent),
        **config,
    }
    path.write_text(json.dumps({"config": settings, "arms": {"base": arm(0, 0, 40), **results}, "partial": False}))
    return path


def test_pairs_arms_by_training_seed(seeds, tmp_path):
    runs = [
        run(tmp_path / "a.json", None, {"sft": arm(0.4, 0.6, 32), "sasft": arm(0.2, 0.5, 33)}),
        run(tmp_path / "b.json", 1, {"sasft": arm(0.0, 0.2, 31)}, arms=["sasft"]),
        # the plain arm of seed 1, with the seed-1 SASFT arm it took by --reuse (the same result, counted once)
        run(tmp_path / "c.json", 1, {"sft": arm(0.1, 0.4, 30), "sasft": arm(0.0, 0.2, 31)}, arms=["sft"]),
    ]
    summary = seeds.summarise(seeds.gather(runs))
    assert summary["seeds"] == [0, 1]
    greedy = summary["arms"]["sasft"]["greedy"]
    assert greedy["per_seed"] == [0.2, 0.0] and greedy["median"] == pytest.approx(0.1)
    assert summary["arms"]["sft"]["greedy"]["pooled"] == pytest.approx(0.25)  # 50 English of 200 sentences
    paired = summary["paired"]["greedy"]
    assert paired["cut_per_seed"] == pytest.approx([0.5, 1.0]) and paired["sasft_lower"] == 2
    assert paired["cut_pooled"] == pytest.approx(1 - 0.1 / 0.25)
    assert summary["paired"]["ppl_change_per_seed"] == pytest.approx([33 / 32 - 1, 31 / 30 - 1])


def words(share: float, n: int) -> dict:
    return {"word_unwanted": share, "n_words": n}


def test_counts_english_words_and_empty_answers_where_every_run_measured_them(seeds, tmp_path):
    sft, sasft = arm(0.0, 0.1, 40), arm(0.0, 0.0, 41)
    for result, greedy, sampled, empty in ((sft, 0.0, 0.015, 31), (sasft, 0.0, 0.002, 15)):
        result.update(word_switching=words(greedy, 500), word_switching_sampled=words(sampled, 1000))
        result["code_switching"]["n_empty"] = empty
    summary = seeds.summarise(seeds.gather([run(tmp_path / "a.json", 0, {"sft": sft, "sasft": sasft})]))
    assert summary["metrics"] == ["greedy", "sampled", "words, greedy", "words, sampled"]
    sampled = summary["arms"]["sft"]["words, sampled"]
    assert (sampled["english"], sampled["total"]) == (15, 1000)
    assert summary["paired"]["words, sampled"]["cut_pooled"] == pytest.approx(1 - 2 / 15)
    assert summary["paired"]["words, greedy"]["cut_pooled"] is None  # plain SFT has no English word to cut
    assert [summary["arms"][a]["empty_greedy"] for a in ("sft", "sasft")] == [[31], [15]]
    assert "| sft, empty greedy answers | 31 | 31 | 31 |" in seeds.table(summary)
    # a run from before the word measure: the sentence metrics alone, for every run gathered
    older = run(tmp_path / "b.json", 1, {"sft": arm(0.1, 0.2, 40), "sasft": arm(0.1, 0.2, 40)})
    summary = seeds.summarise(seeds.gather([tmp_path / "a.json", older]))
    assert summary["metrics"] == ["greedy", "sampled"]
    assert "empty greedy answers" not in seeds.table(summary)


def test_refuses_runs_of_other_settings(seeds, tmp_path):
    runs = [
        run(tmp_path / "a.json", 0, {"sft": arm(0.4, 0.6, 32), "sasft": arm(0.2, 0.5, 33)}),
        run(tmp_path / "b.json", 1, {"sft": arm(0.4, 0.6, 32), "sasft": arm(0.2, 0.5, 33)}, lam=[0.05]),
    ]
    with pytest.raises(SystemExit, match=r"b.json has other settings than .*a.json \(lam\)"):
        seeds.gather(runs)


def test_refuses_two_different_results_for_one_arm_and_seed(seeds, tmp_path):
    runs = [
        run(tmp_path / "a.json", 0, {"sft": arm(0.4, 0.6, 32)}),
        run(tmp_path / "b.json", 0, {"sft": arm(0.3, 0.6, 32)}),
    ]
    with pytest.raises(SystemExit, match="second, different 'sft' result at training seed 0"):
        seeds.gather(runs)


def test_needs_a_seed_with_both_arms(seeds, tmp_path):
    runs = [
        run(tmp_path / "a.json", 0, {"sft": arm(0.4, 0.6, 32)}),
        run(tmp_path / "b.json", 1, {"sasft": arm(0, 0, 1)}),
    ]
    with pytest.raises(SystemExit, match="no training seed has both"):
        seeds.summarise(seeds.gather(runs))


def test_refuses_missing_and_foreign_files(seeds, tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        seeds.gather([tmp_path / "missing.json"])
    (tmp_path / "other.json").write_text(json.dumps({"settings": {}}))
    with pytest.raises(SystemExit, match="not a experiments/sasft/sasft.py result"):
        seeds.gather([tmp_path / "other.json"])
