"""Where training metrics go: always ``metrics.jsonl`` in the output folder, and optionally wandb and/or tensorboard.

``report_to`` is a comma-separated list like HF Trainer's: ``none``, ``wandb``, ``tensorboard``. A backend that is
asked for but not installed is a one-line error before training starts. Both follow a resumed run: tensorboard writes
to ``OUT/tensorboard`` (the step axis continues), wandb resumes the run whose id is kept in ``OUT/wandb-id``
(``wandb-id-rankN`` per rank under ``--distribute-modules``, where each rank logs its own SAEs).
Metrics are flattened to ``<sae name>/<metric>`` (e.g. ``resid_post.15/fvu``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qwenscope.errors import QwenscopeError

logger = logging.getLogger(__name__)

BACKENDS = ("wandb", "tensorboard")


def parse_report_to(report_to: str) -> list[str]:
    """The backends of a ``--report-to`` value; raises a one-line error for unknown or uninstalled ones."""
    names = [n.strip().lower() for n in report_to.split(",") if n.strip() and n.strip().lower() != "none"]
    for name in names:
        if name not in BACKENDS:
            raise QwenscopeError(f"unknown --report-to {name!r}; use none, wandb, tensorboard or a comma list")
        if importlib.util.find_spec(name) is None:
            raise QwenscopeError(f"--report-to {name} needs the {name} package; pip install {name}")
    return list(dict.fromkeys(names))


def flatten(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{sae: {metric: v}}`` -> ``{"sae/metric": v}``."""
    return {f"{name}/{key}": float(value) for name, values in metrics.items() for key, value in values.items()}


class MetricsReport:
    """Appends one JSON line per logged step to ``out/name`` and forwards the metrics to the chosen backends."""

    def __init__(self, out: Path, name: str, report_to: str = "none", config: Mapping[str, Any] | None = None):
        self.backends = parse_report_to(report_to)
        out.mkdir(parents=True, exist_ok=True)
        self.file = (out / name).open("a")
        self.tb: Any = None
        self.wandb: Any = None
        if "tensorboard" in self.backends:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(out / "tensorboard"))
        if "wandb" in self.backends:
            import wandb

            id_file = out / name.replace("metrics", "wandb-id").removesuffix(".jsonl")  # one run per metrics file
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
            self.wandb = wandb.init(
                project="qwenscope", name=out.name, id=run_id, resume="allow", dir=str(out), config=dict(config or {})
            )

    def log(self, step: int, tokens: int, metrics: Mapping[str, Mapping[str, float]]) -> None:
        self.file.write(json.dumps({"step": step, "tokens": tokens, **metrics}) + "\n")
        self.file.flush()
        flat = flatten(metrics)
        if self.tb is not None:
            for key, value in flat.items():
                self.tb.add_scalar(key, value, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({**flat, "tokens": tokens}, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
