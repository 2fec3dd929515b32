"""课时8练习：投机解码（接受规则，贪心与采样的整个循环）与 LogU 不确定度。

把每个 `raise NotImplementedError(...)` 换成你的实现，然后运行 `python -m lessons.grade 8`。
参考答案是 generation/speculative.py 的 `greedy_accept`、`sampling_accept` 与
generation/uncertainty.py 的 `logu_uncertainty`（签名完全相同）；综合练习 8.4、8.5 的参考答案在
lessons/exercises/solutions/lesson_8.py。gamma = 本轮草稿 token 数，V = 词表大小。
"""

from __future__ import annotations

import torch

__all__ = ["greedy_accept", "sampling_accept", "logu_uncertainty", "speculative_greedy", "speculative_sampling"]


def greedy_accept(target_scores: torch.Tensor, draft_tokens: torch.Tensor) -> tuple[int, int]:
    """Exercise 8.1：贪心投机解码的验证。

    target_scores (gamma + 1, V)：目标模型在 [上一个 token, d_1, ..., d_gamma] 这 gamma + 1 个位置上的分数，
    第 i 行预测的是第 i 个草稿位置；draft_tokens (gamma,)：草稿 token。
    保留草稿中与目标模型 argmax 一致的最长前缀（k 个），再加上目标模型在第 k 个位置的 argmax。
    返回 (k, 目标模型的下一个 token)，两个 int。
    """
    raise NotImplementedError("Exercise 8.1: greedy_accept")


def sampling_accept(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor,
                    generator: torch.Generator | None) -> tuple[int, int]:
    """Exercise 8.2：投机采样的接受规则（Leviathan et al. 2023，算法 1）。

    target_probs (gamma + 1, V) 是 p，draft_probs (gamma, V) 是 q，draft_tokens (gamma,) 是从 q 抽出的 d_i。
    依次对 i = 0, 1, ...：以概率 min(1, p_i(d_i) / q_i(d_i)) 接受 d_i（抽 u ~ U(0, 1)，u < p/q 则接受）；
    第一次拒绝时，从 norm(max(0, p_i - q_i)) 抽一个 token 作为结尾；全部接受时，从 p_gamma 抽一个额外的 token。
    随机数只能来自 generator（torch.rand(..., generator=generator)、torch.multinomial(..., generator=generator)）。
    返回 (接受的个数, 最后抽出的 token)。这样得到的每个 token 恰好服从 p。
    """
    raise NotImplementedError("Exercise 8.2: sampling_accept")


def logu_uncertainty(logits: torch.Tensor, top_k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 8.3：LogU（Ma et al. 2025）的偶然不确定度 AU 与认知不确定度 EU。

    取最大的 top_k 个 logits 作为 Dirichlet 的证据：alpha_k = max(0, logit_k)，alpha_0 = Σ alpha_k；
    期望概率 alpha_k / alpha_0（alpha_0 = 0 时取均匀的 1/top_k）；
    AU = -Σ_k (alpha_k / alpha_0) (ψ(alpha_k + 1) - ψ(alpha_0 + 1))，ψ 是 digamma（torch.digamma）；
    EU = top_k / Σ_k (alpha_k + 1)。
    logits (..., V) -> (AU, EU)，各为 (...)。top_k 不是 1..V 之间的整数时抛 ValueError。
    """
    raise NotImplementedError("Exercise 8.3: logu_uncertainty")


def speculative_greedy(target, draft, input_ids: torch.Tensor, max_new_tokens: int,
                       num_draft_tokens: int) -> torch.Tensor:
    """Exercise 8.4：贪心投机解码的整个循环（综合练习）。

    target、draft 是包里的 CausalLM（同一个词表），各用一个 `DynamicCache()`；
    `m(ids, cache=cache).logits` (1, T, V) 把 ids 追加进缓存，`cache.crop(n)` 只留前 n 个位置，
    `cache.get_seq_length()` 是缓存长度。input_ids (1, T)。每一轮：
    1. 草稿逐个贪心地提出 γ = num_draft_tokens 个 token（不超过还需要的个数）
    2. 目标模型对 [上一个 token, d_1..d_γ] **一次**前向，得到 γ + 1 个位置的 argmax
    3. 接受与目标一致的最长前缀，再接上目标在第一个不一致处（或全部接受时最后一个位置）的 token
    4. 两个缓存都 crop 掉被拒绝的部分
    返回新 token (1, max_new_tokens)（不处理 EOS）：必须与 target 自己贪心解码**逐 token 相同**，
    而草稿与目标相同时，目标模型的前向次数要远少于 max_new_tokens。
    """
    raise NotImplementedError("Exercise 8.4: speculative_greedy")


def speculative_sampling(target, draft, input_ids: torch.Tensor, max_new_tokens: int, num_draft_tokens: int,
                         generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
    """Exercise 8.5：投机**采样**的整个循环（综合练习；Leviathan et al. 2023 算法 1，加上 KV 缓存）。

    target、draft 是包里的 CausalLM（同一个词表），各用一个 `DynamicCache()`，用法同 8.4。input_ids (1, T)。
    分布都是 softmax(logits / temperature)：草稿的记作 q，目标的记作 p。每一轮：
    1. 本轮草稿数 γ = min(num_draft_tokens, 还需要的 token 数 - 1)（每轮最后总有一个目标抽出的 token，所以不会超出）
    2. 草稿逐个提出 γ 个 token：d_i = torch.multinomial(q_i, 1, generator=generator)
    3. 目标模型对 [上一个 token, d_1..d_γ] **一次**前向，得到 p_1..p_{γ+1}
    4. **一次** u = torch.rand(γ, generator=generator)；依次当 u_i < p_i(d_i) / q_i(d_i) 时接受 d_i，第一次拒绝就停
    5. 在第 i 个草稿处被拒绝：从 norm(max(0, p_i - q_i)) 抽一个 token；全部接受：从 p_{γ+1} 抽一个额外的 token
       （都用 torch.multinomial(..., 1, generator=generator)）
    6. 两个缓存都 crop 掉被拒绝的部分
    随机数只能来自 generator，并且按上面的顺序取（评分会与同一个随机数流逐 token 比较）。
    返回新 token (1, max_new_tokens)（不处理 EOS）。每个输出的 token 都恰好服从目标模型的分布 p。
    """
    raise NotImplementedError("Exercise 8.5: speculative_sampling")
