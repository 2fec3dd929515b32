"""课时5练习：KV 缓存与生成策略。

把每个 `raise NotImplementedError(...)` 换成你的实现，然后运行 `python -m lessons.grade 5`。
参考答案是 cache/dynamic.py 的 `DynamicLayer.update`、`kv_cache_bytes` 与 generation/steps.py 里的
同名函数（签名完全相同）。所有 logits 步骤都是 (B, V) float 进、(B, V) 出的纯函数：
被过滤掉的 token 设为 -inf，不重新归一化（之后采样时的 softmax 会做这件事）。
"""

from __future__ import annotations

import torch

__all__ = ["cache_layer_update", "kv_cache_bytes", "temperature_scale", "top_k_filter", "top_p_filter",
           "repetition_penalty", "min_p_filter", "generate_with_cache", "trim_at_stop_string", "repeated_ngram",
           "distinct_n"]


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


def min_p_filter(scores: torch.Tensor, min_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Exercise 5.7：Min-p（Nguyen et al. 2024）：概率低于 min_p × 最大概率的 token 设为 -inf。

    概率用 softmax(scores) 算；最好的 min_tokens_to_keep 个总是保留。scores: (B, V) -> (B, V)。
    """
    raise NotImplementedError("Exercise 5.7: min_p_filter")


def generate_with_cache(model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None,
                        do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None, generator: torch.Generator | None = None,
                        attention_mask: torch.Tensor | None = None, pad_token_id: int | None = None) -> torch.Tensor:
    """Exercise 5.8：自己的 generate()：一批左 padding 的提示词、KV 缓存、贪心或采样、EOS（综合练习，约 35 行）。

    课时5 的 my_generate 只处理一个提示词；这里是 transformers generate() 的一般形式。
    model 是包里的 CausalLM：`cache = DynamicCache()`（from cache import DynamicCache），
    `model(ids, attention_mask=mask, position_ids=pos, cache=cache).logits` 形状 (B, T, V)，
    并把 ids 的 K、V 追加进 cache。input_ids (B, T)；attention_mask (B, T)，padding 处为 0、在左边
    （None 表示没有 padding）。
    - 第一步把整批提示词送进模型（prefill）；之后每步**只送新 token** (B, 1)（评分会数模型看到了多少个 token）
    - attention_mask 每步接上一列 1：它覆盖缓存里的全部位置加上新 token，(B, past + 1)
    - 位置编号从 mask 算：cumsum(mask) - 1（左边的 padding 不占位置，每行第一个真实 token 是位置 0），
      之后每步每行加 1
    - 贪心：argmax；do_sample=True：logits / temperature → top-k（可选）→ top-p（可选，与 transformers 相同：
      升序排序，累积和 <= 1 - top_p 的去掉，最好的一个总保留）→ softmax →
      整个 batch 一次 torch.multinomial(probs, 1, generator=generator)
    - 某行生成了 eos_token_id 之后（EOS 本身留在输出里），这一行之后每步都只得到 pad_token_id
      （None 时用 eos_token_id，与 transformers 相同）；所有行都结束了就停，最多 max_new_tokens 步
    返回新生成的 token，形状 (B, n)，dtype long（n 是实际走的步数）。
    """
    raise NotImplementedError("Exercise 5.8: generate_with_cache")


def trim_at_stop_string(text: str, stop_strings: list[str]) -> tuple[str, bool]:
    """Exercise 5.9：停止词。text 是到目前为止生成的文字。

    若其中出现了任一停止词，返回 (截到**最早结束**的那个停止词末尾（含停止词）的文字, True)；否则 (text, False)。
    例：trim_at_stop_string("a\\nb\\n", ["\\n"]) == ("a\\n", True)。空字符串不算停止词。
    """
    raise NotImplementedError("Exercise 5.9: trim_at_stop_string")


def repeated_ngram(tokens: list[int], n: int) -> bool:
    """Exercise 5.10：（原课后练习 5）重复检测：最后 n 个 token 是否在**之前**原样出现过（可以与最后 n 个重叠）。

    tokens 不超过 n 个时返回 False。例：[1, 2, 3, 1, 2] 与 n=2 -> True；[1, 2, 3, 4] 与 n=2 -> False。
    """
    raise NotImplementedError("Exercise 5.10: repeated_ngram")


def distinct_n(rows: list[list[int]], n: int) -> float:
    """Exercise 5.11：（原课后练习 3）distinct-n：所有行里不同的 n 元组个数 / n 元组总数（各行分别取相邻的 n 个）。

    没有任何 n 元组时返回 0.0。例：[[1, 2, 1, 2]] 与 n=2：(1,2) (2,1) (1,2) -> 2/3。
    """
    raise NotImplementedError("Exercise 5.11: distinct_n")
