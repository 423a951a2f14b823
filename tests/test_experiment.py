"""qwenscope.experiment: the scripts' shared machinery (arguments, environment block, timing, result files, memory)."""

from __future__ import annotations

import argparse
import json
import time

import pytest
import torch
from tiny_models import build_tiny, make_byte_tokenizer, tiny_config

from qwenscope import experiment
from qwenscope.experiment import (
    add_common_args,
    environment,
    interleaved,
    medians,
    peak_rss,
    probe_rss,
    set_threads,
    timed,
    timed_cpu,
    write_result,
)

ENV_KEYS = {
    "date",
    "git_commit",
    "git_dirty",
    "python",
    "torch",
    "transformers",
    "machine",
    "cpu",
    "cpu_count",
    "cpu_capability",
    "aten_cpu_capability",
    "threads",
    "gpu",
}


def test_medians_are_per_variant_medians():
    assert medians({"a": [3.0, 1.0, 2.0], "b": [4.0, 1.0, 2.0, 3.0]}) == {"a": 2.0, "b": 2.5}


def test_interleaved_runs_variants_in_turn_and_warms_up_untimed():
    calls: list[str] = []
    variants = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    ticks = iter(range(100))
    runs = interleaved(variants, 3, timer=lambda fn: (fn(), next(ticks))[1], warmup=True)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up once each, then alternating
    assert runs == {"a": [0, 2, 4], "b": [1, 3, 5]}  # the warm-up is not timed


def test_interleaved_reports_progress_after_each_repeat():
    seen: list[tuple[int, int]] = []
    interleaved({"a": lambda: None}, 2, progress=lambda r, runs: seen.append((r, len(runs["a"]))))
    assert seen == [(0, 1), (1, 2)]


def test_timed_measures_the_call():
    assert 0.015 <= timed(lambda: time.sleep(0.02)) < 1.0
    wall, cpu = timed_cpu(lambda: time.sleep(0.02))
    assert wall >= 0.015 and cpu < wall  # sleeping costs no CPU
    busy_wall, busy_cpu = timed_cpu(lambda: sum(i * i for i in range(200_000)))
    assert busy_cpu > 0 and busy_wall > 0


def test_environment_block_has_the_keys_and_is_json():
    env = environment()
    assert ENV_KEYS <= env.keys()
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert json.loads(json.dumps(env)) == env


def test_write_result_round_trip_keeps_keys_and_adds_environment(tmp_path):
    result = {"bench": "x", "rows": [{"variant": "a", "median_s": 0.5}], "text": "ñ"}
    path = write_result(tmp_path / "sub" / "x.json", result, ensure_ascii=False)
    assert path.read_text(encoding="utf-8").endswith("\n") and "ñ" in path.read_text(encoding="utf-8")
    back = json.loads(path.read_text(encoding="utf-8"))
    assert list(back)[:3] == ["bench", "rows", "text"] and list(back)[-1] == "environment"
    assert {k: back[k] for k in result} == result
    assert ENV_KEYS <= back["environment"].keys()
    assert "environment" not in result  # the caller's dict is untouched


def test_add_common_args_adds_only_the_asked_flags_with_their_defaults():
    parser = add_common_args(argparse.ArgumentParser(), threads=0, repeats=5, out="r.json")
    args = parser.parse_args([])
    assert (args.threads, args.repeats, args.out) == (0, 5, "r.json")
    assert not hasattr(args, "device") and not hasattr(args, "seed")
    args = add_common_args(argparse.ArgumentParser(), device="auto", seed=3).parse_args(["--seed", "4"])
    assert args.device == ("cuda" if torch.cuda.is_available() else "cpu") and args.seed == 4


def test_set_threads_zero_keeps_torch_choice():
    before = torch.get_num_threads()
    assert set_threads(0) == before and set_threads(None) == before


def test_peak_rss_runs_code_in_a_fresh_process():
    report = peak_rss("import sys\nresult = [sys.argv[1:], len(b'x' * (128 << 20))]", "a", "b")
    assert report["result"] == [["a", "b"], 128 << 20]
    assert report["peak_rss_mib"] == report["rss_kb"] / 1024 and report["seconds"] >= 0
    small = peak_rss("result = 0")
    assert report["rss_kb"] - small["rss_kb"] > 100 * 1024  # the 128 MiB buffer (pages written) is in the peak
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        peak_rss("result = 1 / 0")


def test_probe_rss_streams_the_tokens():
    report = probe_rss("stream", 4096)
    assert report["n"] == 4096 and report["rss_kb"] > 0 and report["seconds"] > 0


def test_probe_workloads_match_the_test_models():
    """The probes build the same tiny Llama, byte tokenizer and SAE as the tests' helpers (no tests/ import)."""
    assert experiment.tiny_llama(2).config.to_dict() == tiny_config("llama", 2).to_dict()
    ours, theirs = experiment.tiny_llama(), build_tiny("llama")
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    text = "héllo wörld"
    for chat in (False, True):
        assert experiment.byte_tokenizer(chat)(text)["input_ids"] == make_byte_tokenizer(chat)(text)["input_ids"]
        assert len(experiment.byte_tokenizer(chat)) == len(make_byte_tokenizer(chat))


def test_load_script_imports_a_file_once(tmp_path):
    script = tmp_path / "helper_mod.py"
    script.write_text("from dataclasses import dataclass\n@dataclass\nclass A:\n    x: int = 1\nCOUNT = [0]\n")
    module = experiment.load_script(script)
    assert module.A().x == 1
    module.COUNT[0] += 1
    assert experiment.load_script(script).COUNT == [1]  # the same module, not a re-import
