"""The whole causal language model: token embedding -> decoder blocks -> final RMSNorm -> lm_head.

    input_ids (B, T) -> embed (B, T, H) -> N x DecoderBlock -> norm -> lm_head -> logits (B, T, vocab)

With `tie_word_embeddings` the head *is* the embedding matrix (one tensor, vocab x H), as in SmolLM2.
`model_type` "gpt_oss" swaps in the GPT-OSS block (model/gpt_oss.py); everything else here is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from cache.sliding import SlidingWindowLayer

from .config import ModelConfig
from .gpt_oss import GptOssBlock
from .qwen import QwenBlock
from .layers import ATTENTION_FUNCTIONS, DecoderBlock, RMSNorm, build_attention_mask
from .rope import RotaryEmbedding


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # (B, T_kept, vocab)
    # With output_hidden_states: num_hidden_layers + 1 tensors (B, T_kept, H): the embeddings, then each
    # block's output *before* the final norm. (transformers puts norm(last block) in the last slot instead.)
    hidden_states: tuple[torch.Tensor, ...] | None = None


def default_position_ids(attention_mask: torch.Tensor | None, past_length: int, new_length: int,
                         device: torch.device) -> torch.Tensor:
    """Positions of the new tokens, (B, T). With left padding, a row's first real token is position 0."""
    if attention_mask is None:
        return torch.arange(past_length, past_length + new_length, device=device)[None, :]
    positions = attention_mask.long().cumsum(-1) - 1  # count real tokens before each slot
    return positions.clamp(min=0)[:, -new_length:]


