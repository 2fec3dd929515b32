"""课时3练习：注意力——因果掩码、padding 掩码与分组查询注意力（GQA）。

把每个 `raise NotImplementedError(...)` 换成你的实现，然后运行 `python -m lessons.grade 3`。
参考答案就是 model/layers.py 里的同名函数（签名完全相同）。
形状记号：B = batch，T = 本次输入的 query 个数，S = 全部 key 个数（缓存 + 本次），d = head_dim，
n_heads / n_kv = query 头数 / key-value 头数。
"""

from __future__ import annotations

import torch

__all__ = ["repeat_kv", "build_attention_mask", "eager_attention"]


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
