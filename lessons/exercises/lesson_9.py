"""课时9练习：读取真实检查点——GGUF 的 q/k 行顺序、MXFP4 解码与 MoE 路由。

把每个 `raise NotImplementedError(...)` 换成你的实现，然后运行 `python -m lessons.grade 9`。
参考答案是 model/zoo/dequantize.py 的 `unpermute_rope_rows`、model/mxfp4.py 的 `dequantize_mxfp4` 与
model/moe.py 的 `MoEMLP.route`（签名完全相同；方法的第一个参数 self 就是那个 MoEMLP）。
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["unpermute_rope_rows", "dequantize_mxfp4", "moe_route"]


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Exercise 9.1：把 llama.cpp（GGUF）里 q_proj / k_proj 权重的行恢复成 Hugging Face 的顺序。

    HF 的 RoPE 把每个头的第 j 维与第 j + h 维配对（h = head_dim / 2，rotate_half 布局）；llama.cpp 把相邻的
    2j、2j+1 配对。所以转换脚本把每个头的行 (0, 1, ..., h-1 | h, ..., 2h-1) 存成 (0, h, 1, h+1, ..., h-1, 2h-1)。
    weight (num_heads * head_dim, in) -> 同形状，每个头内的行按 HF 顺序排列。提示：reshape + swapaxes。
    """
    raise NotImplementedError("Exercise 9.1: unpermute_rope_rows")


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Exercise 9.2：MXFP4 解码（OCP Microscaling 规范；GPT-OSS 专家权重的存储格式）。

    每 32 个值一个块：16 个字节，每字节两个 4 位 FP4（E2M1）编码，**低 4 位在前**；每块一个缩放字节 e，表示 2^(e - 127)。
    值 = FP4_VALUES[编码] × 2^(e - 127)，FP4_VALUES = (0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6)。
    blocks (..., G, 16) uint8，scales (..., G) uint8 -> (..., G * 32)，dtype 为给定的 dtype。
    提示：torch.ldexp(值, 指数) 精确地乘以 2 的幂。
    """
    raise NotImplementedError("Exercise 9.2: dequantize_mxfp4")


def moe_route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 9.3：混合专家的路由（即 `model.moe.MoEMLP.route`）。

    `self.router` 是 nn.Linear(H, E)（有 bias），`self.top_k` 是每个 token 选的专家数 k。
    x (N, H) -> (选中的专家编号 (N, k)，它们的权重 (N, k))：对 router 的输出取 top-k，
    权重是**只在这 k 个上**做的 softmax（不是在全部 E 个上）。
    """
    raise NotImplementedError("Exercise 9.3: moe_route")
