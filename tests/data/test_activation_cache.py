"""The on-disk activation cache: round trip, seeded resumable batches, crash-safe resume, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwenscope.data import ActivationCache, ActivationStream, StreamConfig, write_cache
from qwenscope.data import cache as cache_module
from qwenscope.errors import QwenscopeError

HOOKS = ["resid_post.1", "resid_post.3"]
N = 1000
SHARD = 300  # shards of 300, 300, 300, 100 rows


@pytest.fixture
def stream(tiny_llama, byte_tokenizer, corpus):
    _, docs = corpus
    cfg = StreamConfig(seq_len=16, batch_size=3, out_batch=64, buffer_tokens=256, progress=False)
    return ActivationStream(tiny_llama, byte_tokenizer, docs, HOOKS, cfg)


@pytest.fixture
def rows(stream):
    """The first N rows the stream yields, per hookpoint."""
    batches = list(stream.with_config(max_tokens=N))
    return {name: torch.cat([b[name] for b in batches]) for name in HOOKS}


def _shard_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


def test_round_trip_fp32_and_fp16(stream, rows, tmp_path):
    caches = write_cache(stream, tmp_path / "f32", N, shard_tokens=SHARD, dtype="float32")
    for name in HOOKS:
        cache = caches[name]
        assert (cache.n_tokens, cache.d_in, cache.hookpoint) == (N, 64, name)
        assert torch.equal(torch.cat([cache.load_shard(i) for i in range(4)]), rows[name])
        assert torch.equal(torch.cat(list(cache.batches(100, shuffle=False))), rows[name])
    cfg = json.loads((tmp_path / "f32" / "resid_post.3" / "cfg.json").read_text())
    assert cfg["shards"] == [f"shard_{i:05d}.safetensors" for i in range(4)] and cfg["shard_sizes"] == [300] * 3 + [100]
    assert (cfg["model"], cfg["hookpoint"], cfg["d_in"], cfg["dtype"], cfg["n_tokens"]) == (
        "llama",
        "resid_post.3",
        64,
        "float32",
        N,
    )
    assert cfg["complete"] and cfg["stream"]["seq_len"] == 16 and cfg["stream"]["max_tokens"] == N
    half = write_cache(stream, tmp_path / "f16", N, shard_tokens=SHARD)["resid_post.1"]
    assert half.load_shard(0).dtype == torch.float16
    batch = next(half.batches(N, shuffle=False))
    assert batch.dtype == torch.float32 and torch.equal(batch, rows["resid_post.1"].half().float())


def test_batches_are_seeded_complete_and_resumable(stream, tmp_path):
    cache = write_cache(stream, tmp_path, N, shard_tokens=SHARD, dtype="float32")["resid_post.1"]
    ordered = next(cache.batches(N, shuffle=False))
    one = list(cache.batches(100, seed=5))
    assert len(one) == 10 == cache.num_batches(100)
    assert torch.equal(torch.cat(one).sort(dim=0).values, ordered.sort(dim=0).values)  # every row once
    assert not torch.equal(torch.cat(one), ordered)
    assert all(torch.equal(a, b) for a, b in zip(one, cache.batches(100, seed=5), strict=True))
    assert not torch.equal(torch.cat(one), torch.cat(list(cache.batches(100, seed=6))))
    full = list(cache.batches(70, seed=1, epochs=3))  # 70 does not divide the shards: batches straddle them
    assert len(full) == 3 * N // 70 and all(b.shape == (70, 64) for b in full)
    flat = torch.cat(full)  # rows of epoch e are flat[e * N : (e + 1) * N]
    assert torch.equal(flat[N : 2 * N].sort(0).values, ordered.sort(0).values)  # each epoch has every row once
    assert not torch.equal(flat[:N], flat[N : 2 * N])  # in a new order
    for start in (0, 1, 4, 14, 15, 29, 42):
        resumed = list(cache.batches(70, seed=1, epochs=3, start_batch=start))
        assert len(resumed) == len(full) - start
        assert all(torch.equal(a, b) for a, b in zip(resumed, full[start:], strict=True))


def test_resume_after_a_kill_gives_identical_shards(stream, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    write_cache(stream, whole, N, shard_tokens=SHARD)
    original = ActivationStream.__iter__

    def killed_after(n_batches):
        def iterate(self):
            for i, batch in enumerate(original(self)):
                if i == n_batches:
                    raise KeyboardInterrupt("killed")
                yield batch

        return iterate

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(ActivationStream, "__iter__", killed_after(11))  # 704 rows: two shards committed
    with pytest.raises(KeyboardInterrupt):
        write_cache(stream, resumed, N, shard_tokens=SHARD)
    partial = json.loads((resumed / "resid_post.1" / "cfg.json").read_text())
    assert partial["n_tokens"] == 600 and not partial["complete"]
    with pytest.raises(QwenscopeError, match="other settings"):  # a resume must use the same settings
        write_cache(stream, resumed, N, shard_tokens=SHARD + 1)
    monkeypatch.setattr(ActivationStream, "__iter__", original)
    write_cache(stream, resumed, N, shard_tokens=SHARD)
    assert _shard_bytes(resumed) == _shard_bytes(whole)
    assert not list(resumed.rglob("*.tmp"))


def test_kill_between_hookpoint_configs_resumes(stream, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    write_cache(stream, whole, N, shard_tokens=SHARD)
    calls = {"n": 0}
    original = cache_module._write_cfg

    def write_cfg(path, state):
        calls["n"] += 1
        if calls["n"] == 4:  # shard 1 of resid_post.1 committed, resid_post.3 still at shard 0
            raise KeyboardInterrupt("killed")
        original(path, state)

    monkeypatch.setattr(cache_module, "_write_cfg", write_cfg)
    folder = tmp_path / "split"
    with pytest.raises(KeyboardInterrupt):
        write_cache(stream, folder, N, shard_tokens=SHARD)
    monkeypatch.setattr(cache_module, "_write_cfg", original)
    counts = [json.loads((folder / h / "cfg.json").read_text())["n_tokens"] for h in HOOKS]
    assert counts == [600, 300]
    write_cache(stream, folder, N, shard_tokens=SHARD)
    assert _shard_bytes(folder) == _shard_bytes(whole)


def test_complete_cache_is_written_once(stream, tmp_path, monkeypatch):
    write_cache(stream, tmp_path, N, shard_tokens=SHARD)

    def no_stream(self):
        raise AssertionError("the stream must not run again")

    monkeypatch.setattr(ActivationStream, "__iter__", no_stream)
    caches = write_cache(stream, tmp_path, N, shard_tokens=SHARD)
    assert caches["resid_post.3"].n_tokens == N
    cfg_path = tmp_path / "resid_post.3" / "cfg.json"  # as if killed while marking the hookpoints complete
    cfg_path.write_text(cfg_path.read_text().replace('"complete": true', '"complete": false'))
    assert not ActivationCache(cfg_path.parent).cfg["complete"]
    write_cache(stream, tmp_path, N, shard_tokens=SHARD)
    assert ActivationCache(cfg_path.parent).cfg["complete"]


def test_opening_by_top_folder_and_hookpoint(stream, tmp_path):
    write_cache(stream, tmp_path, N, shard_tokens=SHARD)
    assert ActivationCache(tmp_path, hookpoint="resid_post.3").hookpoint == "resid_post.3"
    with pytest.raises(QwenscopeError, match=r"several hookpoints \(resid_post.1, resid_post.3\); pass hookpoint="):
        ActivationCache(tmp_path)
    assert ActivationCache(tmp_path / "resid_post.1", expected_d_in=64).d_in == 64


def test_reading_errors(stream, tmp_path):
    folder = tmp_path / "c" / "resid_post.1"
    write_cache(stream, tmp_path / "c", N, shard_tokens=SHARD)
    with pytest.raises(QwenscopeError, match=r"holds d_in=64 activations \(resid_post.1 of llama\), expected d_in=576"):
        ActivationCache(folder, expected_d_in=576)
    bad = load_file(str(folder / "shard_00002.safetensors"))["activations"]
    bad[7, 3] = float("nan")
    save_file({"activations": bad}, str(folder / "shard_00002.safetensors"))
    with pytest.raises(QwenscopeError, match="shard .*shard_00002.safetensors holds NaN or inf"):
        list(ActivationCache(folder).batches(100, shuffle=False))
    (folder / "shard_00003.safetensors").unlink()
    with pytest.raises(QwenscopeError, match=r"lacks shard files \['shard_00003.safetensors'\]"):
        ActivationCache(folder)
    (tmp_path / "plain").mkdir()
    with pytest.raises(QwenscopeError, match="is not an activation cache \\(no cfg.json\\)"):
        ActivationCache(tmp_path / "plain")
    (tmp_path / "plain" / "cfg.json").write_text('{"d_in": 64, "d_sae": 512}')  # an SAE folder, say
    with pytest.raises(QwenscopeError, match="is not an activation cache"):
        ActivationCache(tmp_path / "plain")
    with pytest.raises(QwenscopeError, match="does not exist"):
        ActivationCache(tmp_path / "nowhere")


def test_empty_cache_error(stream, tmp_path):
    folder = tmp_path / "resid_post.1"
    write_cache(stream, tmp_path, N, shard_tokens=SHARD)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(shards=[], shard_sizes=[], n_tokens=0, complete=False)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(QwenscopeError, match="is empty"):
        ActivationCache(folder)


def test_writing_errors(stream, tmp_path, monkeypatch):
    with pytest.raises(QwenscopeError, match="unknown cache dtype"):
        write_cache(stream, tmp_path / "a", N, dtype="bfloat8")

    def huge(self):
        yield {name: torch.full((64, 64), 1e5) for name in HOOKS}

    monkeypatch.setattr(ActivationStream, "__iter__", huge)
    with pytest.raises(QwenscopeError, match="exceed the torch.float16 range.*dtype='float32'"):
        write_cache(stream, tmp_path / "b", N)
    assert write_cache(stream, tmp_path / "c", 64, dtype="float32")["resid_post.1"].n_tokens == 64

    def nan(self):
        yield {name: torch.full((64, 64), float("nan")) for name in HOOKS}

    monkeypatch.setattr(ActivationStream, "__iter__", nan)
    with pytest.raises(QwenscopeError, match="NaN or inf activations at resid_post.1"):
        write_cache(stream, tmp_path / "d", N)


def test_batches_argument_errors(stream, tmp_path):
    cache = write_cache(stream, tmp_path, 200, shard_tokens=SHARD)["resid_post.1"]
    with pytest.raises(QwenscopeError, match="fewer than one batch"):
        list(cache.batches(500))
    with pytest.raises(QwenscopeError, match="must be positive"):
        list(cache.batches(0))
