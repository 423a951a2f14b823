"""Tiny random-init Hugging Face models for fast, offline tests (transformers 5.24, fp32, CPU, < 0.1 s each).

``build_tiny(arch, num_layers=4, seed=0)`` -> eval-mode model; ``random_inputs(model)`` -> input_ids/attention_mask
(row 1 left-padded). Sizes: hidden 64, intermediate 128, 4 heads / 2 kv heads, head_dim 16, vocab ``TINY_VOCAB``,
MoE 4 experts top-2 (expert intermediate 32), Gemma 3 sliding window 8. ``decoder_layers(model)`` finds the layers.

Facts probed on transformers 5.24 (L = num_layers; "tensor" = a plain ``torch.Tensor`` of shape [B, S, 64]):

arch         class                            decoder layers path           layer kinds (num_layers=4)
-----------  -------------------------------  ----------------------------  ------------------------------------
llama        LlamaForCausalLM                 model.layers                  4x full attention
gemma3       Gemma3ForCausalLM (Gemma3Text)   model.layers                  sliding,full,sliding,full (window 8)
qwen3        Qwen3ForCausalLM                 model.layers                  4x full attention
qwen3_moe    Qwen3MoeForCausalLM              model.layers                  4x full attention, 4x MoE mlp
qwen3_5      Qwen3_5ForCausalLM               model.layers                  linear,linear,linear,full
qwen3_5_vl   Qwen3_5ForConditionalGeneration  model.language_model.layers   linear,linear,linear,full (+model.visual)
qwen3_5_moe  Qwen3_5MoeForCausalLM            model.layers                  linear,linear,linear,full, 4x MoE mlp

Other num_layers: Qwen3.5 repeats 3 linear + 1 full, Gemma 3 repeats sliding + full; with fewer layers than the
period the period shrinks so the LAST layer is global (num_layers=2 -> linear,full; 1 -> full).

Decoder-layer children (in forward order):
  llama, qwen3, qwen3_moe: input_layernorm, self_attn, post_attention_layernorm (= pre-MLP norm), mlp
  gemma3: input_layernorm, self_attn, post_attention_layernorm (applied to the attn OUTPUT, before the residual add),
          pre_feedforward_layernorm, mlp, post_feedforward_layernorm (applied to the mlp OUTPUT, before the add)
  qwen3_5*, full-attention layers: input_layernorm, self_attn, post_attention_layernorm, mlp
  qwen3_5*, linear-attention layers: input_layernorm, linear_attn (Gated DeltaNet), post_attention_layernorm, mlp
          (a layer has EITHER self_attn OR linear_attn; ``layer.block_type``/``config.layer_types[i]`` says which;
          Qwen3.5 self_attn is gated: q_proj has 2x outputs (query + gate))
  MoE mlp (qwen3_moe, qwen3_5_moe): SparseMoeBlock with ``gate`` (TopKRouter, weight [E, H]) and ``experts`` (fused
          params gate_up_proj [E, 2I, H], down_proj [E, H, I], no per-expert Linear); qwen3_5_moe adds
          ``shared_expert`` (MLP) and ``shared_expert_gate`` (Linear H->1). Dense mlp: gate_proj, up_proj, down_proj.

Return values (all archs):
  decoder layer          -> plain tensor (NOT a tuple)
  self_attn              -> tuple (attn_output [B,S,H], attn_weights) - weights None under the default "sdpa"
  linear_attn            -> plain tensor
  mlp (dense and MoE)    -> plain tensor (the MoE block does NOT return router logits)
  MoE mlp.gate (router)  -> tuple (router_logits [B*S, E], top-k weights [B*S, k], top-k indices [B*S, k]);
                            the models record router_logits from this module via hooks
  norms                  -> plain tensor

Hidden states (``output_hidden_states=True``): L + 1 tensors for every arch. hidden_states[0] = embed_tokens output
(Gemma 3: already scaled by sqrt(hidden), Gemma3TextScaledWordEmbedding); hidden_states[i] for 1 <= i < L = raw output
of decoder layer i-1; hidden_states[-1] = final-NORMED output (model norm applied to the last layer's output) for
every arch, i.e. NOT the last layer's raw residual stream.
Gemma 3 ties lm_head to embed_tokens; the others do not. Qwen3.5 runs the pure-PyTorch Gated DeltaNet / causal-conv1d
fallbacks on CPU (transformers logs a one-time "falling back" notice).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen3_5Config,
    Qwen3_5ForCausalLM,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForCausalLM,
    Qwen3_5MoeTextConfig,
    Qwen3_5TextConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

ARCHS = ("llama", "gemma3", "qwen3", "qwen3_moe", "qwen3_5", "qwen3_5_vl", "qwen3_5_moe")

TINY_VOCAB = 512
TINY_HIDDEN = 64
TINY_INTERMEDIATE = 128
TINY_SLIDING_WINDOW = 8
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

_COMMON: dict[str, Any] = {
    "vocab_size": TINY_VOCAB,
    "hidden_size": TINY_HIDDEN,
    "intermediate_size": TINY_INTERMEDIATE,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "pad_token_id": PAD_ID,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "tie_word_embeddings": False,
}
_MOE: dict[str, Any] = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
_LINEAR_ATTN: dict[str, Any] = {
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
}


def _hybrid_layer_types(num_layers: int, period: int, local: str, glob: str) -> list[str]:
    """``period - 1`` local layers then one global layer, repeating; the period shrinks so both kinds appear."""
    period = max(1, min(period, num_layers))
    return [local if (i + 1) % period else glob for i in range(num_layers)]


def _qwen3_5_text_kwargs(num_layers: int) -> dict[str, Any]:
    layer_types = _hybrid_layer_types(num_layers, 4, "linear_attention", "full_attention")
    return {**_COMMON, **_LINEAR_ATTN, "num_hidden_layers": num_layers, "layer_types": layer_types}


def _llama(num_layers: int) -> tuple[type[PreTrainedModel], PreTrainedConfig]:
    return LlamaForCausalLM, LlamaConfig(**_COMMON, num_hidden_layers=num_layers)


def _gemma3(num_layers: int) -> tuple[type[PreTrainedModel], PreTrainedConfig]:
    layer_types = _hybrid_layer_types(num_layers, 2, "sliding_attention", "full_attention")
    kwargs = {**_COMMON, "tie_word_embeddings": True}
    config = Gemma3TextConfig(
        **kwargs,
        num_hidden_layers=num_layers,
        layer_types=layer_types,
        sliding_window=TINY_SLIDING_WINDOW,
        query_pre_attn_scalar=16,
    )
    return Gemma3ForCausalLM, config


def _qwen3(num_layers: int) -> tuple[type[PreTrainedModel], PreTrainedConfig]:
    return Qwen3ForCausalLM, Qwen3Config(**_COMMON, num_hidden_layers=num_layers)


def _qwen3_moe(num_layers: int) -> tuple[type[PreTrainedModel], PreTrainedConfig]:
    config = Qwen3MoeConfig(**_COMMON, **_MOE, num_hidden_layers=num_layers, norm_topk_prob=True)
    return Qwen3MoeForCausalLM, config


def _qwen3_5(num_layers: int) -> tuple[type[PreTrainedModel], PreTrainedConfig]:
    return Qwen3_5ForCausalLM, Qwen3_5TextConfig(**_qwen3_5_text_kwargs(num_layers))


def _qwen3_5_vl(num_layers: int) -> tuple[type[PreTrainedModel], PreTrainedConfig]:
    vision = {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": TINY_HIDDEN,
        "num_position_embeddings": 16,
    }
    config = Qwen3_5Config(text_config=_qwen3_5_text_kwargs(num_layers), vision_config=vision)
    return Qwen3_5ForConditionalGeneration, config


def _qwen3_5_moe(num_layers: int) -> tuple[type[PreTrainedModel], PreTrainedConfig]:
    kwargs = {k: v for k, v in _qwen3_5_text_kwargs(num_layers).items() if k != "intermediate_size"}
    config = Qwen3_5MoeTextConfig(**kwargs, **_MOE, shared_expert_intermediate_size=32)
    return Qwen3_5MoeForCausalLM, config


_BUILDERS: dict[str, Callable[[int], tuple[type[PreTrainedModel], PreTrainedConfig]]] = {
    "llama": _llama,
    "gemma3": _gemma3,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "qwen3_5": _qwen3_5,
    "qwen3_5_vl": _qwen3_5_vl,
    "qwen3_5_moe": _qwen3_5_moe,
}


def tiny_config(arch: str, num_layers: int = 4) -> PreTrainedConfig:
    """The config ``build_tiny`` would use (top-level config; for ``qwen3_5_vl`` it has ``text_config``)."""
    return _builder(arch)(num_layers)[1]


def build_tiny(arch: str, num_layers: int = 4, seed: int = 0) -> PreTrainedModel:
    """Build a deterministic fp32 random-init model of ``arch`` in eval mode."""
    model_cls, config = _builder(arch)(num_layers)
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    return model.eval()


def _builder(arch: str) -> Callable[[int], tuple[type[PreTrainedModel], PreTrainedConfig]]:
    if arch not in _BUILDERS:
        raise ValueError(f"unknown tiny arch {arch!r}; expected one of {ARCHS}")
    return _BUILDERS[arch]


def random_inputs(model: PreTrainedModel, batch: int = 2, seq: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ``input_ids``/``attention_mask``; row 1 (if present) is left-padded with ``seq // 4`` pad tokens."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, TINY_VOCAB, (batch, seq), generator=gen)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1:
        n_pad = max(1, seq // 4)
        input_ids[1, :n_pad] = PAD_ID
        attention_mask[1, :n_pad] = 0
    device = next(model.parameters()).device
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def text_model(model: PreTrainedModel) -> nn.Module:
    """The text backbone holding ``embed_tokens``, ``layers`` and the final ``norm``."""
    base = model.model
    return getattr(base, "language_model", base)


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The text decoder layers (``model.model.layers``; ``model.model.language_model.layers`` for qwen3_5_vl)."""
    return text_model(model).layers


def make_byte_tokenizer(chat: bool = False):
    """One token per UTF-8 byte (ids 3..258); <pad>=0, <s>=1, </s>=2 (EOS); fits TINY_VOCAB.

    ``chat`` adds a special <|user|>=259 and a minimal chat template (for chat rendering tests). The benchmarks'
    memory probes use the same tokenizer, so it lives in ``qwenscope.experiment``.
    """
    from qwenscope.experiment import byte_tokenizer

    return byte_tokenizer(chat)


def tiny_qwen3(num_layers: int = 2, seed: int = 0):
    """(model, tokenizer): a tiny random Qwen3 whose vocabulary is sized to the real Qwen3 tokenizer."""
    from transformers import Qwen3ForCausalLM

    from qwenscope.models.tokenizers import qwen3_tokenizer

    tokenizer = qwen3_tokenizer()
    config = tiny_config("qwen3", num_layers=num_layers)
    config.vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config), tokenizer


def save_tiny_qwen3(folder, num_layers: int = 2, seed: int = 0):
    """``tiny_qwen3`` saved in ``folder`` with its tokenizer, like a user's model folder; returns ``folder``."""
    model, tokenizer = tiny_qwen3(num_layers, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
