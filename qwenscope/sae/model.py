"""The sparse autoencoder: one small ``nn.Module`` with TopK, BatchTopK, JumpReLU and ReLU activations.

Weight layout (SAELens's): ``W_enc`` (d_in, d_sae), ``b_enc`` (d_sae,), ``W_dec`` (d_sae, d_in), ``b_dec`` (d_in,),
and for JumpReLU a per-feature ``threshold`` (d_sae,). Readers of other layouts transpose on load.

    pre_acts(x) = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc
    topk:       z = TopK(ReLU(pre), k)              per token
    batchtopk:  z = TopK(ReLU(pre), k * n_tokens)   over all tokens of the input at once
    jumprelu:   z = ReLU(pre) * (pre > threshold)
    relu:       z = ReLU(pre)
    decode(z) = z @ W_dec + b_dec
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qwenscope.errors import QwenscopeError
from qwenscope.sae.config import SaeConfig


class EncoderOutput(NamedTuple):
    """The sparse code of a batch of activations."""

    top_acts: Tensor
    """Values of the active features, shape (..., m); padding entries are 0."""

    top_indices: Tensor
    """Ids of the active features, shape (..., m), int64. For TopK SAEs m == k."""


class ForwardOutput(NamedTuple):
    """Result of ``Sae.forward``: reconstruction and sparse code."""

    sae_out: Tensor
    """Reconstruction of the input, same shape and dtype as the input."""

    top_acts: Tensor
    """Values of the active features, shape (..., m)."""

    top_indices: Tensor
    """Ids of the active features, shape (..., m)."""

    fvu: Tensor
    """Fraction of variance unexplained over the batch (scalar): sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""


