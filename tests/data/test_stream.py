"""ActivationStream: rows align across hookpoints, masks apply, the buffer is bounded, the order is seeded."""

from __future__ import annotations

import pytest
import torch

from qwenscope import get_activations
from qwenscope.data import ActivationStream, StreamConfig, chunk_tokens, token_mask
from qwenscope.data import stream as stream_module
from qwenscope.errors import QwenscopeError
from qwenscope.experiment import probe_rss as peak_rss

HOOKS = ["resid_post.0", "mlp_out.2", "resid_post.3"]


def _cfg(**changes) -> StreamConfig:
    base = dict(seq_len=16, batch_size=3, out_batch=32, buffer_tokens=128, progress=False, positions=True)
    return StreamConfig(**{**base, **changes})


def _collect(stream) -> dict[str, torch.Tensor]:
    batches = list(stream)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_rows_align_across_hookpoints_by_recomputation(tiny_llama, byte_tokenizer, corpus):
    _, docs = corpus
    out = _collect(ActivationStream(tiny_llama, byte_tokenizer, docs, HOOKS, _cfg(outlier_m=3.0)))
    chunks = list(chunk_tokens(docs, byte_tokenizer, 16))
    by_chunk: dict[int, dict[str, torch.Tensor]] = {}
    for i, (c, p) in enumerate(out["positions"].tolist()):
        if c not in by_chunk:
            by_chunk[c] = get_activations(tiny_llama, chunks[c][None], HOOKS)
        for name in HOOKS:
            # streamed batches vs one chunk alone: other shapes, other reduction order: fp32 ~1e-6
            torch.testing.assert_close(out[name][i], by_chunk[c][name][0, p], rtol=1e-5, atol=1e-5)
    assert all(out[name].dtype == torch.float32 and out[name].shape == (len(out["positions"]), 64) for name in HOOKS)


def test_masks_and_coverage(tiny_llama, byte_tokenizer, corpus):
    _, docs = corpus
    out = _collect(ActivationStream(tiny_llama, byte_tokenizer, docs, HOOKS, _cfg(outlier_m=None)))
    chunks = torch.stack(list(chunk_tokens(docs, byte_tokenizer, 16)))
    kept = token_mask(chunks, byte_tokenizer).nonzero().tolist()  # every position the masks keep
    seen = [tuple(p) for p in out["positions"].tolist()]
    assert len(set(seen)) == len(seen)  # each token at most once
    assert set(seen) <= {tuple(p) for p in kept}  # no position 0, no EOS
    assert len(kept) - len(seen) < 32  # all but the last partial batch
    assert seen != sorted(seen)  # shuffled


def test_outlier_filter_keeps_the_same_positions_everywhere(tiny_llama, byte_tokenizer, corpus):
    _, docs = corpus
    loose = _collect(ActivationStream(tiny_llama, byte_tokenizer, docs, HOOKS, _cfg(outlier_m=None)))
    tight = _collect(ActivationStream(tiny_llama, byte_tokenizer, docs, HOOKS, _cfg(outlier_m=1.0)))
    assert len(tight["positions"]) < 0.6 * len(loose["positions"])  # about half the norms exceed the median
    assert all(len(tight[name]) == len(tight["positions"]) for name in HOOKS)


