"""课时7练习：层内部——熵、熵谷与 DoLa 的层间对比。

把每个 `raise NotImplementedError(...)` 换成你的实现，然后运行 `python -m lessons.grade 7`。
参考答案是 generation/dola.py 与 generation/entropy.py 里的同名函数（签名完全相同）；综合练习 7.8 的
参考答案在 lessons/exercises/solutions/lesson_7.py。
log 都是自然对数（nats），除非另有说明；-inf 的 log 概率表示概率为 0，约定 0 · log 0 = 0。
"""

from __future__ import annotations

import torch

__all__ = ["entropy_bits", "trough_index", "jensen_shannon_divergence", "plausibility_mask", "dola_contrast",
           "select_premature_layer", "random_after_index", "entropy_layer_choice"]


def entropy_bits(scores: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Exercise 7.1：softmax(scores) 在最后一维上的香农熵，单位是 bit：H = -Σ p log2 p。

    scores (..., V) 是任意 logits（可以含 -inf，表示概率 0，不能产生 NaN）-> (...)。
    在 float32 里算。normalize=True 时再除以 log2(V)，使 0 <= H <= 1。
    """
    raise NotImplementedError("Exercise 7.1: entropy_bits")


def trough_index(costs: torch.Tensor) -> torch.Tensor:
    """Exercise 7.2：熵谷（trough）。costs (B, L)，第 L-1 列是最后一层。

    从最后一列出发往前（往浅层）走，只要下一列的值**严格**更小就继续走；停下的位置就是熵谷。
    例：[3, 1, 2, 4] -> 1（4 > 2 > 1，再往前 3 不比 1 小，停在下标 1）。返回 (B,) long。
    """
    raise NotImplementedError("Exercise 7.2: trough_index")


def jensen_shannon_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Exercise 7.3：JSD(P || Q) = ½ KL(P || A) + ½ KL(Q || A)，A = (P + Q) / 2，单位 nats（DoLa 式 3）。

    log_p, log_q: (..., V) 的 log 概率（可广播），可以含 -inf -> (...)。
    提示：log A = logaddexp(log_p, log_q) - log 2；KL(P || A) = Σ p (log p - log A)，p = 0 的项记为 0。
    """
    raise NotImplementedError("Exercise 7.3: jensen_shannon_divergence")


def plausibility_mask(final_log_probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Exercise 7.4：DoLa 的自适应可信约束（式 4）：V_head = {x : q_N(x) >= alpha · max_w q_N(w)}。

    final_log_probs (B, V) 是最后一层的 log 概率 -> (B, V) bool。在 log 空间里比较：
    log q_N(x) >= max log q_N + log(alpha)。alpha = 0 时全部为 True。
    """
    raise NotImplementedError("Exercise 7.4: plausibility_mask")


def dola_contrast(final_log_probs: torch.Tensor, premature_log_probs: torch.Tensor,
                  alpha: float) -> torch.Tensor:
    """Exercise 7.5：DoLa 的层间对比（式 5）：在 V_head 上 F(x) = log q_N(x) - log q_M(x)，其余为 -inf。

    两个输入都是 (B, V) 的 log 概率（成熟层 N 与早期层 M）；V_head 用你的 plausibility_mask。返回 (B, V)。
    """
    raise NotImplementedError("Exercise 7.5: dola_contrast")


def select_premature_layer(final_log_probs: torch.Tensor,
                           premature_log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 7.6：DoLa 的早期层选择（式 3）：M = argmax_j JSD(q_N || q_j)，每个序列分别选。

    final_log_probs (B, V) 是最后一层的 log 概率，premature_log_probs (L, B, V) 是 L 个候选层的。
    返回 (每行选中的候选下标 (B,)（0..L-1，long）, JSD 表 (B, L)，单位 nats)。可以用你的 7.3。
    """
    raise NotImplementedError("Exercise 7.6: select_premature_layer")


def random_after_index(trough: torch.Tensor, last: int, generator: torch.Generator | None) -> torch.Tensor:
    """Exercise 7.7：熵谷之后随机（random_after）：每行在 [trough, last]（两端都含）里均匀地抽一个整数。

    trough (B,) long；随机数只能来自 generator（torch.rand(..., generator=generator)）。返回 (B,) long。
    """
    raise NotImplementedError("Exercise 7.7: random_after_index")


def entropy_layer_choice(hidden_states: tuple[torch.Tensor, ...], norm, lm_head, strategy: str = "trough",
                         generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exercise 7.8：按熵选层解码的一步（综合练习；种子文档 000 的 "trough" 与 "random_after"）。

    hidden_states 是 `model(ids, output_hidden_states=True).hidden_states`：N + 1 个 (B, T, H)，
    下标 0 是词嵌入，下标 j 是第 j 个块的输出（最终 norm 之前）。norm 是最终的 RMSNorm，lm_head 是输出头
    （`model.norm`、`model.lm_head`，都是可以直接调用的模块）。
    1. 每层 j = 1..N 在**最后一个位置**的早退 logits：lm_head(norm(h_j[:, -1]))，各 (B, V)
    2. 每层 logits 的熵，单位 bit（同 7.1，不归一化）：entropies (B, N)，第 j - 1 列是第 j 层
    3. 熵谷（同 7.2）：从第 N 层出发往浅层走，只要更浅的一层熵**严格**更小就继续，停下的层是熵谷
    4. strategy="trough"：选熵谷层；strategy="random_after"：在 [熵谷层, N] 里均匀地抽一层，随机数同 7.7：
       **一次** u = torch.rand(B, generator=generator)，层 = 熵谷层 + floor(u × 区间里的层数)
    返回 (选中层的 logits (B, V) float32, 选中的层号 (B,) long（1..N）, entropies (B, N))。
    """
    raise NotImplementedError("Exercise 7.8: entropy_layer_choice")
