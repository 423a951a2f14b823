"""Writers of SAE files in other people's layouts, for tests."""

import torch


def write_qwenscope_layer(path, d_model=32, d_sae=128, seed=0):
    """A ``layer{N}.sae.pt`` of the real layout: W_enc (d_sae, d_model), W_dec (d_model, d_sae)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(d_sae, d_model, generator=g),
        "W_dec": torch.randn(d_model, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "b_dec": torch.randn(d_model, generator=g),
    }
    torch.save(tensors, path)
    return tensors
