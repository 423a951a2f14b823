"""Our own SAE format: a folder holding ``cfg.json`` and ``sae.safetensors``; save -> load is bit-exact.

Also `build_sae`, which every format reader uses to turn named tensors into an `Sae` with shape checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from qwenscope.errors import QwenscopeError
from qwenscope.sae.config import SaeConfig
from qwenscope.sae.model import Sae
from qwenscope.util.atomic import atomic_write

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


def _expected_shapes(cfg: SaeConfig) -> dict[str, tuple[int, ...]]:
    shapes = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    if cfg.activation == "jumprelu":
        shapes["threshold"] = (cfg.d_sae,)
    return shapes


def default_dtype(file_dtype: torch.dtype, device: str | torch.device) -> torch.dtype:
    """The dtype an SAE stored as ``file_dtype`` is loaded in on ``device`` when none is asked for: the file's, except
    float16 becomes float32 everywhere (the SAE casts its input to its dtype, and residual streams such as gemma3's
    hold values beyond float16's 65504, which would become inf), and bfloat16 becomes float32 on the CPU (fast
    matmuls there)."""
    if file_dtype == torch.float16 or (file_dtype == torch.bfloat16 and torch.device(device).type == "cpu"):
        return torch.float32
    return file_dtype


def build_sae(
    cfg: SaeConfig,
    tensors: dict[str, torch.Tensor],
    source: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Sae:
    """An `Sae` holding ``tensors`` (our names and layout), after checking names and shapes.

    Tensors are used as given where device and dtype already match (no copy; transposed views stay views).
    ``dtype=None``: ``default_dtype`` of the file's dtype.
    """
    expected = _expected_shapes(cfg)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise QwenscopeError(f"{source}: missing SAE tensors {missing}; is this file complete and of this format?")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise QwenscopeError(
                f"{source}: {name} has shape {tuple(tensors[name].shape)}, expected {shape} "
                f"for d_in={cfg.d_in}, d_sae={cfg.d_sae}; the file does not match its config"
            )
    if dtype is None:
        dtype = default_dtype(tensors["W_enc"].dtype, device)
    with torch.device("meta"):
        sae = Sae(cfg, dtype=dtype)
    state = {name: tensors[name].to(device=device, dtype=dtype) for name in expected}
    for name, t in state.items():
        if not torch.isfinite(t).all():
            raise QwenscopeError(f"{source}: {name} contains NaN or inf values; the checkpoint is corrupt")
    sae.load_state_dict(state, assign=True)
    return sae.eval().requires_grad_(False)  # loaded SAEs are for inference; requires_grad_(True) to fine-tune


def save_sae(sae: Sae, path: str | Path) -> None:
    """Write ``cfg.json`` + ``sae.safetensors`` into folder ``path``, atomically (a kill never leaves half a file)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().contiguous().cpu() for name, p in sae.state_dict().items()}
    atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "qwenscope"}))
    atomic_write(path / CFG_FILE, sae.cfg.save)


def is_qwenscope_folder(path: Path) -> bool:
    cfg = path / CFG_FILE
    if not (cfg.is_file() and (path / WEIGHTS_FILE).is_file()):
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == "qwenscope"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or one clear error."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QwenscopeError(f"{path} is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(data, dict):
        raise QwenscopeError(f"{path} should hold a JSON object, got {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, or one clear error for a truncated or corrupt file."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise QwenscopeError(f"{path} is truncated or corrupt ({reason}); re-download or re-save it") from None


def load_folder(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Sae:
    """Read a folder written by `save_sae`."""
    path = Path(path)
    cfg = SaeConfig.from_dict({k: v for k, v in read_json(path / CFG_FILE).items()})
    return build_sae(cfg, read_safetensors(path / WEIGHTS_FILE), path, device, dtype)
