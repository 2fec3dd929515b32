"""A compiled one-token decode step (`generate(..., compile=True)`): the gpt-fast design.

Eager PyTorch launches each of a step's ~700 small operations (norms, RoPE, residual adds, the cache write)
from Python, one at a time: for a small model like SmolLM2-135M that overhead is of the order of the matrix
products themselves (docs/performance.md). `torch.compile` traces one decode step into a graph and generates
fused C++ kernels for the small operations, leaving the matrix products to the hand-written one-row / few-row
kernel (a custom operator the graph calls) or BLAS.

A compiled graph is reused only while shapes and Python values stay the same, so the step runs the model's own
forward over a `SlotCache` (cache/slot.py): fixed buffers whose slot count is rounded up to a multiple of
SLOT_BUCKET, so prompts of different lengths share one graph; the slots written, the positions (for RoPE) and
the mask over every slot come in as tensors. There is no second forward pass: the step is `model(...)`.

The prompt (a new length every time) runs through the same `decode_step` eagerly; only the one-token step is
compiled (once per model, dtype, batch size and slot count in a process, tens of seconds on a small CPU;
inductor's on-disk cache shortens it in later processes). So it pays off for long generations. Beam search
(generation/beam.py) uses it too: its B * num_beams rows fill the slots, each prompt is prefilled once and
copied to its beams (`prefill(..., repeats=K)`), and `reorder` moves the filled slots after the beams each step.

Half precision on the CPU: the cache keeps keys and values in float32, because the CPU attention kernel is
several times slower in bf16/fp16 (docs/performance.md), and attention over float32 keys is the more exact of
the two.
"""

from __future__ import annotations

import functools
import os
import shutil

import torch

from cache.slot import SlotCache
from model.causal_lm import default_position_ids
from model.gpt_oss import GptOssBlock

SLOT_BUCKET = 256  # cache slots come in multiples of this: one compiled graph serves many prompt lengths


def decode_step(model, tokens: torch.Tensor, slots: torch.Tensor, position_ids: torch.Tensor,
                cache: SlotCache) -> torch.Tensor:
    """The model's own forward with tokens (B, T) written to slots (T,) at positions (B, T) of `cache`, whose
    slot_mask must be True at these slots for real tokens. Returns the last position's logits (B, 1, V)."""
    mask = cache.attention_mask(slots)  # (B, 1, T, S)
    return model(tokens, attention_mask=mask, position_ids=position_ids, cache=cache, logits_to_keep=1).logits


@functools.cache
def compiled_decode_step(device_type: str):
    """decode_step compiled for fixed shapes; one function object per device type, so every CompiledDecoder
    shares its graphs. On the CPU inductor's C++ wrapper calls the step's kernels from generated C++ instead of
    Python, which saves Python's launch overhead on every token (docs/performance.md)."""
    options = {"cpp_wrapper": True} if device_type == "cpu" else None
    return torch.compile(decode_step, fullgraph=True, dynamic=False, options=options)


def check_compilable(model) -> None:
    """Refuse, before any work, a model or machine the compiled step does not serve."""
    if any(isinstance(block, GptOssBlock) for block in model.layers):
        raise ValueError("compile=True supports LLaMA-style models only (this one has other blocks, e.g. GPT-OSS "
                         "with sliding-window attention and experts): leave compile off")
    if model.device.type == "cpu" and not any(map(shutil.which, (os.environ.get("CXX", "g++"), "c++", "clang++"))):
        raise ValueError("compile=True on the CPU needs a C++ compiler (the compiled step is generated C++ code): "
                         "install g++ or leave compile off")


class CompiledDecoder:
    """Prefill eagerly, then decode one token per call with the compiled step; same results as the model's
    forward up to float rounding (and, in half precision, float32 attention)."""

    def __init__(self, model, batch_size: int, max_length: int, compile: bool = True):
        check_compilable(model)
        num_slots = -(-max_length // SLOT_BUCKET) * SLOT_BUCKET  # rounded up
        half_on_cpu = model.device.type == "cpu" and model.dtype in (torch.float16, torch.bfloat16)
        kv_dtype = torch.float32 if half_on_cpu else model.dtype
        self.model = model
        self.cache = SlotCache(model.config, batch_size, num_slots, kv_dtype, model.device)
        self.step = compiled_decode_step(model.device.type) if compile else decode_step
        self.length = 0  # slots filled so far
        self.next_positions = None  # (B, 1) the position of each row's next token

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                repeats: int = 1) -> torch.Tensor:
        """The prompt (B, T), left-padded; returns the last position's logits (B, 1, V).

        repeats > 1 (beam search, on a decoder built for B * repeats rows): each prompt runs once, and its
        cache is copied to `repeats` consecutive rows, which the returned logits (B * repeats, 1, V) match.
        """
        B, T = input_ids.shape
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        self.cache.slot_mask[:, :T] = real.repeat_interleave(repeats, dim=0)
        position_ids = default_position_ids(attention_mask, 0, T, input_ids.device)  # (B or 1, T)
        slots = self.cache.slot_index[:T]
        cache = self.cache
        if repeats > 1:  # the prompts' own cache, one row per prompt
            cache = SlotCache(self.model.config, B, self.cache.num_slots, self.cache.keys[0].dtype, self.model.device)
            cache.slot_mask[:, :T] = real
        logits = decode_step(self.model, input_ids, slots, position_ids, cache)
        if repeats > 1:
            for buffers, prompt_buffers in ((self.cache.keys, cache.keys), (self.cache.values, cache.values)):
                for buffer, prompt_buffer in zip(buffers, prompt_buffers):
                    buffer[:, :, :T] = prompt_buffer[:, :, :T].repeat_interleave(repeats, dim=0)
            logits = logits.repeat_interleave(repeats, dim=0)
        self.length = T
        self.next_positions = (position_ids[:, -1:] + 1).expand(B, 1).repeat_interleave(repeats, dim=0)  # (B*r, 1)
        return logits

    def reorder(self, index: torch.Tensor) -> None:
        """Rows become rows[index] (beam search keeps the beams it continues): the filled slots, the mask and
        the positions. index (rows,)."""
        self.cache.reorder(index, self.length)
        self.next_positions = self.next_positions.index_select(0, index)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The newest tokens (B, 1) -> logits (B, 1, V)."""
        self.cache.slot_mask[:, self.length] = True
        slots = torch.full((1,), self.length, device=tokens.device)  # (1,) a new tensor: a view would differ in offset
        tokens = tokens.contiguous()  # a column of a longer buffer (beam search's) has other strides: a new graph
        logits = self.step(self.model, tokens, slots, self.next_positions, self.cache)
        self.length += 1
        self.next_positions = self.next_positions + 1
        return logits
