"""Every SAE that ships with qwenscope ships its feature statistics: from at least 1M tokens, for exactly its weights
and with the default settings (so ``get_or_build_store`` uses them instead of an hour-long pass), a few MB each.

When the SAE files are replaced, rebuild them (one pass per model; see the README):
    qwenscope stats --model smollm2-135m --hookpoint resid_post.3,resid_post.15,resid_post.25 --n-tokens 1000000 --pack
    qwenscope stats --model gemma3-270m --n-tokens 1000000 --pack
"""

from __future__ import annotations

import dataclasses

import pytest

from qwenscope.features.packed import read_meta, sae_fingerprint, stats_file_for
from qwenscope.features.stats import StatsConfig
from qwenscope.sae.load import embedded_saes, load_sae

SHIPPED = [(model, hook) for model, hooks in embedded_saes().items() for hook in hooks]
RESULT_FREE = ("n_tokens", "batch_size", "progress")


@pytest.mark.parametrize(("model", "hook"), SHIPPED)
def test_shipped_sae_has_its_statistics(model, hook):
    path = stats_file_for(model, hook)
    assert path is not None and path.is_file(), f"no packed statistics at {path}"
    meta = read_meta(path)
    assert meta["sae_fingerprint"] == sae_fingerprint(load_sae(model, hookpoint=hook)), "stale: rebuild (module doc)"
    assert meta["hookpoint"] == hook and meta["n_tokens"] >= 1_000_000
    defaults = dataclasses.asdict(StatsConfig())
    assert {k: v for k, v in meta["config"].items() if k not in RESULT_FREE} == {
        k: v for k, v in defaults.items() if k not in RESULT_FREE
    }
    assert path.stat().st_size < 6 * 2**20  # a few MB beside a ~21-26 MB SAE
