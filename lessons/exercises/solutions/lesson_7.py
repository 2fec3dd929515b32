"""课时7 练习参考答案（按熵选层解码的一步：早退 logits、每层的熵、熵谷、random_after）。"""

from __future__ import annotations

import math

import torch


def entropy_layer_choice(hidden_states: tuple[torch.Tensor, ...], norm, lm_head, strategy: str = "trough",
                         generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    N = len(hidden_states) - 1
    last = torch.stack([h[:, -1] for h in hidden_states[1:]])            # (N, B, H) layers 1..N, last position
    logits = lm_head(norm(last)).float()                                  # (N, B, V) the early-exit logits
    log_p = logits.log_softmax(-1)
    p = log_p.exp()
    plogp = torch.where(p > 0, p * log_p, torch.zeros_like(p))            # 0 log 0 = 0 (a -inf logit)
    entropies = (-plogp.sum(-1) / math.log(2.0)).T                        # (B, N) bits, column j-1 = layer j
    troughs = []
    for row in entropies.tolist():                                        # walk down while it strictly falls
        j = N - 1
        while j > 0 and row[j - 1] < row[j]:
            j -= 1
        troughs.append(j)
    chosen = torch.tensor(troughs)                                        # (B,) positions 0..N-1
    if strategy == "random_after":
        span = N - chosen                                                 # layers in [trough, N]
        u = torch.rand(chosen.shape, generator=generator)
        chosen = chosen + torch.minimum((u * span).long(), span - 1)
    elif strategy != "trough":
        raise ValueError(f"strategy must be 'trough' or 'random_after', got {strategy!r}")
    rows = torch.arange(chosen.shape[0])
    return logits[chosen, rows], chosen + 1, entropies
