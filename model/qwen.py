"""The Qwen2 and Qwen3 decoder blocks (Qwen team 2024, 2025), next to LLaMA's.

The residual wiring, the SwiGLU MLP, RoPE (rotate-half layout) and grouped-query attention are LLaMA's
(model/layers.py). What differs is inside the attention, and only there:

    part                 LLaMA               Qwen2                         Qwen3
    q/k/v projections    no biases           biases                        biases only if attention_bias
    o projection         no bias             no bias                       bias only if attention_bias
    queries and keys     RoPE                RoPE                          RMSNorm over each head's d, then RoPE
                                                                           (q_norm, k_norm: one weight (d,) each,
                                                                           shared by all heads)
    head_dim             hidden / heads      hidden / heads                its own key (128 unless given)
    keys seen            all earlier         all; with use_sliding_window the layers from max_window_layers
                                             on see the last sliding_window tokens (config.layer_types)

Qwen3's per-head norm (the "QK-norm" of Dehghani et al. 2023, "Scaling Vision Transformers to 22 Billion
Parameters") bounds q.k before the softmax, which keeps attention logits from growing without limit in
training; Qwen3 dropped Qwen2's q/k/v biases for it.
"""

from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .layers import Attention, DecoderBlock, RMSNorm


class Qwen2Attention(Attention):
    """LLaMA's attention with biases on the q, k and v projections (o_proj has none)."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        H, d = config.hidden_size, self.head_dim
        self.q_proj = nn.Linear(H, self.n_heads * d, bias=True)
        self.k_proj = nn.Linear(H, self.n_kv * d, bias=True)
        self.v_proj = nn.Linear(H, self.n_kv * d, bias=True)


class Qwen3Attention(Attention):
    """LLaMA's attention (biases per attention_bias) with an RMSNorm on each query and key head before RoPE."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)  # applied in Attention.attend
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)


class QwenBlock(DecoderBlock):
    """LLaMA's pre-norm block with Qwen2's or Qwen3's attention; a layer may be a sliding-window one."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        attention = {"qwen2": Qwen2Attention, "qwen3": Qwen3Attention}[config.model_type]
        super().__init__(config, layer_idx, attention=attention(config, layer_idx))
        self.attention_type = config.layer_types[layer_idx]  # "full_attention" unless use_sliding_window
