"""A GGUF file's quantized tensors (here Q4_1 and Q8_0 blocks, under llama.cpp names such as `blk.3.attn_q.weight`)
as float32 arrays under Hugging Face LlamaForCausalLM names, dequantized by the `gguf` package."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from model.zoo.gguf_metadata import GGUFConvertError

# llama.cpp tensor names -> Hugging Face LlamaForCausalLM names.
_TOP_LEVEL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",  # absent when the head is tied to the embedding
}
_BLOCK_NAMES = {  # inside `blk.{i}.` -> inside `model.layers.{i}.`
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_tensor_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    if gguf_name in _TOP_LEVEL_NAMES:
        return _TOP_LEVEL_NAMES[gguf_name]
    prefix, _, rest = gguf_name.partition(".")
    layer, _, inner = rest.partition(".")
    if prefix == "blk" and layer.isdigit() and inner in _BLOCK_NAMES:
        return f"model.layers.{layer}.{_BLOCK_NAMES[inner]}"
    raise GGUFConvertError(f"GGUF tensor {gguf_name!r} has no LLaMA counterpart; is this a LLaMA file?")


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of the rows of a q_proj or k_proj weight.

    RoPE rotates pairs of features. Hugging Face pairs feature j with j + head_dim/2 (`rotate_half`);
    llama.cpp pairs neighbours 2j and 2j+1. So convert_hf_to_gguf.py interleaves the two halves of
    every head's rows: HF rows (0, 1, ..., h-1 | h, ..., 2h-1), with h = head_dim/2, are stored as
    (0, h, 1, h+1, ..., h-1, 2h-1). Here we read them back in the HF order.
    """
    out_features, in_features = weight.shape
    half = out_features // num_heads // 2
    w = weight.reshape(num_heads, half, 2, in_features)  # (heads, j, pair member, in): row 2j+m holds HF row m*h+j
    w = w.swapaxes(1, 2)  # (heads, pair member, j, in): first halves, then second halves
    return w.reshape(out_features, in_features)  # (num_heads * head_dim, in)


def iter_hf_tensors(reader: GGUFReader, config: dict[str, Any]) -> Iterator[tuple[str, np.ndarray, str]]:
    """Yield (Hugging Face name, float32 array of shape (out, in) or (n,), GGUF type name) per tensor."""
    heads_by_name = {  # q has one row block per query head, k one per key/value head
        "attn_q.weight": config["num_attention_heads"],
        "attn_k.weight": config["num_key_value_heads"],
    }
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        # GGUF lists dimensions fastest-first ([in, out]); dequantize returns numpy order (out, in).
        weight = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        num_heads = heads_by_name.get(tensor.name.split(".", 2)[-1])
        if num_heads is not None:
            weight = unpermute_rope_rows(weight, num_heads)
        # copy: unquantized (F32) tensors come back as a view of the memory-mapped file.
        yield name, np.ascontiguousarray(weight).copy(), tensor.tensor_type.name


def dequantize_all(
    reader: GGUFReader, config: dict[str, Any], progress: Callable[[int, int, str], None] | None = None
) -> dict[str, np.ndarray]:
    """All tensors as a {Hugging Face name: float32 array} dict; `progress(i, n, name)` after each one."""
    tensors: dict[str, np.ndarray] = {}
    total = len(reader.tensors)
    for i, (name, weight, qtype) in enumerate(iter_hf_tensors(reader, config), start=1):
        tensors[name] = weight
        if progress is not None:
            progress(i, total, f"{name} {qtype} {tuple(weight.shape)}")
    return tensors
