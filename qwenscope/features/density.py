"""Feature density: the share of tokens a feature fires on, and the always-on features that tell a reader nothing.

    density_text(0.0123)                        # '1.2%'
    dense = dense_features(store, MAX_DENSITY)  # {id: frequency} of the features above the threshold
    kept, left_out = drop_dense(ids, store)     # for a list shown to a person

A feature that fires on most tokens says little about any of them: however it is chosen, a firing of a feature with
frequency p can tell at most ``-log2 p`` bits about which token it is on (1 bit at p = 0.5), and the always-on
features of a TopK SAE come close to 0 (they fire on tokens in their corpus proportions). Ranked by activation they
still top every prompt and hide the informative ones. Wherever features are ranked for a person (the demo,
``qwenscope features``, the dashboards, the playground), those above ``max_density`` are left out of short lists or
marked in full ones, and every listed feature shows its density.

``MAX_DENSITY`` comes from ``experiments/feature_density/density.py``: the token information of a firing, ``KL(P(token |
fires) || P(token))``, by frequency band, for the shipped SAEs. It falls off past a tenth of the tokens, and the
densest features carry less than a coin flip; ten percent keeps all but a handful of features per SAE and removes
those that top every prompt (the figures: docs/results/density.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from qwenscope.errors import QwenscopeError

if TYPE_CHECKING:
    from qwenscope.features.store import FeatureStore

MAX_DENSITY = 0.1
"""Default share of tokens above which a feature counts as always-on (dense) and is left out or marked."""


def check_max_density(value: float) -> float:
    """``value`` if it is a share in (0, 1]; a one-line error naming the flag otherwise."""
    if not 0 < value <= 1:
        raise QwenscopeError(f"--max-density is a share of tokens in (0, 1] (1 keeps every feature), got {value}")
    return value


def density_text(frequency: float | None) -> str:
    """A density for people: '41%', '3.4%', '0.12%', '0.0031%', 'never', or '?' when unknown."""
    if frequency is None:
        return "?"
    if frequency <= 0:
        return "never"
    percent = 100 * frequency
    digits = 0 if percent >= 10 else max(1, min(4, 1 - int(f"{percent:e}".split("e")[1])))
    return f"{percent:.{digits}f}%"


def dense_features(store: FeatureStore, max_density: float) -> dict[int, float]:
    """{feature id: frequency} of the features that fire on more than ``max_density`` of the store's tokens."""
    frequency = store.frequencies()
    return {int(f): float(frequency[f]) for f in (frequency > max_density).nonzero()[0]}


def drop_dense(ids: Iterable[int], store: FeatureStore | None, max_density: float) -> tuple[list[int], list[int]]:
    """(the ids at or under ``max_density``, the dense ids), both in the given order; with no store, all are kept."""
    ids = list(ids)
    if store is None:
        return ids, []
    dense = dense_features(store, max_density)
    return [i for i in ids if i not in dense], [i for i in ids if i in dense]
