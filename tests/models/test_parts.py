"""load_model_and_saes: the shipped default, the pairing of SAE sources with hookpoints, and its one-line errors."""

import pytest
import torch
from tiny_models import TINY_HIDDEN, build_tiny

from qwenscope import QwenscopeError, Sae, SaeConfig, check_sae_fits
from qwenscope.models import load as model_load
from qwenscope.models import load_model, load_model_and_saes, sae_pairs
from qwenscope.sae import EMBEDDED_MODELS, embedded_saes


@pytest.fixture(scope="module")
def llama():
    """A 2-layer tiny Llama (hidden 64); module-scoped, do not change its weights."""
    return build_tiny("llama", num_layers=2)


@pytest.fixture
def tiny(monkeypatch, llama):
    """``load_model`` gives the tiny Llama whatever it is asked for; returns the (name, device, dtype) it got."""
    calls = []

    def fake(name, device="cpu", dtype=None):
        calls.append((name, device, dtype))
        return llama, "tokenizer"

    monkeypatch.setattr(model_load, "load_model", fake)
    return calls


def saved(folder, hookpoint: str | None, d_in: int = TINY_HIDDEN) -> str:
    """A small random SAE saved in ``folder``, recording ``hookpoint``; returns the folder as a string."""
    Sae(SaeConfig(d_in=d_in, d_sae=32, k=4, hookpoint=hookpoint)).save(folder)
    return str(folder)


def assert_names_fit(parts, model, given) -> None:
    """Each key is the name check_sae_fits resolves for its SAE at the hookpoint given (None: the SAE's own)."""
    assert list(parts.saes) == [check_sae_fits(sae, model, hp).name for sae, hp in zip(parts.saes.values(), given)]


def test_the_default_sae_of_an_embedded_model_is_its_shipped_one(monkeypatch):
    real = load_model("smollm2-135m")
    monkeypatch.setattr(model_load, "load_model", lambda name, device="cpu", dtype=None: real)
    shipped = embedded_saes()["smollm2-135m"]
    parts = load_model_and_saes("smollm2-135m")
    assert parts.hookpoints == ["resid_post.15"] and parts.sources == ["smollm2-135m"]  # load_sae's default layer
    assert parts.sae_id == "smollm2-135m" and parts.saes["resid_post.15"].cfg.model == "smollm2-135m"
    every = load_model_and_saes("smollm2-135m", no_hookpoints="shipped")  # classify's default: all of them
    assert every.hookpoints == shipped and every.sources == ["smollm2-135m"] * len(shipped)
    assert [s.cfg.hookpoint for s in every.saes.values()] == shipped
    assert_names_fit(every, real[0], shipped)
    some = load_model_and_saes("smollm2-135m", "", "resid_post.25, resid_post.3")  # hookpoints: those shipped SAEs
    assert [s.cfg.hookpoint for s in some.saes.values()] == some.hookpoints == ["resid_post.25", "resid_post.3"]


def test_one_source_serves_several_hookpoints(tmp_path, tiny, llama):
    multi = tmp_path / "multi"  # a folder of hookpoint folders
    for hp in ("resid_post.0", "resid_post.1"):
        saved(multi / hp, hp)
    parts = load_model_and_saes("tiny", str(multi), "resid_post.1,resid_post.0", k=4, device="cpu")
    assert parts.hookpoints == ["resid_post.1", "resid_post.0"]  # the order given
    assert [s.cfg.hookpoint for s in parts.saes.values()] == parts.hookpoints
    assert parts.sources == [str(multi)] * 2 and parts.sae_id == str(multi)
    assert parts.model is llama and parts.tokenizer == "tokenizer"
    assert_names_fit(parts, llama, ["resid_post.1", "resid_post.0"])


