"""The random baseline of an SAE: the same shape, k and activation, with random weights.

    baseline = random_like(sae, seed=0)    # read every metric of ``sae`` against this one's

Random-weight SAEs score close to trained ones on several metrics (Korznikov et al. 2026), so a figure means
something only beside its random baseline. The weights are the ones training starts from (``Sae``'s init: unit-norm
random decoder rows, the encoder their scaled transpose, zero encoder bias), seeded; the decoder bias is the trained
SAE's, so both centre the activations alike and only the learned directions differ.
"""

from __future__ import annotations

import torch

from qwenscope.sae.model import Sae


def random_like(sae: Sae, seed: int = 0) -> Sae:
    """A random-weight SAE of ``sae``'s config, device and dtype (the module doc); the global RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = Sae(sae.cfg, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        out.b_dec.copy_(sae.b_dec.detach().float().cpu())
    return out.to(sae.device, sae.dtype).eval()
