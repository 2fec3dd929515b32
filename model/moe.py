"""A mixture-of-experts MLP as GPT-OSS uses it (Shazeer et al. 2017; Fedus et al. 2021, "Switch Transformer").

Instead of one SwiGLU per block, E small MLPs ("experts") and a router. For every token the router scores all
E experts, keeps the k best, and the block's output is the softmax-weighted sum of those k experts' outputs:

    router_logits = x W_r^T + b_r                 (E scores per token)
    top_k experts e_1..e_k, weights w = softmax(router_logits[e_1..e_k])   (softmax over the k kept only)
    y = sum_j w_j * expert_{e_j}(x)

Each token runs k of the E experts, so compute grows with k while parameters grow with E.

A GPT-OSS expert is a clamped SwiGLU variant (OpenAI gpt-oss reference, torch/model.py `swiglu`):

    gate, up = the even and odd columns of x W_gate_up + b     (interleaved, not two halves)
    gate = min(gate, limit); up = clamp(up, -limit, limit)     (limit = swiglu_limit = 7.0)
    expert(x) = ((up + 1) * gate * sigmoid(1.702 * gate)) W_down + b_down

gate * sigmoid(1.702 gate) is the sigmoid approximation of GELU (Hendrycks & Gimpel 2016).
Shapes: N = tokens (B * T), H = hidden size, I = intermediate size, E = experts, k = experts per token.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig

SWIGLU_ALPHA = 1.702  # the GELU-approximating sigmoid slope of GPT-OSS experts


class Experts(nn.Module):
    """E expert MLPs stored as stacked tensors, named and laid out as transformers' GptOssExperts (x @ W)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, H, I = config.num_local_experts, config.hidden_size, config.intermediate_size
        std = config.initializer_range
        self.gate_up_proj = nn.Parameter(torch.empty(E, H, 2 * I).normal_(0.0, std))  # (E, H, 2I) interleaved
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(E, 2 * I))
        self.down_proj = nn.Parameter(torch.empty(E, I, H).normal_(0.0, std))  # (E, I, H)
        self.down_proj_bias = nn.Parameter(torch.zeros(E, H))
        self.limit = config.swiglu_limit

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on the tokens routed to it: (n, H) -> (n, H)."""
        gate_up = x @ self.gate_up_proj[e] + self.gate_up_proj_bias[e]  # (n, 2I)
        gate, up = gate_up[:, 0::2], gate_up[:, 1::2]  # (n, I) each: columns alternate gate, up, gate, up, ...
        gate = gate.clamp(max=self.limit)  # clamped from above only
        up = up.clamp(min=-self.limit, max=self.limit)
        glu = gate * torch.sigmoid(gate * SWIGLU_ALPHA)
        return ((up + 1) * glu) @ self.down_proj[e] + self.down_proj_bias[e]  # (n, H)

    def forward(self, x: torch.Tensor, top_experts: torch.Tensor, top_weights: torch.Tensor) -> torch.Tensor:
        """x (N, H); top_experts, top_weights (N, k) -> sum_j top_weights[:, j] * expert_{top_experts[:, j]}(x).

        Loops over the experts that got at least one token, running each on its tokens only.
        """
        out = torch.zeros_like(x)  # (N, H)
        for e in top_experts.unique().tolist():
            token_idx, slot = torch.where(top_experts == e)  # which tokens chose e, and as which of their k
            weighted = self.expert(e, x[token_idx]) * top_weights[token_idx, slot, None]  # (n, H)
            out.index_add_(0, token_idx, weighted.to(x.dtype))
        return out


class MoEMLP(nn.Module):
    """Router + experts; a drop-in for SwiGLU in the decoder block: (B, T, H) -> (B, T, H)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.router = nn.Linear(config.hidden_size, config.num_local_experts, bias=True)
        self.experts = Experts(config)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, H) -> the k chosen experts (N, k) and their weights (N, k), a softmax over the k only."""
        router_logits = self.router(x)  # (N, E)
        top_logits, top_experts = router_logits.topk(self.top_k, dim=-1)  # (N, k) each
        return top_experts, torch.softmax(top_logits, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        tokens = x.reshape(B * T, H)  # (N, H): routing is per token, batch and time alike
        top_experts, top_weights = self.route(tokens)
        return self.experts(tokens, top_experts, top_weights).view(B, T, H)
