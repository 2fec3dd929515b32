"""The config a Hugging Face folder needs, read from a GGUF file's metadata.

A GGUF file (llama.cpp's format) holds the config as metadata keys (`llama.embedding_length`, ...), next to
the tokenizer (gguf_tokenizer.py) and the quantized tensors (dequantize.py).
GGUF format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gguf import GGUFReader


class GGUFConvertError(ValueError):
    """The GGUF file holds something this converter does not know how to turn into a LLaMA folder."""


def read_field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """One metadata value as a Python value (str, int, float, bool or list), or `default` if absent."""
    field = reader.get_field(key)
    return default if field is None else field.contents()


def _float32_value(value: float) -> float:
    """GGUF stores floats as float32: 1e-5 comes back as 9.999999747e-06. Return the shortest decimal
    that rounds to the same float32 (1e-05), which is what the original config.json said."""
    return float(str(np.float32(value)))


def hf_config(reader: GGUFReader) -> dict[str, Any]:
    """A Hugging Face LlamaConfig (`config.json`) dict from the GGUF metadata."""
    arch = read_field(reader, "general.architecture")
    if arch != "llama":
        raise GGUFConvertError(f"GGUF architecture is {arch!r}; only 'llama' files can be converted.")
    if any(key.startswith("llama.rope.scaling") for key in reader.fields):
        raise GGUFConvertError("GGUF file uses RoPE scaling, which this converter does not map yet.")

    def need(key: str) -> Any:
        value = read_field(reader, key)
        if value is None:
            raise GGUFConvertError(f"GGUF file lacks the metadata key {key!r}; is it a complete LLaMA file?")
        return value

    hidden_size = need("llama.embedding_length")
    num_heads = need("llama.attention.head_count")
    tensor_names = {t.name for t in reader.tensors}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": need("llama.feed_forward_length"),
        "num_hidden_layers": need("llama.block_count"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": read_field(reader, "llama.attention.head_count_kv", num_heads),
        # For LLaMA llama.cpp rotates the whole head, so the rotated dimension is the head size.
        "head_dim": read_field(reader, "llama.rope.dimension_count", hidden_size // num_heads),
        "rms_norm_eps": _float32_value(need("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": _float32_value(read_field(reader, "llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": need("llama.context_length"),
        "vocab_size": read_field(reader, "llama.vocab_size") or len(need("tokenizer.ggml.tokens")),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": read_field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": read_field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": read_field(reader, "tokenizer.ggml.padding_token_id"),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }


def generation_config(config: dict[str, Any]) -> dict[str, Any]:
    """`generation_config.json`: only the token ids; decoding settings are the caller's choice."""
    return {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None}
