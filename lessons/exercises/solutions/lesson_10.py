"""课时10 练习参考答案（语言模型的损失与一步训练）。"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    predictions = logits[:, :-1]                              # position t predicts token t + 1
    targets = input_ids[:, 1:].clone()
    if attention_mask is not None:
        targets[attention_mask[:, 1:] == 0] = -100           # padding is never a target
    return F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=-100)


def train_step(model, optimizer, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               max_grad_norm: float = 1.0) -> float:
    model.train()
    logits = model(input_ids, attention_mask=attention_mask).logits
    loss = lm_loss(logits, input_ids, attention_mask)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()
