"""The published Qwen-Scope SAE suites: 14 Hugging Face repos on 7 backbones (QWEN_SCOPE.md section 1).

Each repo ``Qwen/SAE-Res-<backbone>-W<width>K-L0_<k>`` holds ``layer0.sae.pt`` ... ``layer{N-1}.sae.pt``: TopK SAEs on
the output of every decoder layer (``resid_post.L``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qwenscope.errors import QwenscopeError

_REPO_RE = re.compile(r"SAE-Res-(?P<backbone>.+)-W(?P<width>\d+)K-L0_(?P<k>\d+)$")


@dataclass(frozen=True)
class Release:
    """One Qwen-Scope repo: an SAE for every layer of one backbone."""

    repo_id: str
    """Hugging Face repo id, e.g. ``Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50``."""
    backbone: str
    """Hugging Face id of the model the SAEs were trained on."""
    n_layers: int
    """Number of decoder layers, hence SAE files (layer0 ... layer{n_layers-1})."""
    d_model: int
    """Hidden size of the backbone (the SAE's d_in)."""
    d_sae: int
    """Number of features per SAE."""
    k: int
    """Active features per token (TopK)."""
    moe: bool = False
    """Whether the backbone is a mixture-of-experts model."""

    def filename(self, layer: int) -> str:
        if not 0 <= layer < self.n_layers:
            raise QwenscopeError(
                f"layer {layer} is out of range for {self.repo_id}: it has layers 0..{self.n_layers - 1}"
            )
        return f"layer{layer}.sae.pt"


def _suite(backbone: str, n_layers: int, d_model: int, widths: dict[int, int], moe: bool = False) -> list[Release]:
    """Releases of one backbone; ``widths`` maps k to d_sae."""
    name = backbone.split("/")[-1]
    return [
        Release(f"Qwen/SAE-Res-{name}-W{d_sae // 1024}K-L0_{k}", backbone, n_layers, d_model, d_sae, k, moe)
        for k, d_sae in widths.items()
    ]


_K32, _K64, _K80, _K128 = 32 * 1024, 64 * 1024, 80 * 1024, 128 * 1024
RELEASES: dict[str, Release] = {
    r.repo_id: r
    for r in [
        *_suite("Qwen/Qwen3-1.7B-Base", 28, 2048, {50: _K32, 100: _K32}),
        *_suite("Qwen/Qwen3-8B-Base", 36, 4096, {50: _K64, 100: _K64}),
        *_suite("Qwen/Qwen3.5-2B-Base", 24, 2048, {50: _K32, 100: _K32}),
        *_suite("Qwen/Qwen3.5-9B-Base", 32, 4096, {50: _K64, 100: _K64}),
        *_suite("Qwen/Qwen3.5-27B", 64, 5120, {50: _K80, 100: _K80}),
        *_suite("Qwen/Qwen3-30B-A3B-Base", 48, 2048, {50: _K32, 100: _K128}, moe=True),
        *_suite("Qwen/Qwen3.5-35B-A3B-Base", 40, 2048, {50: _K32, 100: _K128}, moe=True),
    ]
}


def find_release(name: str) -> Release | None:
    """The release whose repo name ends ``name`` (a repo id, or a local folder named like the repo), else None."""
    base = name.rstrip("/").split("/")[-1]
    for release in RELEASES.values():
        if release.repo_id.split("/")[-1] == base:
            return release
    return None


def parse_repo_name(name: str) -> tuple[str, int, int] | None:
    """(backbone name, d_sae, k) from a name like ``SAE-Res-Qwen3-1.7B-Base-W32K-L0_50``, or None."""
    m = _REPO_RE.search(name.rstrip("/").split("/")[-1])
    if m is None:
        return None
    return m["backbone"], int(m["width"]) * 1024, int(m["k"])
