"""compute_feature_stats against a brute-force dense computation on a tiny Llama; the logit lens against the model's
own norm and lm_head; peak memory that does not grow with the token count."""

from __future__ import annotations

import pytest
import torch
from features_helpers import make_sae
from floats import assert_topk_ids_close
from tiny_models import build_tiny

from qwenscope import get_activations
from qwenscope.data import chunk_tokens, norm_outlier_mask, token_mask
from qwenscope.errors import QwenscopeError
from qwenscope.experiment import probe_rss as peak_rss
from qwenscope.features.stats import StatsConfig, compute_feature_stats, compute_feature_stats_many, logit_lens

HOOK = "resid_post.1"


def _cfg(**changes) -> StatsConfig:
    base = dict(
        n_tokens=10**9,
        seq_len=32,
        batch_size=4,
        top_n=5,
        window_before=6,
        window_after=2,
        hist_bins=8,
        hist_min=0.01,
        hist_max=10.0,
        lens_top=3,
        outlier_m=3.0,
        progress=False,
    )
    return StatsConfig(**{**base, **changes})


def _dense(model, tokenizer, sae, docs, cfg):
    """Every chunk's ids (T, S) and dense activations (T, S, d_sae), 0 where not scored, computed the plain way."""
    chunks = torch.stack(list(chunk_tokens(docs, tokenizer, cfg.seq_len)))
    zs = []
    for ids in chunks.split(cfg.batch_size):
        acts = get_activations(model, ids, [HOOK])[HOOK]
        keep = token_mask(ids, tokenizer)
        if cfg.outlier_m is not None:
            keep = norm_outlier_mask(acts, cfg.outlier_m, valid=keep)
        with torch.no_grad():
            zs.append(sae.encode(acts.reshape(-1, 64)).reshape(*ids.shape, -1) * keep[..., None])
    return chunks, torch.cat(zs)


def test_stats_match_brute_force(llama, byte_tokenizer, sae, docs):
    cfg = _cfg()
    stats = compute_feature_stats(llama, byte_tokenizer, sae, docs, cfg)
    ids, z = _dense(llama, byte_tokenizer, sae, docs, cfg)
    flat = z.reshape(-1, sae.d_sae)  # (tokens, d_sae)
    scored = token_mask(ids, byte_tokenizer).sum()
    assert 0.8 * scored < stats.n_tokens <= scored  # the outlier filter drops a few
    assert torch.equal(stats.count, (flat > 0).sum(0))
    assert (stats.count >= 5).sum() > 15  # enough features fill their top-5 for the test to mean something
    torch.testing.assert_close(stats.act_sum, flat.double().sum(0))
    torch.testing.assert_close(stats.max_act, flat.amax(0))
    torch.testing.assert_close(stats.mean_act, flat.double().sum(0) / (flat > 0).sum(0).clamp(min=1))
    assert torch.equal(stats.hist.sum(1), stats.count)
    f, t = (flat > 0).nonzero(as_tuple=True)
    bins = torch.bucketize(flat[f, t], stats.hist_edges[1:-1], right=True)
    assert torch.equal(stats.hist, torch.bincount(t * 8 + bins, minlength=sae.d_sae * 8).view(-1, 8))
    expected_top = flat.topk(5, dim=0).values.T  # (d_sae, 5): exactly the 5 largest of each feature
    torch.testing.assert_close(stats.top_acts, expected_top)
    assert stats.frequency.max() <= 1 and stats.lens is not None and stats.lens.promoted_ids.shape == (96, 3)


@pytest.mark.parametrize("batch_size,outlier_m", [(4, 3.0), (1, None), (200, None)])
def test_windows_hold_the_right_tokens_and_acts(llama, byte_tokenizer, sae, docs, batch_size, outlier_m):
    """Many small batches merged into the top-N store, or one big batch: the same top values, right windows."""
    cfg = _cfg(batch_size=batch_size, outlier_m=outlier_m)
    stats = compute_feature_stats(llama, byte_tokenizer, sae, docs, cfg)
    ids, z = _dense(llama, byte_tokenizer, sae, docs, cfg)
    torch.testing.assert_close(stats.top_acts, z.reshape(-1, sae.d_sae).topk(5, dim=0).values.T)
    checked = 0
    for feature in range(sae.d_sae):
        for rank in range(cfg.top_n):
            value = stats.top_acts[feature, rank]
            if value == 0:
                assert (stats.top_tokens[feature, rank] == -1).all()
                continue
            ties = ((z[..., feature] - value).abs() <= 1e-6).nonzero().tolist()  # equal prefixes tie exactly
            windows = [_window(ids, z, feature, chunk, pos) for chunk, pos in ties]
            match = [a for w, a in windows if torch.equal(stats.top_tokens[feature, rank], w)]
            assert match, (feature, rank)
            torch.testing.assert_close(stats.top_token_acts[feature, rank], match[0])
            assert stats.top_token_acts[feature, rank, 6] == value
            checked += 1
    assert checked > 100


