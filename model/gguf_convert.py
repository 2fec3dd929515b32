"""Turn a llama.cpp GGUF file of a LLaMA-family model into Hugging Face style pieces.

One GGUF file holds everything a Hugging Face folder spreads over several files:
- the tensors, quantized (here Q4_1 and Q8_0 blocks), under llama.cpp names (`blk.3.attn_q.weight`);
- the config, as metadata keys (`llama.embedding_length`, ...);
- the tokenizer: vocabulary, BPE merges, token types, special ids and the chat template.
This module reads those and returns plain dicts and float32 arrays; `model/zoo.py` writes the files.
GGUF format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

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
# tokenizer.ggml.token_type values (llama.cpp's llama_token_type enum).
_TOKEN_TYPE_CONTROL = 3  # special tokens such as <|im_start|>
_TOKEN_TYPE_USER_DEFINED = 4  # added, non-special tokens


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


def tokenizer_json(reader: GGUFReader) -> dict[str, Any]:
    """The `tokenizer.json` of the `tokenizers` library for the GGUF's byte-level BPE vocabulary."""
    model_type = read_field(reader, "tokenizer.ggml.model")
    pre = read_field(reader, "tokenizer.ggml.pre")
    if model_type != "gpt2" or pre not in ("smollm", "starcoder", "gpt-2"):
        raise GGUFConvertError(
            f"GGUF tokenizer is {model_type!r} with pre-tokenizer {pre!r}; only byte-level BPE "
            "('gpt2' with 'smollm', 'starcoder' or 'gpt-2') is supported."
        )
    tokens = read_field(reader, "tokenizer.ggml.tokens")
    token_types = read_field(reader, "tokenizer.ggml.token_type")
    added = [
        {"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": kind == _TOKEN_TYPE_CONTROL}
        for i, kind in enumerate(token_types)
        if kind in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    # llama.cpp's 'smollm' and 'starcoder' pre-tokenizers split every digit on its own, then apply the
    # GPT-2 regex; in `tokenizers` that is Digits(individual_digits) followed by ByteLevel(use_regex).
    pre_tokenizer: dict[str, Any] = byte_level
    if pre != "gpt-2":
        digits = {"type": "Digits", "individual_digits": True}
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [digits, byte_level]}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {token: i for i, token in enumerate(tokens)},
            "merges": read_field(reader, "tokenizer.ggml.merges"),  # "left right" strings, highest priority first
        },
    }


def tokenizer_config(reader: GGUFReader, tokenizer: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """`tokenizer_config.json`: special token strings, BOS/EOS policy and the chat template."""
    tokens = tokenizer["model"]["vocab"]
    by_id = {i: token for token, i in tokens.items()}

    def token(key: str) -> str | None:
        token_id = read_field(reader, key)
        return None if token_id is None else by_id[token_id]

    named = {
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
    }
    specials = [t["content"] for t in tokenizer["added_tokens"] if t["special"]]
    return {
        "tokenizer_class": "GPT2Tokenizer",
        # False for SmolLM2: its chat template writes <|im_start|> itself, so encoding must not add another.
        "add_bos_token": bool(read_field(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(read_field(reader, "tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": bool(read_field(reader, "tokenizer.ggml.add_space_prefix", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
        **named,
        "additional_special_tokens": [t for t in specials if t not in named.values()],
        "added_tokens_decoder": {
            str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in tokenizer["added_tokens"]
        },
        "chat_template": read_field(reader, "tokenizer.chat_template"),
    }


def special_tokens_map(tok_config: dict[str, Any]) -> dict[str, Any]:
    """`special_tokens_map.json`: the named special tokens of `tokenizer_config.json`."""
    keys = ("bos_token", "eos_token", "pad_token", "unk_token", "additional_special_tokens")
    return {k: tok_config[k] for k in keys if tok_config.get(k) is not None}


def generation_config(config: dict[str, Any]) -> dict[str, Any]:
    """`generation_config.json`: only the token ids; decoding settings are the caller's choice."""
    return {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None}
