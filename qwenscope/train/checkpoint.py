"""Checkpoints of a training run: SAE weights, Adam state, dead-feature counters and the step, written atomically.

Layout: ``OUT/checkpoint/trainer.json`` and, per SAE, ``OUT/checkpoint/<name>/{cfg.json, sae.safetensors,
optimizer.safetensors}``. A new checkpoint is written to a temporary sibling folder and swapped in by renames
(``qwenscope.util.atomic_folder``), so a kill at any moment leaves a complete checkpoint (``checkpoint`` or,
during the swap, ``checkpoint.old``).
Resuming restores every tensor bit for bit; with the same data order the run continues exactly as if never stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from qwenscope.errors import QwenscopeError
from qwenscope.sae.io import read_json, read_safetensors
from qwenscope.util.atomic import atomic_folder

if TYPE_CHECKING:
    from qwenscope.train.trainer import Trainer

NAME = "checkpoint"  # with one rank per hookpoint group: "checkpoint-rank{r}"; under DDP rank 0 writes the one
_IGNORED = {"save_every", "log_every", "encoder"}  # may change between a run and its resumption


def _folder(out: Path, base: str) -> Path | None:
    for name in (base, base + ".old"):
        if (out / name / "trainer.json").is_file():
            return out / name
    return None


def exists(out: Path, base: str = NAME) -> bool:
    return _folder(out, base) is not None


def save(trainer: Trainer) -> None:
    out, base = trainer.out, trainer.ckpt_name
    with atomic_folder(out / base, old=out / (base + ".old")) as tmp:
        for s in trainer.states:
            folder = tmp / s.name
            s.sae.save(folder)
            opt = s.opt.state_dict()
            tensors = {f"state.{i}.{key}": v.contiguous() for i, st in opt["state"].items() for key, v in st.items()}
            tensors["since_fired"] = s.since_fired.cpu()
            save_file(tensors, str(folder / "optimizer.safetensors"))
            (folder / "param_groups.json").write_text(json.dumps(opt["param_groups"]))
        meta = {"step": trainer.step, "config": trainer.cfg.to_dict(), "names": [s.name for s in trainer.states]}
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=1))


def _check_config(saved: dict[str, Any], trainer: Trainer, folder: Path) -> None:
    now = json.loads(json.dumps(trainer.cfg.to_dict()))  # tuples -> lists, as saved
    diff = sorted(k for k in set(saved) | set(now) if k not in _IGNORED and saved.get(k) != now.get(k))
    if diff:
        changes = ", ".join(f"{k}: {saved.get(k)} -> {now.get(k)}" for k in diff)
        raise QwenscopeError(
            f"the checkpoint in {folder} was trained with another configuration ({changes}); "
            "use the same settings or a new output folder"
        )


def load(trainer: Trainer) -> int:
    """Restore ``trainer`` from its output folder's checkpoint; returns the step to continue from."""
    folder = _folder(trainer.out, trainer.ckpt_name)
    assert folder is not None
    meta = read_json(folder / "trainer.json")
    _check_config(meta["config"], trainer, folder)
    names = [s.name for s in trainer.states]
    if meta["names"] != names:
        raise QwenscopeError(
            f"the checkpoint in {folder} holds SAEs {meta['names']}, this run trains {names}; "
            "use the same hookpoints or a new output folder"
        )
    for s in trainer.states:
        weights = read_safetensors(folder / s.name / "sae.safetensors")
        with torch.no_grad():
            for pname, p in s.sae.named_parameters():
                if weights[pname].shape != p.shape:
                    raise QwenscopeError(
                        f"checkpoint {folder / s.name}: {pname} has shape "
                        f"{tuple(weights[pname].shape)}, expected {tuple(p.shape)}"
                    )
                p.copy_(weights[pname])
        tensors = read_safetensors(folder / s.name / "optimizer.safetensors")
        s.since_fired.copy_(tensors.pop("since_fired"))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in tensors.items():
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
        groups = json.loads((folder / s.name / "param_groups.json").read_text())
        for g, now in zip(groups, s.opt.param_groups):
            g["betas"] = tuple(g["betas"])
            for impl in ("fused", "foreach"):  # how Adam runs here is this machine's choice, not the checkpoint's
                g[impl] = now.get(impl)
        s.opt.load_state_dict({"state": state, "param_groups": groups})
    return int(meta["step"])
