"""课时10练习：训练。

把每个 `raise NotImplementedError(...)` 换成你的实现，然后运行 `python -m lessons.grade 10`。
参考答案在 lessons/exercises/solutions/lesson_10.py（先自己做；`python -m lessons.grade 10 --solution 10.1`）。
"""

from __future__ import annotations

import torch

__all__ = ["lm_loss", "train_step"]


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exercise 10.1：下一个 token 的交叉熵，位移（shift）要自己写出来。

    logits (B, T, V) 是模型对每个位置的输出，位置 t 预测的是 input_ids[:, t + 1]：所以用 logits 的前 T-1 个位置
    对 input_ids 的后 T-1 个 token。attention_mask (B, T) 中为 0 的位置是 padding：**目标**是 padding 的项不计入。
    返回所有计入项的平均交叉熵（标量张量，可反向传播）。提示：F.cross_entropy(..., ignore_index=-100)。
    """
    raise NotImplementedError("Exercise 10.1: lm_loss")


def train_step(model, optimizer, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               max_grad_norm: float = 1.0) -> float:
    """Exercise 10.2：一步训练。

    model.train()；logits = model(input_ids, attention_mask=attention_mask).logits；loss = 你的 lm_loss；
    清空旧梯度 → 反向传播 → 把全部参数的梯度范数裁剪到 max_grad_norm（torch.nn.utils.clip_grad_norm_）
    → optimizer.step()。返回这一步的 loss（float）。
    """
    raise NotImplementedError("Exercise 10.2: train_step")
