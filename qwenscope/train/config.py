"""TrainConfig: how to train TopK / BatchTopK SAEs. Field docstrings are the ``qwenscope train`` help."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from qwenscope.errors import QwenscopeError


@dataclass
class TrainConfig:
    """Optimisation settings shared by every SAE trained in one run."""

    expansion_factor: tuple[int, ...] = (16,)
    """SAE width as a multiple of d_in; several values (16,32) train several SAEs on the same activations."""
    k: tuple[int, ...] = (32,)
    """Active features per token; several values train several SAEs (every width x k combination)."""
    activation: Literal["topk", "batchtopk"] = "topk"
    """topk (Qwen-Scope) or batchtopk (k per token on average over the batch; under DDP, over each rank's slice)."""
    batch_size: int = 4096
    """Tokens per optimisation step."""
    steps: int = 10_000
    """Optimisation steps (total tokens = steps x batch_size)."""
    lr: float | None = None
    """Adam learning rate; default 2e-4 / sqrt(d_sae / 16384), scaled by width as in Gao et al. (2024)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up steps."""
    decay_start: float = 0.8
    """Fraction of the steps after which the learning rate decays linearly to zero."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK dead-feature loss (Qwen-Scope and Gao et al. use 1/32; 0 turns it off)."""
    dead_tokens: int = 1_000_000
    """A feature that has not fired for this many tokens counts as dead (fed to AuxK)."""
    encoder: Literal["exact", "bf16", "auto"] = "exact"
    """How the active features are chosen: exact (fp32 product); bf16 (a bf16 product picks k + max(8, k/4)
    candidates per token, whose values are then computed exactly in fp32; faster only where bf16 is native: CUDA,
    AVX-512 BF16, AMX); auto (bf16 where it is native and measured faster, else exact)."""
    apply_b_dec_to_input: bool = True
    """Subtract b_dec from the input before encoding (recorded in the saved SAE)."""
    distribute_modules: bool = False
    """Under torchrun: give each rank its own hookpoints instead of a slice of every batch (data parallelism)."""
    seed: int = 0
    """Seed of the SAE initialisation."""
    init_from: str | None = None
    """Start from trained SAEs instead of a random initialisation (fine-tuning on new text): an SAE source that
    load_sae takes with a hookpoint, e.g. an embedded model name (smollm2-135m) or a folder of hookpoint folders."""
    save_every: int = 500
    """Checkpoint every this many steps (and at the end); resume continues from the last one."""
    log_every: int = 10
    """Write metrics every this many steps."""

    def __post_init__(self) -> None:
        self.expansion_factor = tuple(int(e) for e in self.expansion_factor)
        self.k = tuple(int(k) for k in self.k)
        if not self.expansion_factor or min(self.expansion_factor) < 1:
            raise QwenscopeError(f"expansion_factor must be positive integers, got {self.expansion_factor}")
        if not self.k or min(self.k) < 1:
            raise QwenscopeError(f"k must be positive integers, got {self.k}")
        for name in ("batch_size", "steps", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise QwenscopeError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise QwenscopeError(f"lr must be positive, got {self.lr}")
        if self.encoder not in ("exact", "bf16", "auto"):
            raise QwenscopeError(f"encoder must be exact, bf16 or auto, got {self.encoder!r}")
        if not 0 < self.decay_start <= 1:
            raise QwenscopeError(f"decay_start must be in (0, 1], got {self.decay_start}")

    def lr_for(self, d_sae: int) -> float:
        return self.lr if self.lr is not None else 2e-4 / (d_sae / 2**14) ** 0.5

    def lr_scale(self, step: int) -> float:
        """Multiplier of the base learning rate at ``step`` (0-based): warm-up, flat, then linear decay."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        start = int(self.decay_start * self.steps)
        decay = 1.0 if step < start else max(0.0, (self.steps - step) / max(1, self.steps - start))
        return warm * decay

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
