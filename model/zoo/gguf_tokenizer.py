"""The tokenizer files of a Hugging Face folder, from a GGUF file's vocabulary, merges, token types, special
ids and chat template (byte-level BPE only)."""

from __future__ import annotations

from typing import Any

from gguf import GGUFReader

from model.zoo.gguf_metadata import GGUFConvertError, read_field

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type enum).
_TOKEN_TYPE_CONTROL = 3  # special tokens such as <|im_start|>
_TOKEN_TYPE_USER_DEFINED = 4  # added, non-special tokens


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
