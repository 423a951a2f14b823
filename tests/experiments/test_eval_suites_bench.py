"""bench/perf/eval_suites.py (the issue-23 device check): its random model and SAE load through the real paths, and
the core suite runs end to end at the tiny size."""

import json

import pytest
from bench_scripts import bench_script

from qwenscope import QwenscopeError, load_sae
from qwenscope.models import load_model


@pytest.fixture(scope="module")
def bench():
    with bench_script("eval_suites") as module:
        yield module


def test_the_random_layer_loads_as_a_qwen_scope_release_file(bench, tmp_path):
    release = tmp_path / "SAE-Res-Qwen3-1.7B-Base-W32K-L0_50"
    release.mkdir()
    bench.write_sae(release / "layer1.sae.pt", 64, 512, seed=0)
    with pytest.raises(QwenscopeError, match="does not belong to this release"):  # the full run's name checks shapes
        load_sae(str(release / "layer1.sae.pt"))
    tiny = tmp_path / "SAE-Res-Tiny-W1K-L0_50"  # the --tiny run's name
    tiny.mkdir()
    bench.write_sae(tiny / "layer1.sae.pt", 64, 512, seed=0)
    sae = load_sae(str(tiny / "layer1.sae.pt"))
    assert (sae.d_in, sae.d_sae, sae.cfg.k) == (64, 512, 50)  # k from the release name
    bench.write_model(tmp_path / "model", bench.TINY, bench.torch.float32, seed=0)
    model, tokenizer = load_model(str(tmp_path / "model"))
    assert model.config.hidden_size == 64 and len(tokenizer) == model.config.vocab_size


def test_the_core_suite_is_timed_at_the_tiny_size(bench, tmp_path):
    out = tmp_path / "suites.json"
    result = bench.main(["--tiny", "--suites", "core", "--n-tokens", "64", "--device", "cpu", "--out", str(out)])
    assert set(result["seconds"]) == {"core"} and result["seconds"]["core"] > 0
    assert json.loads(out.read_text())["sae"] == {"d_in": 64, "d_sae": 512, "k": 50, "hookpoint": "resid_post.1"}
