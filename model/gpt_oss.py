"""The GPT-OSS decoder block (OpenAI 2025, "gpt-oss-120b & gpt-oss-20b Model Card"), next to LLaMA's.

The residual wiring is the LLaMA `DecoderBlock` unchanged (model/layers.py):

    x = x + attention(RMSNorm(x));  x = x + mlp(RMSNorm(x))

What differs, and where it lives:

    part          LLaMA                        GPT-OSS
    q/k/v/o       no biases                    biases (attention_bias = true)
    softmax       over the keys                over the keys + one learned "sink" logit per head, then dropped
                                               (`sinks` in eager_attention / sdpa_attention, model/layers.py)
    keys seen     all earlier tokens           layer_types alternate: "sliding_attention" layers see the last
                                               sliding_window tokens only (mask in causal_lm.py, cache in
                                               cache/sliding.py), "full_attention" layers see all
    RoPE          default / llama3 ...         YaRN (model/rope.py, same rotate-half layout)
    MLP           one SwiGLU                   mixture of experts, top-k of E clamped SwiGLUs (model/moe.py)
    lm_head       often tied                   untied

The sink lets a head put attention on "nothing", so it need not dump it on the first token (Xiao et al.
2023, "Efficient Streaming Language Models with Attention Sinks"), which matters once the window drops it.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import Attention, DecoderBlock
from .moe import MoEMLP


class GptOssAttention(Attention):
    """Grouped-query attention with biases (from the config) and one learned sink logit per query head."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.sinks = nn.Parameter(torch.empty(config.num_attention_heads).normal_(0.0, config.initializer_range))


class GptOssBlock(DecoderBlock):
    """LLaMA's pre-norm block with GPT-OSS attention and a mixture-of-experts MLP."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__(config, layer_idx, attention=GptOssAttention(config, layer_idx), mlp=MoEMLP(config))
        self.attention_type = config.layer_types[layer_idx]  # "sliding_attention" or "full_attention"