def _window(ids, z, feature, chunk, pos, before=6, after=2):
    """Token ids and the feature's activations around (chunk, pos), -1 / 0 past the chunk edges."""
    tokens, acts = torch.full((before + 1 + after,), -1), torch.zeros(before + 1 + after)
    for j, at in enumerate(range(pos - before, pos + after + 1)):
        if 0 <= at < ids.shape[1]:
            tokens[j], acts[j] = ids[chunk, at], z[chunk, at, feature]
    return tokens, acts


def test_stops_after_n_tokens_and_errors(llama, byte_tokenizer, sae, docs, caplog):
    stats = compute_feature_stats(llama, byte_tokenizer, sae, docs, _cfg(n_tokens=200, batch_size=2))
    assert 200 <= stats.n_tokens < 200 + 2 * 32
    compute_feature_stats(llama, byte_tokenizer, sae, docs[:5], _cfg(n_tokens=10**6, lens_top=0))
    assert "ran out" in caplog.text
    with pytest.raises(QwenscopeError, match="shorter than one chunk"):
        compute_feature_stats(llama, byte_tokenizer, sae, ["hi"], _cfg())
    with pytest.raises(QwenscopeError, match="hist-min"):
        _cfg(hist_min=5.0, hist_max=1.0)
    with pytest.raises(QwenscopeError, match="top-n"):
        _cfg(top_n=0)


def test_logit_lens_includes_the_final_norm_weight(sae):
    """Gemma's final norm multiplies by (1 + w): the lens must see w (set to random values here)."""
    model = build_tiny("gemma3", num_layers=1)
    with torch.no_grad():
        model.model.norm.weight.normal_(0, 1.0)
    lens = logit_lens(model, sae, top=4)
    d = sae.W_dec
    normed = d / d.pow(2).mean(-1, keepdim=True).add(model.config.rms_norm_eps).sqrt() * (1 + model.model.norm.weight)
    logits = normed @ model.model.embed_tokens.weight.T  # tied lm_head
    # the model's norm module, in chunks, vs this formula: other ops, fp32 ~1e-6; the ids may swap only on near-ties
    assert_topk_ids_close(lens.promoted_ids, logits, largest=True)
    assert_topk_ids_close(lens.suppressed_ids, logits, largest=False)
    torch.testing.assert_close(lens.promoted_values, logits.topk(4, dim=1).values, rtol=1e-4, atol=1e-4)
    plain = (d @ model.model.embed_tokens.weight.T).topk(4, dim=1).indices
    assert not torch.equal(plain, lens.promoted_ids)  # the weight matters


def test_one_pass_for_several_saes_equals_one_pass_each(llama, byte_tokenizer, sae, docs):
    """Three SAEs at two hookpoints share each forward; every result equals its own pass, also where one SAE stops
    earlier (its outlier filter keeps a different number of tokens)."""
    early = make_sae(d_sae=64, k=4, hookpoint="resid_post.0", seed=1)
    other = make_sae(d_sae=80, k=5, hookpoint="resid_post.1", seed=2)
    cfg = _cfg(n_tokens=600, batch_size=2, outlier_m=1.3)  # a tight filter: different counts per hookpoint
    together = compute_feature_stats_many(llama, byte_tokenizer, [sae, early, other], docs, cfg)
    assert together[0].n_tokens != together[1].n_tokens  # so one SAE reaches n_tokens a forward before the other
    for stats, one in zip(together, (sae, early, other)):
        alone = compute_feature_stats(llama, byte_tokenizer, one, docs, cfg)
        assert stats.hookpoint == alone.hookpoint == one.cfg.hookpoint and stats.n_tokens == alone.n_tokens
        for name in ("count", "act_sum", "max_act", "hist", "top_acts", "top_tokens", "top_token_acts"):
            # one pass for several SAEs vs one each: the same forwards of the same batches, same kernels, same shapes:
            # bit-identical
            assert torch.equal(getattr(stats, name), getattr(alone, name)), name
        assert torch.equal(stats.lens.promoted_ids, alone.lens.promoted_ids)
    with pytest.raises(QwenscopeError, match="one hookpoint"):
        compute_feature_stats_many(llama, byte_tokenizer, [sae, early], docs, cfg, ["resid_post.1"])


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_tokens():
    small, large = peak_rss("stats", 100_000), peak_rss("stats", 1_000_000)
    assert small["n"] >= 100_000 and large["n"] >= 1_000_000
    assert large["rss_kb"] <= 1.1 * small["rss_kb"], (small, large)


def test_hookpoint_is_resolved_once_not_per_forward(llama, byte_tokenizer, sae, docs, monkeypatch):
    from qwenscope.features import stats as stats_module
    from qwenscope.models import hookpoints

    calls, forwards = [], []
    resolve = hookpoints.resolve_hookpoint
    monkeypatch.setattr(hookpoints, "resolve_hookpoint", lambda model, name: calls.append(name) or resolve(model, name))
    monkeypatch.setattr(
        stats_module, "get_activations", lambda *a, **kw: forwards.append(1) or get_activations(*a, **kw)
    )
    compute_feature_stats(llama, byte_tokenizer, sae, docs, _cfg(lens_top=0))
    assert len(forwards) > 1 and calls == [HOOK]