def test_deterministic_given_seed(tiny_llama, byte_tokenizer, corpus):
    _, docs = corpus
    a = _collect(ActivationStream(tiny_llama, byte_tokenizer, docs, HOOKS, _cfg(seed=3)))
    b = _collect(ActivationStream(tiny_llama, byte_tokenizer, docs, HOOKS, _cfg(seed=3)))
    c = _collect(ActivationStream(tiny_llama, byte_tokenizer, docs, HOOKS, _cfg(seed=4)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["positions"], c["positions"])


def test_max_tokens_batches_and_repeat(tiny_llama, byte_tokenizer, corpus, caplog):
    _, docs = corpus
    cfg = _cfg(max_tokens=5000, positions=False, repeat=True)
    batches = list(ActivationStream(tiny_llama, byte_tokenizer, docs, ["resid_post.1"], cfg))
    assert [len(b["resid_post.1"]) for b in batches] == [32] * 156 + [8]
    assert set(batches[0]) == {"resid_post.1"}
    one_pass = ActivationStream(tiny_llama, byte_tokenizer, docs, ["resid_post.1"], _cfg())
    total = sum(len(b["resid_post.1"]) for b in one_pass)
    assert total < 5000  # so the run above needed a second pass over the corpus
    with caplog.at_level("WARNING"):
        short = list(ActivationStream(tiny_llama, byte_tokenizer, docs, ["resid_post.1"], _cfg(max_tokens=10**6)))
    assert sum(len(b["resid_post.1"]) for b in short) == total and "use repeat=True" in caplog.text


def test_source_name_is_read_with_the_split(tiny_llama, byte_tokenizer, corpus):
    path, docs = corpus
    by_name = _collect(ActivationStream(tiny_llama, byte_tokenizer, str(path), HOOKS, _cfg(split="all")))
    by_list = _collect(ActivationStream(tiny_llama, byte_tokenizer, docs, HOOKS, _cfg()))
    # the same stream, hookpoints named two ways: same kernels, same shapes: bit-identical
    assert torch.equal(by_name["resid_post.3"], by_list["resid_post.3"])
    train = _collect(ActivationStream(tiny_llama, byte_tokenizer, str(path), HOOKS, _cfg(split="train")))
    assert len(train["positions"]) < len(by_name["positions"])


def test_buffer_is_allocated_once_and_never_overflows(tiny_llama, byte_tokenizer, corpus, monkeypatch):
    _, docs = corpus
    buffers: list[stream_module.ShuffleBuffer] = []
    fills: list[int] = []
    original_init, original_add = stream_module.ShuffleBuffer.__init__, stream_module.ShuffleBuffer.add

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        buffers.append(self)

    def add(self, rows):
        pointers = {k: v.data_ptr() for k, v in self.data.items()}
        original_add(self, rows)
        fills.append(self.fill)
        assert all(self.data[k].data_ptr() == p for k, p in pointers.items())  # no reallocation

    monkeypatch.setattr(stream_module.ShuffleBuffer, "__init__", init)
    monkeypatch.setattr(stream_module.ShuffleBuffer, "add", add)
    cfg = _cfg(max_tokens=3000, repeat=True)
    list(ActivationStream(tiny_llama, byte_tokenizer, docs, HOOKS, cfg))
    (buffer,) = buffers
    assert buffer.capacity == cfg.buffer_tokens + cfg.batch_size * cfg.seq_len
    assert max(fills) <= buffer.capacity and len(fills) > 20
    assert all(t.shape[0] == buffer.capacity for t in buffer.data.values())


def test_shuffle_buffer_take_is_a_uniform_subset_and_keeps_the_rest():
    buffer = stream_module.ShuffleBuffer(10, torch.Generator().manual_seed(0))
    buffer.add({"a": torch.arange(8.0)[:, None], "b": torch.arange(8)[:, None] * 10})
    taken = buffer.take(3)
    assert torch.equal(taken["a"].long() * 10, taken["b"])  # same rows for every key
    rest = buffer.data["a"][: buffer.fill, 0].tolist()
    assert sorted(rest + taken["a"][:, 0].tolist()) == list(range(8)) and buffer.fill == 5


def test_errors(tiny_llama, byte_tokenizer, corpus):
    _, docs = corpus
    with pytest.raises(QwenscopeError, match="shorter than one chunk"):
        list(ActivationStream(tiny_llama, byte_tokenizer, ["tiny"], HOOKS, _cfg()))
    with pytest.raises(QwenscopeError, match="repeat=True needs max_tokens"):
        _cfg(repeat=True)
    with pytest.raises(QwenscopeError, match=r"buffer_tokens \(16\) must be at least out_batch \(32\)"):
        _cfg(buffer_tokens=16)
    with pytest.raises(QwenscopeError, match="unknown split"):
        _cfg(split="dev")
    with pytest.raises(QwenscopeError, match="re-iterable"):
        list(ActivationStream(tiny_llama, byte_tokenizer, iter(docs), HOOKS, _cfg(repeat=True, max_tokens=10**5)))


def test_real_model_sinks_are_filtered_by_norm():
    from qwenscope import load_model

    model, tokenizer = load_model("smollm2-135m")
    cfg = _cfg(seq_len=32, batch_size=2, out_batch=16, buffer_tokens=64, drop_first=False)
    texts = ["The Eiffel Tower is in Paris. It was built in 1889 for the World's Fair."] * 8
    out = _collect(ActivationStream(model, tokenizer, texts, ["resid_post.15"], cfg))
    assert (out["positions"][:, 1] > 0).all()  # position 0 (norm ~20,000 vs a median ~170) is an outlier
    assert out["resid_post.15"].norm(dim=-1).max() < 10 * out["resid_post.15"].norm(dim=-1).median()


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_tokens():
    small, large = peak_rss("stream", 100_000), peak_rss("stream", 1_000_000)
    assert small["n"] == 100_000 and large["n"] == 1_000_000
    assert large["rss_kb"] <= 1.2 * small["rss_kb"], (small, large)


def test_hookpoints_are_resolved_once_per_pass_not_per_forward(tiny_llama, byte_tokenizer, corpus, monkeypatch):
    from qwenscope.models import hookpoints

    _, docs = corpus
    calls = []
    resolve = hookpoints.resolve_hookpoint
    monkeypatch.setattr(hookpoints, "resolve_hookpoint", lambda model, name: calls.append(name) or resolve(model, name))
    forwards = []
    monkeypatch.setattr(
        stream_module, "get_activations", lambda *a, **kw: forwards.append(1) or get_activations(*a, **kw)
    )
    list(ActivationStream(tiny_llama, byte_tokenizer, docs, HOOKS, _cfg()))
    assert len(forwards) > 3 and sorted(calls) == sorted(HOOKS)
