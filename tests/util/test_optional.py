"""A missing optional library stops the feature that needs it with one line naming the extra to install."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from qwenscope import QwenscopeError
from qwenscope.util import require


def _missing(monkeypatch, module: str) -> None:
    """Make ``import module`` (and its submodules) fail as if the package were not installed."""
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # None in sys.modules: import raises ImportError


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert require("json", "none", "x").dumps([1]) == "[1]"
    _missing(monkeypatch, "sklearn")
    with pytest.raises(QwenscopeError) as err:
        require("sklearn.linear_model", "classify", "the probe")
    message = str(err.value)
    assert (
        message
        == "the probe needs scikit-learn, which is not installed; install it with: pip install 'qwenscope[classify]'"
    )
    assert "\n" not in message


def test_a_baseline_without_scikit_learn_names_the_classify_extra(monkeypatch):
    from qwenscope.apps.classify.baselines import Inputs, fit_baselines

    _missing(monkeypatch, "sklearn")
    train = Inputs(["a b", "c d", "e f", "g h"], acts=np.eye(4, dtype=np.float32))
    with pytest.raises(QwenscopeError, match=r"qwenscope\[classify\]"):
        fit_baselines(["act-probe"], train, np.array([0, 1, 0, 1]))
    fit_baselines(["diff-means"], train, np.array([0, 1, 0, 1]))  # needs no scikit-learn


def test_the_bible_corpus_without_pysword_names_the_bible_extra(monkeypatch):
    from qwenscope.data.corpora import bible_documents

    _missing(monkeypatch, "pysword")
    with pytest.raises(QwenscopeError, match=r"qwenscope\[bible\]"):
        next(bible_documents("bible:en"))


def test_the_trl_trainers_without_trl_name_the_posttrain_extra(monkeypatch):
    import qwenscope.apps.posttrain as posttrain

    _missing(monkeypatch, "trl")
    monkeypatch.delitem(sys.modules, "qwenscope.apps.posttrain.sasft", raising=False)
    with pytest.raises(QwenscopeError, match=r"qwenscope\[posttrain\]"):
        posttrain.SasftTrainer
