"""The SAEs shipped inside the package: they load by model name, fit their model, and are really trained."""

import json

import pytest
import torch

from qwenscope import QwenscopeError, load_sae
from qwenscope.sae.load import EMBEDDED_DIR, embedded_saes


def test_shipped_saes_load_and_are_trained():
    shipped = embedded_saes()
    assert shipped.get("smollm2-135m"), "the smollm2-135m SAE suite is missing from qwenscope/assets"
    for model, hookpoints in shipped.items():
        for hp in hookpoints:
            sae = load_sae(model, hookpoint=hp)
            assert sae.cfg.model == model and sae.cfg.hookpoint == hp and sae.dtype == torch.float32
            assert (EMBEDDED_DIR / model / hp / "sae.safetensors").stat().st_size <= 25.1 * 2**20  # ~25 MiB
            norms = sae.W_dec.norm(dim=1)
            torch.testing.assert_close(norms, torch.ones_like(norms), atol=2e-3, rtol=0)  # unit decoder rows
            report = json.loads((EMBEDDED_DIR / model / hp / "eval.json").read_text())
            assert report["explained_variance"] > 0.5, "a shipped SAE must reconstruct (random ones give < 0)"


def test_unknown_shipped_sae():
    with pytest.raises(QwenscopeError, match="no shipped SAE for smollm2-135m at resid_post.29"):
        load_sae("smollm2-135m", hookpoint="resid_post.29")


def test_every_embedded_model_ships_a_suite_and_a_default():
    shipped = embedded_saes()
    assert set(shipped["smollm2-135m"]) >= {"resid_post.3", "resid_post.15", "resid_post.25"}  # early, middle, late
    assert "resid_post.9" in shipped["gemma3-270m"]
    assert load_sae("smollm2-135m").cfg.hookpoint == "resid_post.15"  # no hookpoint: the middle layer
    assert load_sae("gemma3-270m").cfg.hookpoint == "resid_post.9"
