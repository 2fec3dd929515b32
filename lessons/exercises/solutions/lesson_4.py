"""课时4 练习参考答案（整个 CausalLM 的前向，只用一份 state_dict）。"""

from __future__ import annotations

import torch


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def causal_lm_forward(state_dict: dict[str, torch.Tensor], config: dict, input_ids: torch.Tensor) -> torch.Tensor:
    n_h, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    eps, L = config["rms_norm_eps"], config["num_hidden_layers"]
    w = state_dict
    B, T = input_ids.shape
    x = w["model.embed_tokens.weight"][input_ids]                              # (B, T, H)
    d = x.shape[-1] // n_h
    inv_freq = config["rope_theta"] ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)   # (d/2,)
    angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None]   # (T, d/2)
    angles = torch.cat([angles, angles], dim=-1)                               # (T, d)
    cos, sin = angles.cos(), angles.sin()
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(L):
        p = f"model.layers.{i}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(B, T, n_h, d).transpose(1, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(B, T, n_kv, d).transpose(1, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(B, T, n_kv, d).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(n_h // n_kv, dim=1), v.repeat_interleave(n_h // n_kv, dim=1)
        scores = (q @ k.transpose(-1, -2) / d ** 0.5).masked_fill(~causal, float("-inf"))
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, n_h * d)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    x = _rms_norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])             # tied when there is no head
    return x @ head.T                                                          # (B, T, vocab)