class Sae(nn.Module):
    """A sparse autoencoder over activations of width ``cfg.d_in``."""

    def __init__(
        self,
        cfg: SaeConfig,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        kw: dict = {"device": device, "dtype": dtype or torch.float32}
        # sparsify's init: unit-norm decoder rows, and the encoder their transpose at the row norm of nn.Linear's
        # default init (uniform in +-1/sqrt(d_in): norm ~1/sqrt(3)). Unit-norm encoder rows start with codes ~1.7x
        # too large and train to a worse FVU at equal tokens (docs/results/training.md).
        W_dec = torch.randn(cfg.d_sae, cfg.d_in, **kw)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.contiguous() / math.sqrt(3))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **kw))
        self.threshold: nn.Parameter | None = None
        if cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, **kw))

    # ---------------------------------------------------------------- properties
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def extra_repr(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.k is not None else ""
        hp = f", hookpoint={c.hookpoint!r}" if c.hookpoint else ""
        return f"d_in={c.d_in}, d_sae={c.d_sae}, activation={c.activation!r}{k}{hp}"

    # ---------------------------------------------------------------- encoding
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise QwenscopeError(f"SAE input must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 0 or x.shape[-1] != self.cfg.d_in:
            where = f" at {self.cfg.hookpoint}" if self.cfg.hookpoint else ""
            raise QwenscopeError(
                f"SAE input has shape {tuple(x.shape)} but the SAE reads vectors of d_in={self.cfg.d_in}{where}; "
                "pass activations of that width (is this SAE for another model or hookpoint?)"
            )

    def pre_acts(self, x: Tensor) -> Tensor:
        """Encoder pre-activations (..., d_sae): before ReLU, TopK or threshold."""
        self._check_input(x)
        x = x.to(self.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def _activate(self, pre: Tensor) -> Tensor:
        """Dense feature activations from pre-activations."""
        act = self.cfg.activation
        if act == "topk":
            assert self.cfg.k is not None
            vals, idx = F.relu(pre).topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, idx, vals)
        if act == "batchtopk":
            assert self.cfg.k is not None
            flat = F.relu(pre).reshape(-1)  # all tokens' features in one vector
            n_keep = min(self.cfg.k * (flat.numel() // self.cfg.d_sae), flat.numel())
            vals, idx = flat.topk(n_keep, sorted=False)
            return torch.zeros_like(flat).scatter_(0, idx, vals).reshape(pre.shape)
        if act == "jumprelu":
            assert self.threshold is not None
            return F.relu(pre) * (pre > self.threshold)
        return F.relu(pre)

    def encode(self, x: Tensor) -> Tensor:
        """Dense feature activations (..., d_sae); mostly zeros."""
        return self._activate(self.pre_acts(x))

    def own_acts(self, x: Tensor, ids: Tensor) -> Tensor:
        """Activations (..., n) of features ``ids`` (n,), each from its own pre-activation only: ReLU, and for
        JumpReLU the threshold, but no TopK competition. Equal to ``encode(x)[..., ids]`` for ReLU and JumpReLU SAEs;
        for TopK and BatchTopK SAEs a feature outside the top k reads its ReLU'd pre-activation here, 0 there."""
        self._check_input(x)
        ids = ids.to(self.W_enc.device)
        x = x.to(self.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        pre = x @ self.W_enc[:, ids] + self.b_enc[ids]
        if self.cfg.activation == "jumprelu":
            assert self.threshold is not None
            return F.relu(pre) * (pre > self.threshold[ids])
        return F.relu(pre)

    def encode_sparse(self, x: Tensor) -> EncoderOutput:
        """The sparse code: for TopK exactly k (value, id) pairs per token, else as many as the busiest token."""
        pre = self.pre_acts(x)
        if self.cfg.activation == "topk":
            assert self.cfg.k is not None
            vals, idx = F.relu(pre).topk(self.cfg.k, dim=-1, sorted=False)
            return EncoderOutput(vals, idx)
        return to_sparse(self._activate(pre))

    # ---------------------------------------------------------------- decoding
    def decode(self, z: Tensor | EncoderOutput | tuple[Tensor, Tensor]) -> Tensor:
        """Reconstruction (..., d_in) from dense activations (..., d_sae) or a sparse code (acts, indices)."""
        if isinstance(z, tuple):
            return self.decode_sparse(*z)
        if not isinstance(z, Tensor) or z.ndim == 0 or z.shape[-1] != self.cfg.d_sae:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise QwenscopeError(
                f"decode expects feature activations of width d_sae={self.cfg.d_sae}, got {shape}; "
                "pass the output of encode() or an (acts, indices) pair"
            )
        return z.to(self.dtype) @ self.W_dec + self.b_dec

    def decode_sparse(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        """Reconstruction from a sparse code, without materialising the dense (..., d_sae) tensor."""
        if top_acts.shape != top_indices.shape:
            raise QwenscopeError(
                f"sparse code shapes differ: acts {tuple(top_acts.shape)} vs indices {tuple(top_indices.shape)}"
            )
        lead, m = top_acts.shape[:-1], top_acts.shape[-1]
        out = F.embedding_bag(  # sum_j acts[j] * W_dec[idx[j]]
            top_indices.reshape(-1, m).long(),
            self.W_dec,
            per_sample_weights=top_acts.reshape(-1, m).to(self.dtype),
            mode="sum",
        )
        return (out + self.b_dec).reshape(*lead, self.cfg.d_in)

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> ForwardOutput:
        code = self.encode_sparse(x)
        x_hat = self.decode_sparse(*code)
        xf = x.to(self.dtype).reshape(-1, self.cfg.d_in)
        residual = (xf - x_hat.reshape(-1, self.cfg.d_in)).pow(2).sum()
        total = (xf - xf.mean(0)).pow(2).sum()
        return ForwardOutput(x_hat.to(x.dtype), code.top_acts, code.top_indices, residual / total)

    # ---------------------------------------------------------------- io shortcuts
    def save(self, path: str | Path) -> None:
        """Write ``cfg.json`` and ``sae.safetensors`` into folder ``path`` (created if needed)."""
        from qwenscope.sae.io import save_sae

        save_sae(self, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Sae:
        """Read a folder written by ``save``."""
        from qwenscope.sae.io import load_folder

        return load_folder(path, device=device)


def to_sparse(z: Tensor) -> EncoderOutput:
    """Dense activations (..., d_sae) -> sparse code padded to the largest number of active features."""
    m = max(int((z != 0).sum(-1).max().item()) if z.numel() else 0, 1)
    vals, idx = z.topk(m, dim=-1)
    return EncoderOutput(vals, idx)
