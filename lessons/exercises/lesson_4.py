"""课时4练习：解码器块与完整的 CausalLM。

把每个 `raise NotImplementedError(...)` 换成你的实现，然后运行 `python -m lessons.grade 4`。
参考答案是 model/layers.py 的 `SwiGLU.forward`、`DecoderBlock.forward` 与
model/causal_lm.py 的 `default_position_ids`（签名完全相同；方法的第一个参数 self 就是那个模块）。
形状记号：B = batch，T = 本次 token 数，H = hidden_size，I = intermediate_size。
"""

from __future__ import annotations

import torch

__all__ = ["swiglu_forward", "decoder_block_forward", "default_position_ids", "causal_lm_forward"]


def swiglu_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Exercise 4.1：SwiGLU 前馈层（即 `model.layers.SwiGLU.forward`）。

    `self` 有三个线性层 gate_proj (H->I)、up_proj (H->I)、down_proj (I->H)。
    out = down_proj( silu(gate_proj(x)) * up_proj(x) )。x: (B, T, H) -> (B, T, H)。
    """
    raise NotImplementedError("Exercise 4.1: swiglu_forward")


def decoder_block_forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                          mask: torch.Tensor | None, cache=None) -> torch.Tensor:
    """Exercise 4.2：Pre-norm 残差块（即 `model.layers.DecoderBlock.forward`）。

    `self` 有 input_layernorm、self_attn、post_attention_layernorm、mlp 四个子模块。
    先 x = x + self_attn(input_layernorm(x), cos, sin, mask, cache)，
    再 x = x + mlp(post_attention_layernorm(x))。归一化在子层之前（pre-norm），残差加的是归一化之前的 x。
    x: (B, T, H) -> (B, T, H)。
    """
    raise NotImplementedError("Exercise 4.2: decoder_block_forward")


def default_position_ids(attention_mask: torch.Tensor | None, past_length: int, new_length: int,
                         device: torch.device) -> torch.Tensor:
    """Exercise 4.3：新输入的 new_length 个 token 的位置编号，给 RoPE 用。

    - 没有 attention_mask：位置是 past_length, past_length + 1, ...，返回形状 (1, new_length)；
    - 有 attention_mask (B, past_length + new_length)（左 padding，0 = padding）：每行第一个真实 token
      的位置是 0，之后逐个加 1（提示：cumsum）；padding 处的值无所谓（参考实现给 0）。
      只返回最后 new_length 列，形状 (B, new_length)，dtype long。
    """
    raise NotImplementedError("Exercise 4.3: default_position_ids")


def causal_lm_forward(state_dict: dict[str, torch.Tensor], config: dict, input_ids: torch.Tensor) -> torch.Tensor:
    """Exercise 4.4：只用一份 Hugging Face 格式的 state_dict，写出整个 LLaMA 的前向（综合练习）。

    state_dict 的键与 transformers 的 LlamaForCausalLM 相同：`model.embed_tokens.weight`、
    `model.layers.{i}.input_layernorm.weight`、`model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`、
    `model.layers.{i}.post_attention_layernorm.weight`、`model.layers.{i}.mlp.{gate,up,down}_proj.weight`、
    `model.norm.weight`，以及 `lm_head.weight`（没有这个键时与词嵌入共享）。
    config 是 config.json 的字典：num_hidden_layers、num_attention_heads、num_key_value_heads、rms_norm_eps、
    rope_theta。input_ids (B, T)，无 padding、无缓存，因果掩码。返回 logits (B, T, vocab)。
    只许用 torch：embedding → 每层 [RMSNorm → 注意力（RoPE、GQA）→ 残差，RMSNorm → SwiGLU → 残差]
    → 最终 RMSNorm → lm_head。RoPE：inv_freq_i = rope_theta^(-2i/d)，位置 0..T-1。
    """
    raise NotImplementedError("Exercise 4.4: causal_lm_forward")
