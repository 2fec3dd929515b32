"""课时6练习：束搜索的一步。

把每个 `raise NotImplementedError(...)` 换成你的实现，然后运行 `python -m lessons.grade 6`。
参考答案是 generation/beam.py 的 `gather_beams` 与 `top_candidates`（签名完全相同）。
形状记号：B = 提示词个数，K = 束宽 num_beams，V = 词表大小，L = 提示词 + 最多生成的长度，C = 候选个数。
"""

from __future__ import annotations

import torch

__all__ = ["gather_beams", "top_candidates"]


def gather_beams(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Exercise 6.1：按束编号取行。tensor (B, K, ...)，index (B, J) -> (B, J, ...)。

    结果的第 [b, j] 行是 tensor[b, index[b, j]]（每个提示词只在自己的 K 条束里挑）。
    tensor 的维数可以多于 2（例如 (B, K, L) 的序列），index 要先补上尾部的维度再广播。
    提示：torch.take_along_dim 或 torch.gather。
    """
    raise NotImplementedError("Exercise 6.1: gather_beams")


def top_candidates(totals: torch.Tensor, running: torch.Tensor, length: int, C: int, do_sample: bool,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exercise 6.2：束搜索一步的扩展与筛选。

    totals (B, K*V)：每条束的累计 log 概率加上下一个 token 的 log 概率，展平成 束 × 词表，
    扁平下标 = beam * V + token。running (B, K, L)：每条束的序列（只有前 length 个位置有效）。
    - do_sample=False：每个提示词取 totals 最大的 C 个（torch.topk，分数降序）；
      do_sample=True：按 softmax(totals) 不放回地抽 C 个（torch.multinomial，只用给定的 generator）。
    - 由扁平下标得到父束 parents = index // V 与 token = index % V；
    - 新序列 = 父束的序列（用你的 gather_beams 取出来，是拷贝，不能改动 running），在位置 length 写入 token。
    返回 (分数 (B, C), 新序列 (B, C, L), 父束 (B, C))。
    """
    raise NotImplementedError("Exercise 6.2: top_candidates")
