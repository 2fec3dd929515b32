"""课时5练习：KV 缓存与生成策略。

把每个 `raise NotImplementedError(...)` 换成你的实现，然后运行 `python -m lessons.grade 5`。
参考答案是 cache/dynamic.py 的 `DynamicLayer.update`、`kv_cache_bytes` 与 generation/steps.py 里的
同名函数（签名完全相同）。所有 logits 步骤都是 (B, V) float 进、(B, V) 出的纯函数：
被过滤掉的 token 设为 -inf，不重新归一化（之后采样时的 softmax 会做这件事）。
"""

from __future__ import annotations

import torch

__all__ = ["cache_layer_update", "kv_cache_bytes", "temperature_scale", "top_k_filter", "top_p_filter",
           "repetition_penalty"]


def cache_layer_update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 5.1：一层的 KV 缓存更新（即 `cache.dynamic.DynamicLayer.update`）。

    `self.keys`、`self.values` 是已缓存的 (B, n_kv, S, d)，一开始是 None。
    把这一步的 keys、values（(B, n_kv, T, d)）接在序列维（倒数第二维）后面，存回 self，
    然后返回全部的 (keys, values)，形状 (B, n_kv, S + T, d)。
    """
    raise NotImplementedError("Exercise 5.1: cache_layer_update")


def kv_cache_bytes(num_layers: int, batch: int, num_kv_heads: int, seq_len: int, head_dim: int,
                   dtype: torch.dtype) -> int:
    """Exercise 5.2：KV 缓存占多少字节（课时5 第 2.4 节的公式）。

    2（K 和 V）× 层数 × batch × kv 头数 × 序列长度 × head_dim × 每个元素的字节数（由 dtype 决定，
    例如 float16 是 2，float32 是 4）。返回 int。
    """
    raise NotImplementedError("Exercise 5.2: kv_cache_bytes")


def temperature_scale(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Exercise 5.3：温度：softmax(z / T)。T < 1 让分布更尖，T > 1 更平。这里只返回 z / T。"""
    raise NotImplementedError("Exercise 5.3: temperature_scale")


def top_k_filter(scores: torch.Tensor, top_k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Exercise 5.4：Top-k：每行只保留分数最高的 k 个，其余设为 -inf。

    k = min(max(top_k, min_tokens_to_keep), V)。与第 k 名分数相同的 token 也保留（比较用 < 第 k 名）。
    scores: (B, V) -> (B, V)。
    """
    raise NotImplementedError("Exercise 5.4: top_k_filter")


def top_p_filter(scores: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Exercise 5.5：Top-p（nucleus）：保留累积概率达到 top_p 的最小的一组最好的 token，其余设为 -inf。

    transformers 的做法（我们要与它逐位一致）：按分数升序排序，算 softmax 后的累积和；
    累积和 <= 1 - top_p 的（最差的那些）去掉；但最好的 min_tokens_to_keep 个总是保留。
    最后把"去掉"的标记按排序索引放回词表顺序。scores: (B, V) -> (B, V)。
    """
    raise NotImplementedError("Exercise 5.5: top_p_filter")


def repetition_penalty(scores: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Exercise 5.6：重复惩罚（CTRL，Keskar et al. 2019）。

    对 input_ids (B, T) 里出现过的每个 token（包括提示词）：分数 > 0 则除以 penalty，< 0 则乘以 penalty，
    所以 penalty > 1 总让它变得更不可能。出现多次的 token 也只惩罚一次。不要原地修改 scores。
    提示：torch.gather 取出这些分数，改完用 scatter 写回。scores: (B, V) -> (B, V)。
    """
    raise NotImplementedError("Exercise 5.6: repetition_penalty")