def test_one_hookpoint_per_source(tmp_path, tiny, llama):
    a, b = saved(tmp_path / "a", "resid_post.0"), saved(tmp_path / "b", None)
    parts = load_model_and_saes("tiny", [a, b], ["resid_post.1", "resid_post.0"], dtype=torch.float64)
    assert parts.hookpoints == ["resid_post.1", "resid_post.0"] and parts.sources == [a, b]
    assert parts.sae_id == f"{a},{b}"
    assert_names_fit(parts, llama, ["resid_post.1", "resid_post.0"])
    assert tiny == [("tiny", "cpu", torch.float64)]  # the dtype is the model's
    by_path = load_model_and_saes("tiny", a, "model.layers.0")  # a module path is its own name
    assert by_path.hookpoints == ["model.layers.0"]
    assert_names_fit(by_path, llama, ["model.layers.0"])


def test_no_hookpoints_means_each_saes_own(tmp_path, tiny, llama):
    a, c = saved(tmp_path / "a", "resid_post.0"), saved(tmp_path / "c", "resid_post.1")
    for mode in ("own", "shipped"):  # "shipped" only widens an embedded model's SAEs
        parts = load_model_and_saes("tiny", f"{c}, {a}", no_hookpoints=mode)
        assert parts.hookpoints == ["resid_post.1", "resid_post.0"] and parts.sources == [c, a]
        assert_names_fit(parts, llama, [None, None])
    assert load_model_and_saes("tiny", a).one()[0] == "resid_post.0"


def test_pairs_need_nothing_loaded():
    assert sae_pairs("m", "a", "h1,h2") == [("a", "h1"), ("a", "h2")]
    assert sae_pairs("m", "a,b", "h1,h2") == [("a", "h1"), ("b", "h2")]
    assert sae_pairs("m", ["a", "b"]) == [("a", None), ("b", None)]
    assert sae_pairs("smollm2-135m", None, None) == [("smollm2-135m", None)]
    shipped = embedded_saes()["gemma3-270m"]
    assert sae_pairs("x", "gemma3-270m", no_hookpoints="shipped") == [("gemma3-270m", hp) for hp in shipped]


def test_every_error_is_one_line_naming_the_fix(tmp_path, tiny):
    a, b = saved(tmp_path / "a", "resid_post.0"), saved(tmp_path / "b", None)
    wide = saved(tmp_path / "wide", "resid_post.0", d_in=2 * TINY_HIDDEN)
    cases = [
        (
            lambda: load_model_and_saes("tiny"),
            f"no SAE ships for tiny (only for {', '.join(EMBEDDED_MODELS)}); "
            "pass --sae (a folder, a file or a hub repo id)",
        ),
        (
            lambda: load_model_and_saes("tiny", f"{a},{b}", "resid_post.0,resid_post.1,resid_post.0"),
            "2 SAE sources but 3 hookpoints; pass one source for all hookpoints, one hookpoint per source, "
            "or no hookpoints",
        ),
        (
            lambda: load_model_and_saes("tiny", f"{a},{a}"),
            "two SAEs for hookpoint resid_post.0; give each hookpoint one SAE (run the others apart)",
        ),
        (
            lambda: load_model_and_saes("tiny", a, "resid_post.0,resid_post.0"),
            "two SAEs for hookpoint resid_post.0; give each hookpoint one SAE (run the others apart)",
        ),
        (
            lambda: load_model_and_saes("tiny", b),
            f"the SAE at {b} does not record its hookpoint; name the hookpoint it reads (e.g. resid_post.3)",
        ),
        (
            lambda: load_model_and_saes("tiny", f"{a},{a}", "resid_post.0,resid_post.1").one(),
            "this command reads one SAE, got 2 (at resid_post.0, resid_post.1); "
            "pass one --sae and at most one --hookpoint",
        ),
    ]
    for call, message in cases:
        with pytest.raises(QwenscopeError) as e:
            call()
        assert str(e.value) == message and "\n" not in message
    assert tiny.count(("tiny", "cpu", None)) == 4  # the two pairing errors came before the model loaded
    with pytest.raises(QwenscopeError, match="belongs to another model") as e:  # check_sae_fits' own error
        load_model_and_saes("tiny", wide)
    assert "\n" not in str(e.value)
