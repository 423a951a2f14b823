"""`load_sae`: one entry point for a folder, a file or a hub repo id, in any supported format.

The hub path downloads only what one SAE needs: the one ``layer{N}.sae.pt`` of a Qwen-Scope repo, or the one
hookpoint sub-folder of a multi-SAE repo (ours, sparsify, SAELens).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from qwenscope.errors import QwenscopeError
from qwenscope.sae.formats import read_gemmascope, read_qwenscope, read_saelens, read_sparsify
from qwenscope.sae.io import CFG_FILE, WEIGHTS_FILE, is_qwenscope_folder, load_folder
from qwenscope.sae.model import Sae
from qwenscope.sae.releases import Release, find_release, parse_repo_name

logger = logging.getLogger(__name__)

_REPO_ID_RE = re.compile(r"^[\w.-]+/[\w.-]+$")
_FORMATS_HELP = (
    "expected a qwenscope folder (cfg.json + sae.safetensors), Qwen-Scope layer{N}.sae.pt files, "
    "SAELens (sae_weights.safetensors), Gemma Scope (params.npz / params.safetensors) or sparsify (sae.safetensors)"
)


def load_sae(
    source: str | Path,
    layer: int | None = None,
    hookpoint: str | None = None,
    device: str | torch.device = "cpu",
    *,
    k: int | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
) -> Sae:
    """Load one SAE from a folder, a file or a Hugging Face repo id, detecting the format.

    Args:
        source: a folder, a file (``layer3.sae.pt``, ``params.npz`` ...) or a repo id such as
            ``Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50``.
        layer: which layer's SAE, for sources holding one per layer (Qwen-Scope). Same as ``resid_post.{layer}``.
        hookpoint: which SAE, for sources holding one folder per hookpoint (``resid_post.3``, sparsify's ``layers.3``).
        device: where to put the weights.
        k: TopK k, only needed for Qwen-Scope files outside a folder named like their release.
        dtype: weight dtype; default keeps the file's, except fp16 becomes fp32 (and bf16 on the CPU).
        revision: hub revision (branch, tag or commit) for repo ids.
    """
    layer, hookpoint = _layer_and_hookpoint(layer, hookpoint)
    path = Path(source).expanduser()
    if path.exists():
        return _load_local(path, layer, hookpoint, device, k, dtype)
    if isinstance(source, str) and source in EMBEDDED_MODELS:
        return _load_embedded(source, hookpoint, device, dtype)
    if isinstance(source, str) and _REPO_ID_RE.match(source) and not source.startswith((".", "/")):
        return _load_hub(source, layer, hookpoint, device, k, dtype, revision)
    raise QwenscopeError(f"no SAE at {source!r}: not an existing file or folder, and not a hub repo id (owner/name)")


EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "assets" / "saes"
EMBEDDED_MODELS = ("smollm2-135m", "gemma3-270m")
DEFAULT_HOOKPOINT = {"smollm2-135m": "resid_post.15", "gemma3-270m": "resid_post.9"}
"""The shipped SAE that ``load_sae(model)`` gives when no hookpoint is named: a middle layer."""


def embedded_saes() -> dict[str, list[str]]:
    """The SAEs shipped with qwenscope: embedded model name -> hookpoints (``load_sae(name, hookpoint=...)``)."""
    return {
        m: sorted(p.name for p in (EMBEDDED_DIR / m).iterdir() if is_qwenscope_folder(p))
        for m in EMBEDDED_MODELS
        if (EMBEDDED_DIR / m).is_dir()
    }


def _load_embedded(model: str, hookpoint: str | None, device, dtype) -> Sae:
    have = embedded_saes().get(model, [])
    if not have:
        raise QwenscopeError(f"no SAE ships for {model} yet; train one with `qwenscope train` and load its folder")
    if hookpoint is None and DEFAULT_HOOKPOINT.get(model) in have:
        hookpoint = DEFAULT_HOOKPOINT[model]
    if hookpoint is None:
        if len(have) > 1:
            raise QwenscopeError(f"{model} ships SAEs for {', '.join(have)}; pass hookpoint= one of them")
        hookpoint = have[0]
    if hookpoint not in have:
        raise QwenscopeError(f"no shipped SAE for {model} at {hookpoint}; shipped: {', '.join(have)}")
    return load_folder(EMBEDDED_DIR / model / hookpoint, device, dtype)


def _layer_and_hookpoint(layer: int | None, hookpoint: str | None) -> tuple[int | None, str | None]:
    if hookpoint is not None and (m := re.fullmatch(r"resid_post\.(\d+)", hookpoint)):
        if layer is not None and layer != int(m[1]):
            raise QwenscopeError(f"layer={layer} contradicts hookpoint={hookpoint!r}; pass only one of them")
        layer = int(m[1])
    if layer is not None and layer < 0:
        raise QwenscopeError(f"layer must be >= 0, got {layer}")
    if hookpoint is None and layer is not None:
        hookpoint = f"resid_post.{layer}"
    return layer, hookpoint


def _release_for(path: Path) -> Release | None:
    """The Qwen-Scope release a local folder (or a file's folder) is named after, if any."""
    return find_release(path.name) or find_release(path.parent.name)


def _k_from_folder(folder: Path) -> int | None:
    """k from a Qwen-Scope folder's name (``...-L0_50``) or its config.json (keys unpublished: try the usual ones)."""
    parsed = parse_repo_name(folder.name)
    if parsed:
        return parsed[2]
    cfg = folder / "config.json"
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        for key in ("k", "top_k", "topk", "l0", "L0"):
            if isinstance(data, dict) and isinstance(data.get(key), int):
                return int(data[key])
    return None


def _load_file(path: Path, layer: int | None, device, k: int | None, dtype) -> Sae:
    name = path.name
    if name.endswith(".pt") or name.endswith(".pth"):
        release = _release_for(path.parent)
        return read_qwenscope(
            path, k=k or _k_from_folder(path.parent), release=release, layer=layer, device=device, dtype=dtype
        )
    if name.endswith(".npz") or name == "params.safetensors":
        return read_gemmascope(path, device, dtype)
    if name.endswith(".safetensors") or name == CFG_FILE:
        return _load_local(path.parent, layer, None, device, k, dtype)
    raise QwenscopeError(f"unknown SAE file type {path.name!r}; {_FORMATS_HELP}")


def _load_local(path: Path, layer: int | None, hookpoint: str | None, device, k, dtype) -> Sae:
    if path.is_file():
        return _load_file(path, layer, device, k, dtype)
    if is_qwenscope_folder(path):
        return load_folder(path, device, dtype)
    if (path / CFG_FILE).is_file() and (path / "sae_weights.safetensors").is_file():
        return read_saelens(path, device, dtype)
    if (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return read_sparsify(path, device, dtype)
    for name in ("params.npz", "params.safetensors"):
        if (path / name).is_file():
            return read_gemmascope(path / name, device, dtype)
    layer_files = sorted(path.glob("layer*.sae.pt"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    if layer_files:
        if layer is None:
            raise QwenscopeError(f"{path} holds one SAE per layer; pass layer= (or hookpoint='resid_post.N')")
        file = path / f"layer{layer}.sae.pt"
        if not file.is_file():
            release = _release_for(path)
            if release is not None:
                release.filename(layer)  # raises the range error
            have = f"{layer_files[0].name} .. {layer_files[-1].name}"
            raise QwenscopeError(f"layer {layer} is out of range: {path} has {have}")
        return _load_file(file, layer, device, k, dtype)
    if hookpoint is not None:
        for sub in _subfolder_names(hookpoint):
            if (path / sub).is_dir():
                return _load_local(path / sub, layer, None, device, k, dtype)
    subs = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / CFG_FILE).is_file())
    if subs:
        raise QwenscopeError(
            f"{path} holds SAEs for {', '.join(subs[:8])}{' ...' if len(subs) > 8 else ''}; pass hookpoint= to pick one"
        )
    raise QwenscopeError(f"unknown SAE format in {path}; {_FORMATS_HELP}")


def _subfolder_names(hookpoint: str) -> list[str]:
    """Folder names other libraries use for a hookpoint: ours, and sparsify's module paths."""
    names = [hookpoint]
    if m := re.fullmatch(r"(resid_post|mlp_out|attn_out)\.(\d+)", hookpoint):
        suffix = {"resid_post": "", "mlp_out": ".mlp", "attn_out": ".self_attn"}[m[1]]
        names += [f"layers.{m[2]}{suffix}", f"model.layers.{m[2]}{suffix}"]
    return names


def _load_hub(repo_id: str, layer, hookpoint, device, k, dtype, revision) -> Sae:
    try:
        return _load_hub_unchecked(repo_id, layer, hookpoint, device, k, dtype, revision)
    except QwenscopeError:
        raise
    except (OSError, ValueError) as e:  # huggingface_hub's HTTP, not-found and offline errors derive from these
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QwenscopeError(
            f"could not fetch an SAE from hub repo {repo_id} ({type(e).__name__}: {reason}); "
            "check the repo id, the layer or hookpoint, and the network"
        ) from None


def _load_hub_unchecked(repo_id: str, layer, hookpoint, device, k, dtype, revision) -> Sae:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    release = find_release(repo_id)
    if release is not None or parse_repo_name(repo_id):
        if layer is None:
            raise QwenscopeError(f"{repo_id} holds one SAE per layer; pass layer= (or hookpoint='resid_post.N')")
        filename = release.filename(layer) if release else f"layer{layer}.sae.pt"
        logger.info("downloading %s from %s", filename, repo_id)
        file = Path(hf_hub_download(repo_id, filename, revision=revision))
        parsed = parse_repo_name(repo_id)
        return read_qwenscope(
            file, k=k or (parsed[2] if parsed else None), release=release, layer=layer, device=device, dtype=dtype
        )
    files = HfApi().list_repo_files(repo_id, revision=revision)
    folders = {f.rsplit("/", 1)[0] if "/" in f else "" for f in files if f.rsplit("/", 1)[-1] == CFG_FILE}
    if hookpoint is not None:
        wanted = [sub for sub in _subfolder_names(hookpoint) if sub in folders]
        if not wanted:
            raise QwenscopeError(f"{repo_id} has no SAE for {hookpoint!r}; it has {sorted(folders)[:8]}")
        sub = wanted[0]
    elif "" in folders:
        sub = ""
    else:
        raise QwenscopeError(f"{repo_id} holds SAEs for {sorted(folders)[:8]}; pass hookpoint= to pick one")
    patterns = [f"{sub}/*"] if sub else [f for f in files if "/" not in f]  # only the one SAE's files
    root = Path(snapshot_download(repo_id, allow_patterns=patterns, revision=revision))
    return _load_local(root / sub if sub else root, layer, None, device, k, dtype)
