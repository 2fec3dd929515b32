"""课时3 练习参考答案（注意力模块的前向）。"""

from __future__ import annotations

import math

import torch


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def attention_forward(x: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, v_weight: torch.Tensor,
                      o_weight: torch.Tensor, num_heads: int, num_kv_heads: int, cos: torch.Tensor,
                      sin: torch.Tensor, mask: torch.Tensor,
                      past_kv: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    B, T, _ = x.shape
    head_dim = q_weight.shape[0] // num_heads
    q = (x @ q_weight.T).view(B, T, num_heads, head_dim).transpose(1, 2)      # (B, n_h, T, d)
    k = (x @ k_weight.T).view(B, T, num_kv_heads, head_dim).transpose(1, 2)   # (B, n_kv, T, d)
    v = (x @ v_weight.T).view(B, T, num_kv_heads, head_dim).transpose(1, 2)
    cos, sin = cos[:, None], sin[:, None]                                     # (B, 1, T, d)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    if past_kv is not None:                                                   # the cache: old keys first
        k = torch.cat([past_kv[0], k], dim=2)
        v = torch.cat([past_kv[1], v], dim=2)
    groups = num_heads // num_kv_heads
    k_all = k.repeat_interleave(groups, dim=1)                                # (B, n_h, S, d)
    v_all = v.repeat_interleave(groups, dim=1)
    scores = q @ k_all.transpose(-1, -2) / math.sqrt(head_dim)                # (B, n_h, T, S)
    scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(-1) @ v_all                                          # (B, n_h, T, d)
    out = out.transpose(1, 2).reshape(B, T, num_heads * head_dim)
    return out @ o_weight.T, (k, v)
