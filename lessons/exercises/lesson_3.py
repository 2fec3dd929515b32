"""课时3练习：注意力——因果掩码、padding 掩码与分组查询注意力（GQA）。

把每个 `raise NotImplementedError(...)` 换成你的实现，然后运行 `python -m lessons.grade 3`。
参考答案就是 model/layers.py 里的同名函数（签名完全相同）。
形状记号：B = batch，T = 本次输入的 query 个数，S = 全部 key 个数（缓存 + 本次），d = head_dim，
n_heads / n_kv = query 头数 / key-value 头数。
"""

from __future__ import annotations

import torch

__all__ = ["repeat_kv", "build_attention_mask", "eager_attention", "attention_forward"]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Exercise 3.1：GQA 里一个 key/value 头要服务 n_rep 个 query 头，把它复制 n_rep 份。

    x: (B, n_kv, S, d) -> (B, n_kv * n_rep, S, d)。顺序是 [h0, h0, h1, h1, ...]（每个头连续重复），
    因为 query 头 i 对应的 kv 头是 i // n_rep。n_rep == 1 时原样返回。
    """
    raise NotImplementedError("Exercise 3.1: repeat_kv")


def build_attention_mask(attention_mask: torch.Tensor | None, query_len: int, key_len: int,
                         device: torch.device, sliding_window: int | None = None) -> torch.Tensor | None:
    """Exercise 3.2：布尔注意力掩码 (B 或 1, 1, T, S)，True 表示这个 query 可以看这个 key。

    - 这 T 个 query 是 S 个位置里的最后 T 个（前 S - T 个在 KV 缓存里），所以 query i 的位置是 S - T + i；
    - 因果：query 只能看位置 <= 自己的 key；
    - padding：attention_mask (B, S) 里为 0 的 key 谁也不能看（它的形状不是 (B, S) 时抛 ValueError）；
    - sliding_window 不为 None 时，只能看落后自己不到 sliding_window 个位置的 key；
    - 每个 query 总能看到它自己（否则 padding 行全是 False，softmax 会得到 NaN）。
    没有 padding、只有一个新 token、也没有窗口时，它能看所有 key，可以返回 None（表示"不需要掩码"）。
    """
    raise NotImplementedError("Exercise 3.2: build_attention_mask")


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    scale: float, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Exercise 3.3：把注意力公式写出来：softmax(q k^T * scale + mask) v。

    q: (B, n_heads, T, d)；k, v: (B, n_kv, S, d)，n_kv 可以小于 n_heads（用你的 repeat_kv）；
    mask: 布尔 (B 或 1, 1, T, S)，False 的位置分数设为 -inf；None 表示不遮挡。
    softmax 在 float32 里算，再转回 q 的 dtype。返回 (B, n_heads, T, d)。
    sinks（GPT-OSS 的注意力汇点，课时9）：None，或形状 (n_heads,) 的张量，每个头一个可学习的分数。
    它作为额外的一列加入 softmax，算完再丢掉这一列（它没有 value），于是每行概率之和小于 1。
    """
    raise NotImplementedError("Exercise 3.3: eager_attention")


def attention_forward(x: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, v_weight: torch.Tensor,
                      o_weight: torch.Tensor, num_heads: int, num_kv_heads: int, cos: torch.Tensor,
                      sin: torch.Tensor, mask: torch.Tensor,
                      past_kv: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Exercise 3.4：整个注意力模块的前向（综合练习：投影、RoPE、缓存、GQA、输出投影）。

    x (B, T, H)；四个权重是 nn.Linear 的 weight（无 bias）：q (n_h·d, H)，k、v (n_kv·d, H)，o (H, n_h·d)。
    1. q、k、v = x 乘以各自权重的转置，拆成头：(B, heads, T, d)，d = q_weight.shape[0] // num_heads
    2. RoPE：cos、sin 形状 (B, T, d)；q·cos + rotate_half(q)·sin，k 同理（课时2）
    3. past_kv 是之前的 (keys, values)，形状 (B, n_kv, S, d)：把新的 k、v 接在它们后面（dim=2）
    4. GQA：每个 kv 头服务 num_heads // num_kv_heads 个 query 头（repeat_interleave）
    5. softmax(q·kᵀ / √d，mask 为 False 处 -inf)·v，mask 为 (B 或 1, 1, T, S_total) 的 bool
    6. 合并头 (B, T, n_h·d)，乘以 o_weight 的转置
    返回 (输出 (B, T, H), (全部 keys, 全部 values))——后者就是下一步的 past_kv（RoPE 之后、GQA 重复之前）。
    """
    raise NotImplementedError("Exercise 3.4: attention_forward")