class CausalLM(nn.Module):
    """A LLaMA-family (or GPT-OSS) decoder-only language model."""

    def __init__(self, config: ModelConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        block = {"gpt_oss": GptOssBlock, "qwen2": QwenBlock, "qwen3": QwenBlock}.get(config.model_type, DecoderBlock)
        self.layers = nn.ModuleList(block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight  # one matrix used twice: no copy
        self.rotary = RotaryEmbedding(config)
        self.set_attn_implementation(attn_implementation)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) for matrices, zero biases (the HF LLaMA scheme); norms start at 1."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def set_attn_implementation(self, name: str) -> None:
        """'eager' (the formula written out, for reading) or 'sdpa' (PyTorch's fused kernel, same result)."""
        if name not in ATTENTION_FUNCTIONS:
            raise ValueError(f"attn_implementation must be one of {sorted(ATTENTION_FUNCTIONS)}, got {name!r}")
        for block in self.layers:
            block.self_attn.attn_implementation = name

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache=None, output_hidden_states: bool = False,
                logits_to_keep: int = 0) -> CausalLMOutput:
        """input_ids (B, T) -> logits (B, T_kept, vocab): the blocks (`hidden_states`), then the head
        (`logits_from_hidden`). attention_mask (B, past + T) has 0 for padding (or is a 4-D mask: see
        `attention_masks`); cache is updated in place.

        logits_to_keep > 0 computes logits (and keeps hidden states) only for the last that many positions:
        a decode step needs one, and the head is the largest matmul of a small model.
        """
        layers = None if output_hidden_states else [len(self.layers)]  # only the last block's output otherwise
        states = self.hidden_states(input_ids, attention_mask, position_ids, cache, layers, logits_to_keep)
        logits = self.logits_from_hidden(states[-1])  # (B, T_kept, vocab)
        return CausalLMOutput(logits, states if output_hidden_states else None)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, cache=None, layers: Sequence[int] | None = None,
                      keep_last: int = 0) -> tuple[torch.Tensor, ...]:
        """The residual stream after each of `layers`, (B, T_kept, H) each, in the order asked.

        Layer 0 is the embeddings, layer j the output of block j (before the final norm); None asks for all
        num_hidden_layers + 1. Only blocks 1..max(layers) run, so asking for layer k is an early exit after
        k blocks (self-speculative drafting, generation/drafting.py); only those blocks' cache layers grow.
        keep_last > 0 keeps only the last that many positions.
        """
        N = len(self.layers)
        layers = range(N + 1) if layers is None else list(layers)
        if not layers or any(not 0 <= j <= N for j in layers):
            raise ValueError(f"layers must be numbers in [0, {N}] (0 = embeddings, j = block j), got {list(layers)}")
        B, T = input_ids.shape
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = default_position_ids(attention_mask, past, T, input_ids.device)
        x = self.embed_tokens(input_ids)  # (B, T, H)
        cos, sin = self.rotary(position_ids, x.dtype)  # (B, T, d) each, shared by every block
        masks = self.attention_masks(attention_mask, T, cache, input_ids.device)
        keep = slice(-keep_last, None) if keep_last else slice(None)
        kept = {0: x[:, keep]} if 0 in layers else {}
        for j, block in enumerate(self.layers[:max(layers)], start=1):
            x = block(x, cos, sin, masks[block.attention_type], cache)
            if j in layers:
                kept[j] = x[:, keep]
        return tuple(kept[j] for j in layers)

    def attention_masks(self, attention_mask: torch.Tensor | None, new_length: int, cache,
                        device: torch.device) -> dict[str, torch.Tensor | None]:
        """One mask per attention type, (B or 1, 1, T, S); GPT-OSS alternates full and sliding-window layers.

        attention_mask is (B, past + T) with 0 for padding, or a boolean (B, 1, T, S) mask already built for the
        cache's keys, used as it is (the slot cache of the compiled step builds one: cache/slot.py).
        """
        if attention_mask is not None and attention_mask.dim() == 4:
            if "sliding_attention" in (self.config.layer_types or ()):
                raise ValueError("a 4-D attention_mask serves full-attention layers only; this model has "
                                 "sliding-window layers: pass the (B, past + T) padding mask instead")
            return {"full_attention": attention_mask}
        past = cache.get_seq_length() if cache is not None else 0
        masks = {"full_attention": build_attention_mask(attention_mask, new_length, past + new_length, device)}
        if "sliding_attention" in (self.config.layer_types or ()):
            masks["sliding_attention"] = self.sliding_window_mask(attention_mask, new_length, cache)
        return masks

    def logits_from_hidden(self, states: torch.Tensor, norm: bool = True) -> torch.Tensor:
        """Residual-stream states (..., H), of any layers stacked together, -> logits (..., vocab) in one matmul.

        The final norm then the (tied) head, as for the last block; on an earlier layer this is its early-exit
        logits (the "logit lens"; DoLa eq. 2). norm=False heads the raw states, as transformers' DoLa does.
        """
        return self.lm_head(self.norm(states) if norm else states)

    def early_exit_logits(self, hidden_states: Sequence[torch.Tensor], layers: Sequence[int],
                          norm: bool = True) -> torch.Tensor:
        """Logits as if the model stopped after each of `layers`, at the last position: (len(layers), B, vocab).

        hidden_states: the tuple from forward(output_hidden_states=True); index 0 = embeddings, j = block j.
        """
        last = torch.stack([hidden_states[j][:, -1] for j in layers])  # (L, B, H)
        return self.logits_from_hidden(last, norm)  # (L, B, vocab)

    def sliding_window_mask(self, attention_mask: torch.Tensor | None, new_length: int, cache) -> torch.Tensor:
        """The mask of the "sliding_attention" layers, (B or 1, 1, T, S_kept + T).

        A SlidingWindowLayer (cache/sliding.py) holds only the last S_kept <= window - 1 keys, so its keys
        are the last S_kept + T positions; any other cache layer holds them all. The window is counted in
        slots, padding included, as in transformers.
        """
        kept, first_sliding = 0, self.config.layer_types.index("sliding_attention")
        if cache is not None and first_sliding < len(cache.layers):  # DynamicCache() adds layers as they run
            layer = cache.layers[first_sliding]
            kept = layer.get_kept_length() if isinstance(layer, SlidingWindowLayer) else layer.get_seq_length()
        key_length = kept + new_length
        if attention_mask is not None:
            attention_mask = attention_mask[:, -key_length:]  # the full mask already checked its width
        return build_attention_mask(attention_mask, new_length, key_length, self.device, self.config.sliding_window)

    def generate(self, inputs: torch.Tensor | None = None, **kwargs):
        """transformers' `model.generate(**tokenizer(texts, return_tensors="pt"), max_new_tokens=..., ...)`.

        The decoding lives in generation/ (generation/model_generate.py); it is imported here, at the call, so the
        model itself never depends on it.
        """
        from generation.model_generate import generate_like_transformers
        return generate_like_transformers(self, inputs, **kwargs)

    def num_parameters(self) -> int:
        """Distinct parameters (a tied head is counted once)."""
        return sum(p.numel() for p in self.parameters())
