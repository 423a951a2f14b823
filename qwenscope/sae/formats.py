"""Readers for other people's SAE files, one function each. All return an `Sae` in our layout.

| format      | files                                   | weight layout                                     |
|-------------|-----------------------------------------|---------------------------------------------------|
| Qwen-Scope  | ``layer{N}.sae.pt`` (torch, 4 tensors)  | W_enc (d_sae, d_in), W_dec (d_in, d_sae)          |
| SAELens     | ``cfg.json`` + ``sae_weights.safetensors`` | ours (W_enc (d_in, d_sae), W_dec (d_sae, d_in)) |
| Gemma Scope | ``params.npz`` or ``params.safetensors`` | ours, keys ``W_enc``/``w_enc`` ..., ``threshold`` |
| sparsify    | ``cfg.json`` + ``sae.safetensors``      | encoder.weight (d_sae, d_in), W_dec (d_sae, d_in) |
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from qwenscope.errors import QwenscopeError
from qwenscope.sae.config import Activation, SaeConfig
from qwenscope.sae.io import build_sae, read_json, read_safetensors
from qwenscope.sae.model import Sae
from qwenscope.sae.releases import Release

Device = str | torch.device

# ------------------------------------------------------------------ hookpoint names of other libraries
_TL_HOOKS = {
    "hook_resid_post": "resid_post",
    "hook_resid_pre": "resid_pre",
    "hook_mlp_out": "mlp_out",
    "hook_attn_out": "attn_out",
}


def hookpoint_from_foreign(name: str | None) -> str | None:
    """Our hookpoint name for a TransformerLens (``blocks.5.hook_resid_post``) or sparsify (``layers.5``) name."""
    if not name:
        return None
    if m := re.fullmatch(r"blocks\.(\d+)\.(hook_\w+)", name):
        kind = _TL_HOOKS.get(m[2])
        return f"{kind}.{m[1]}" if kind else name
    if m := re.fullmatch(r"(?:model\.)?layers\.(\d+)(\.mlp|\.self_attn)?", name):
        kind = {None: "resid_post", ".mlp": "mlp_out", ".self_attn": "attn_out"}[m[2]]
        return f"{kind}.{m[1]}"
    return name


# ------------------------------------------------------------------ Qwen-Scope
def _refused(path: Path, what: str) -> QwenscopeError:
    return QwenscopeError(
        f"refusing to load {path} for safety: it holds pickled Python objects ({what}), not just tensors, and "
        "unpickling them could run code; if you trust its source, re-save its tensors with a trusted script "
        "(safetensors.torch.save_file(tensors, 'sae.safetensors'), or torch.save of a plain dict of tensors)"
    )


def _corrupt(path: Path, error: BaseException) -> QwenscopeError:
    text = str(error).strip()
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)  # torch's own reason, after its generic preamble
    first = m[1].strip() if m else text.splitlines()[0] if text else type(error).__name__
    return QwenscopeError(f"{path} is truncated or corrupt ({first}); re-download it")


def _pickled_globals(path: Path) -> list[str] | None:
    """The Python objects (module.name) a plain pickle file would import, read without unpickling anything; None if
    the file is not one complete pickle."""
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":  # module and name are the two strings pushed just before
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except (ValueError, EOFError, OSError):  # genops raises ValueError on a bad opcode or a stream cut short
        return None
    return names


def torch_load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A dict of tensors from a torch file, refusing anything that would run code when unpickled."""
    try:  # mmap needs torch's zip format; older torch.save files and plain pickles load without it
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        if m := re.search(r"GLOBAL ([\w.]+)|allowlisted.*but got (.+)", str(e)):  # what torch's allowlist refused
            raise _refused(path, (m[1] or m[2]).strip()) from None
        names = _pickled_globals(path)  # not a torch file: a plain pickle of objects, or not a pickle at all
        if names:
            unique = list(dict.fromkeys(names))
            raise _refused(path, ", ".join(unique[:5]) + (", ..." if len(unique) > 5 else "")) from None
        raise _corrupt(path, e) from None
    except Exception as e:  # weights_only unpickling runs no code: any failure means the file cannot be read
        raise _corrupt(path, e) from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise QwenscopeError(
            f"{path} is not a Qwen-Scope SAE file: expected a dict of tensors W_enc, W_dec, b_enc, b_dec"
        )
    return data


def read_qwenscope(
    path: Path,
    *,
    k: int | None = None,
    release: Release | None = None,
    layer: int | None = None,
    device: Device = "cpu",
    dtype: torch.dtype | None = None,
) -> Sae:
    """A Qwen-Scope ``layer{N}.sae.pt`` file. ``k`` comes from the release, the argument, or fails clearly."""
    if layer is None and (m := re.fullmatch(r"layer(\d+)\.sae\.pt", path.name)):
        layer = int(m[1])
    raw = torch_load_tensors(path)
    missing = sorted({"W_enc", "W_dec", "b_enc", "b_dec"} - set(raw))
    if missing:
        raise QwenscopeError(f"{path} is not a Qwen-Scope SAE file: missing {missing}")
    d_sae, d_in = raw["W_enc"].shape
    if release is not None:
        if (d_sae, d_in) != (release.d_sae, release.d_model):
            raise QwenscopeError(
                f"{path}: W_enc is {d_sae}x{d_in} but {release.repo_id} has d_sae={release.d_sae}, "
                f"d_model={release.d_model}; the file does not belong to this release"
            )
        if layer is not None:
            release.filename(layer)  # range check
        k = k or release.k
    if k is None:
        raise QwenscopeError(f"{path}: the TopK k is not recorded in the file; pass k= (Qwen-Scope uses 50 or 100)")
    cfg = SaeConfig(
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        activation="topk",
        hookpoint=f"resid_post.{layer}" if layer is not None else None,
        model=release.backbone if release else None,
    )
    # Transposed views: no copy, and x @ W_enc computes exactly x @ W_enc_file.T as in the reference.
    tensors = {"W_enc": raw["W_enc"].T, "b_enc": raw["b_enc"], "W_dec": raw["W_dec"].T, "b_dec": raw["b_dec"]}
    return build_sae(cfg, tensors, path, device, dtype)


