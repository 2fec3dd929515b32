"""The building blocks of a LLaMA decoder: RMSNorm, grouped-query attention with RoPE, SwiGLU MLP, the block.

Shapes use B = batch, T = new tokens in this call, S = all keys (cached + new), H = hidden size,
n_heads / n_kv = query / key-value heads, d = head_dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .rope import apply_rotary


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight  (Zhang & Sennrich 2019); no mean subtraction, no bias."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()  # the mean of squares overflows / loses precision in half precision (as transformers)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, S, d) -> (B, n_kv * n_rep, S, d): each key/value head serves n_rep query heads (GQA)."""
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=1)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    scale: float, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, written out. q (B, n_heads, T, d), k/v (B, n_kv, S, d).

    sinks (n_heads,): GPT-OSS attention sinks, one learned logit per head that joins the softmax as an extra
    column and is then dropped, so a head may give part of its attention to "nothing" (rows sum to < 1).
    """
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, n_heads, S, d)
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, n_heads, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    if sinks is None:
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    else:
        sink_column = sinks.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)  # (B, n_heads, T, 1)
        probs = torch.softmax(torch.cat([scores, sink_column], dim=-1).float(), dim=-1)
        probs = probs[..., :-1].to(q.dtype)  # drop the sink: it has no value vector
    return probs @ v  # (B, n_heads, T, d)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   scale: float, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """The same computation through PyTorch's fused kernel; GQA handled inside it (no copy of k/v)."""
    if sinks is not None:
        q, k, v, mask = append_sink_key(q, k, v, mask, sinks, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


def append_sink_key(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    sinks: torch.Tensor, scale: float):
    """Attention sinks for a kernel that only takes q, k, v: one extra key scoring exactly sinks[h], value 0.

    Each query gets one more coordinate, sinks[h] / scale; real keys get 0 there and the extra key is
    (0, ..., 0, 1). Then q.k * scale is unchanged for real keys and equals sinks[h] for the extra one, whose
    zero value adds nothing to the output: the extra softmax column of `eager_attention`.
    """
    B, n_heads, T, d = q.shape
    n_kv = k.shape[1]
    sink_coordinate = (sinks / scale).to(q.dtype).view(1, n_heads, 1, 1).expand(B, n_heads, T, 1)
    q = torch.cat([q, sink_coordinate], dim=-1)  # (B, n_heads, T, d + 1)
    sink_key = torch.zeros(B, n_kv, 1, d + 1, dtype=k.dtype, device=k.device)
    sink_key[..., -1] = 1.0
    k = torch.cat([F.pad(k, (0, 1)), sink_key], dim=-2)  # (B, n_kv, S + 1, d + 1)
    v = F.pad(v, (0, 0, 0, 1))  # (B, n_kv, S + 1, d): the sink's value is zero
    if mask is not None:
        mask = F.pad(mask, (0, 1), value=True)  # (B or 1, 1, T, S + 1): every query sees the sink
    return q, k, v, mask


ATTENTION_FUNCTIONS = {"eager": eager_attention, "sdpa": sdpa_attention}


class Attention(nn.Module):
    """Grouped-query self-attention (Ainslie et al. 2023): n_heads queries share n_kv key/value heads."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=bias)
        self.sinks: torch.Tensor | None = None  # GPT-OSS: one learned logit per head (model/gpt_oss.py)
        self.q_norm: nn.Module | None = None  # Qwen3: RMSNorm on each query / key head (model/qwen.py)
        self.k_norm: nn.Module | None = None
        self.attn_implementation = "sdpa"

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache=None) -> torch.Tensor:
        # (B, T, n_heads * d), (B, T, n_kv * d), (B, T, n_kv * d)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.attend(q, k, v, cos, sin, mask, cache)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               mask: torch.Tensor | None, cache=None) -> torch.Tensor:
        """The projected queries, keys and values -> heads, RoPE, the cache, attention, o_proj: (B, T, H)."""
        B, T, _ = q.shape
        d = self.head_dim
        q = q.view(B, T, self.n_heads, d).transpose(1, 2)  # (B, n_heads, T, d)
        k = k.view(B, T, self.n_kv, d).transpose(1, 2)  # (B, n_kv, T, d)
        v = v.view(B, T, self.n_kv, d).transpose(1, 2)  # (B, n_kv, T, d)
        if self.q_norm is not None:  # Qwen3: an RMSNorm over each query and each key head, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            # Keys are cached after RoPE, so cached positions never need rotating again.
            k, v = cache.update(k, v, self.layer_idx)  # (B, n_kv, S, d)
        out_dtype = q.dtype
        if k.dtype != q.dtype:  # a cache that keeps keys/values in float32 for a half-precision model
            q = q.to(k.dtype)
        out = ATTENTION_FUNCTIONS[self.attn_implementation](q, k, v, mask, self.scale, self.sinks)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * d).to(out_dtype)  # (B, T, n_heads * d)
        return self.o_proj(out)


class SwiGLU(nn.Module):
    """down( silu(gate(x)) * up(x) )  (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        H, I, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(H, I, bias=bias)
        self.up_proj = nn.Linear(H, I, bias=bias)
        self.down_proj = nn.Linear(I, H, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)).

    The LLaMA block by default; GPT-OSS (model/gpt_oss.py) passes its own attention and MLP modules.
    """

    attention_type = "full_attention"  # which mask the model hands this block (GPT-OSS alternates)

    def __init__(self, config: ModelConfig, layer_idx: int, attention: nn.Module | None = None,
                 mlp: nn.Module | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = attention if attention is not None else Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = mlp if mlp is not None else SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache=None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def build_attention_mask(attention_mask: torch.Tensor | None, query_len: int, key_len: int,
                         device: torch.device, sliding_window: int | None = None) -> torch.Tensor | None:
    """Boolean mask (B or 1, 1, T, S), True where a query may attend to a key.

    The T queries are the last T of the S key positions (the cache holds the first S - T). A query sees
    keys at or before its own position, that are not padding, and (with a sliding window) that lie fewer
    than `sliding_window` positions behind it. Every query always sees itself, so a padding query's row is
    never empty (an empty row would turn softmax into NaN); its output is garbage that nobody reads.
    """
    if attention_mask is None and query_len == 1 and sliding_window is None:
        return None  # one new token with no padding sees every cached key: no mask needed
    query_pos = torch.arange(key_len - query_len, key_len, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(key_len, device=device)[None, :]  # (1, S)
    allowed = key_pos <= query_pos  # (T, S) causal
    if sliding_window is not None:
        allowed = allowed & (key_pos > query_pos - sliding_window)
    allowed = allowed[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        if attention_mask.shape[-1] != key_len:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions but the cache plus input have "
                f"{key_len}; pass a mask for the whole sequence so far"
            )
        allowed = allowed & attention_mask[:, None, None, :].bool()  # (B, 1, T, S)
    return allowed | (key_pos == query_pos)[None, None]
