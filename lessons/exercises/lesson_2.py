"""课时2练习：Embedding、RMSNorm 与 RoPE。

把每个函数里的 `raise NotImplementedError(...)` 换成你的实现，然后运行
`python -m lessons.grade 2`。每个函数的签名与包里的参考实现完全相同
（参考答案就是 model/layers.py 与 model/rope.py 里的同名函数，做完再去对照）。
形状记号：B = batch，T = 序列长度，d = head_dim，H = hidden_size。
"""

from __future__ import annotations

import torch

__all__ = ["rms_norm_forward", "default_inv_freq", "rotate_half", "apply_rotary"]


def rms_norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Exercise 2.1：RMSNorm 的前向（即 `model.layers.RMSNorm.forward`）。

    `self` 是一个 RMSNorm 模块，有 `self.weight`（形状 (H,)）和 `self.eps`。
    y = x / sqrt(mean(x^2, 最后一维) + eps) * weight。没有减均值，也没有 bias。
    注意：先把 x 转成 float32 再算均方（半精度下平方和会溢出），归一化后转回 x 原来的 dtype，再乘 weight。
    x: (..., H) -> (..., H)
    """
    raise NotImplementedError("Exercise 2.1: rms_norm_forward")


def default_inv_freq(dim: int, base: float) -> torch.Tensor:
    """Exercise 2.2：RoPE 的逆频率 theta_i = base^(-2i/dim)，i = 0, 1, ..., dim/2 - 1。

    返回 float32 张量，形状 (dim/2,)。第一个元素是 1（最快转的一对），越往后越慢。
    """
    raise NotImplementedError("Exercise 2.2: default_inv_freq")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Exercise 2.3：把最后一维切成两半 (x1, x2)，返回 (-x2, x1) 拼接的结果。

    这是 Hugging Face LLaMA 的 "rotate_half" 布局：第 i 维与第 i + d/2 维组成一对旋转。
    x: (..., d) -> (..., d)
    """
    raise NotImplementedError("Exercise 2.3: rotate_half")


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Exercise 2.4：对 x 施加旋转位置编码：x * cos + rotate_half(x) * sin。

    x: (B, heads, T, d)；cos、sin: (B, T, d)，同一位置的所有 head 用同一个角度，
    所以先在第 1 维插入一个长度为 1 的 head 维再广播。返回 (B, heads, T, d)。
    """
    raise NotImplementedError("Exercise 2.4: apply_rotary")
