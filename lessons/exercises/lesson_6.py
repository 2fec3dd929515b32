"""课时6练习：束搜索的一步与完整的束搜索。

把每个 `raise NotImplementedError(...)` 换成你的实现，然后运行 `python -m lessons.grade 6`。
参考答案是 generation/beam.py 的 `gather_beams` 与 `top_candidates`（签名完全相同）；综合练习 6.3 的
参考答案在 lessons/exercises/solutions/lesson_6.py。
形状记号：B = 提示词个数，K = 束宽 num_beams，V = 词表大小，L = 提示词 + 最多生成的长度，C = 候选个数。
"""

from __future__ import annotations

import torch

__all__ = ["gather_beams", "top_candidates", "beam_search"]


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


def beam_search(model, input_ids: torch.Tensor, num_beams: int, max_new_tokens: int, length_penalty: float = 1.0,
                eos_token_id: int | None = None, num_return_sequences: int = 1
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Exercise 6.3：完整的束搜索（综合练习；要与 transformers 的 generate(num_beams=K) 逐 token 相同）。

    model 是包里的 CausalLM：`cache = DynamicCache()`（from cache import DynamicCache），
    `model(ids, cache=cache).logits` (K, T, V) 并把 ids 的 K、V 追加进缓存；`cache.reorder(parents)` 把第 i 行
    换成原来第 parents[i] 行。input_ids (1, T)，K = num_beams。
    - 开始：把提示词复制 K 份一起 prefill（input_ids.repeat(K, 1)）；K 条束的累计分数是 [0, -1e9, ..., -1e9]
      （只有第 0 条是"活"的，否则会得到 K 个一样的候选）；之后每步只送每条束的新 token，形状 (K, 1)
    - 第 n 步（n = 1..max_new_tokens，n 是生成的 token 数）：各束下一个 token 的 log_softmax 加上束的累计分数，
      展平成 K·V 个，取最大的 2K 个候选（torch.topk，降序）；扁平下标 = 父束 × V + token。依次看每个候选：
      · token 是 eos_token_id，或 n == max_new_tokens：候选**结束**。只有排名前 K 的结束候选才放进"已完成"的
        堆（heapq），分数 = 累计 log 概率 / n ** length_penalty；堆里最多留 K 个（多了就弹出最差的）
      · 其余（不结束的）候选按顺序取前 K 个作为新的束，缓存随之 reorder
    - 提前停止（transformers 默认的 early_stopping=False）：堆里已有 K 个，且最好的新束按当前长度算的分数
      （累计 log 概率 / n ** length_penalty）不高于堆里最差的，就停
    返回 (最好的 num_return_sequences 个已完成假设的新 token（各为一维 long 张量，含 EOS），分数从高到低,
    它们的分数 (num_return_sequences,))。
    """
    raise NotImplementedError("Exercise 6.3: beam_search")