# ------------------------------------------------------------------ SAELens
def read_saelens(folder: Path, device: Device = "cpu", dtype: torch.dtype | None = None) -> Sae:
    """A folder saved by SAELens (``SAE.save_model``): standard (ReLU), topk, jumprelu and batchtopk."""
    cfg = read_json(folder / "cfg.json")
    arch = cfg.get("architecture", "standard")
    acts: dict[str, Activation] = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "batchtopk"}
    act = acts.get(arch)
    if act is None:
        raise QwenscopeError(f"{folder}: SAELens architecture {arch!r} is not supported; use standard, topk, jumprelu")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise QwenscopeError(f"{folder}: SAELens normalize_activations={norm!r} is not supported; fold it first")
    if cfg.get("reshape_activations", "none") != "none":
        raise QwenscopeError(f"{folder}: SAELens reshape_activations (attention hook_z SAEs) is not supported")
    t = read_safetensors(folder / "sae_weights.safetensors")
    if act == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        # SAELens computes TopK(pre * |W_dec_i|) and decodes (acts / |W_dec_i|) @ W_dec: fold the norms in.
        norms = t["W_dec"].norm(dim=-1)
        t = {**t, "W_enc": t["W_enc"] * norms, "b_enc": t["b_enc"] * norms, "W_dec": t["W_dec"] / norms[:, None]}
    meta = cfg.get("metadata") or {}
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    sae_cfg = SaeConfig(
        d_in=int(cfg["d_in"]),
        d_sae=int(cfg["d_sae"]),
        k=int(k) if k is not None else None,
        activation=act,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        hookpoint=hookpoint_from_foreign(meta.get("hook_name") or cfg.get("hook_name")),
        model=meta.get("model_name") or cfg.get("model_name"),
    )
    return build_sae(sae_cfg, t, folder, device, dtype)


# ------------------------------------------------------------------ Gemma Scope
def read_gemmascope(path: Path, device: Device = "cpu", dtype: torch.dtype | None = None) -> Sae:
    """Gemma Scope ``params.npz`` (Gemma 2) or Gemma Scope 2 ``params.safetensors``: JumpReLU SAEs."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                raw = {key: torch.from_numpy(np.array(data[key])) for key in data.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            if "allow_pickle" in str(e):  # an object array: numpy would have to unpickle it
                raise _refused(path, "a numpy object array") from None
            raise _corrupt(path, e) from None
    else:
        raw = read_safetensors(path)
    t = {("W_" + key[2:] if key.startswith("w_") else key): v for key, v in raw.items()}
    if "W_enc" not in t:
        raise QwenscopeError(f"{path} is not a Gemma Scope SAE: no W_enc/w_enc array")
    d_in, d_sae = t["W_enc"].shape
    where = str(path.parent)
    layer = re.search(r"layer_(\d+)", where)
    kind = next((h for h in ("resid_post", "mlp_out", "attn_out") if h in where), None)
    if kind is None and layer and re.search(r"-res\b|_res\b|/res\b|res/", where):
        kind = "resid_post"
    hookpoint = f"{kind}.{layer[1]}" if layer and kind else None
    cfg = SaeConfig(d_in=d_in, d_sae=d_sae, activation="jumprelu", hookpoint=hookpoint)
    return build_sae(cfg, t, path, device, dtype)


# ------------------------------------------------------------------ sparsify
def read_sparsify(folder: Path, device: Device = "cpu", dtype: torch.dtype | None = None) -> Sae:
    """A folder saved by sparsify (``SparseCoder.save_to_disk``): TopK SAEs and transcoders without skip."""
    cfg = read_json(folder / "cfg.json")
    if cfg.get("activation", "topk") != "topk":
        raise QwenscopeError(f"{folder}: sparsify activation {cfg.get('activation')!r} is not supported; only topk")
    if cfg.get("skip_connection"):
        raise QwenscopeError(f"{folder}: sparsify skip connections (W_skip) are not supported")
    t = read_safetensors(folder / "sae.safetensors")
    if "encoder.weight" not in t or "W_dec" not in t:
        raise QwenscopeError(f"{folder}: sae.safetensors lacks encoder.weight / W_dec; not a sparsify SAE")
    d_sae, d_in = t["encoder.weight"].shape
    sae_cfg = SaeConfig(
        d_in=d_in,
        d_sae=d_sae,
        k=int(cfg.get("k", 32)),
        activation="topk",
        apply_b_dec_to_input=not cfg.get("transcode", False),
        hookpoint=hookpoint_from_foreign(folder.name),
    )
    tensors = {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    return build_sae(sae_cfg, tensors, folder, device, dtype)
