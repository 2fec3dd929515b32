"""Byte-level BPE read from a GGUF file (the llama.cpp format), which stores the tokenizer as metadata.

The keys (llama.cpp ``gguf-py/gguf/constants.py``):

- ``tokenizer.ggml.model``       "gpt2" for byte-level BPE ("llama" is SentencePiece, not read here);
- ``tokenizer.ggml.tokens``      token strings, index = id, written in byte-level characters;
- ``tokenizer.ggml.merges``      "Ġ t" strings, in rank order;
- ``tokenizer.ggml.token_type``  1 normal, 3 control (a special token), 4 user defined (an added token);
- ``tokenizer.ggml.pre``         the name of the pre-tokenizer split (see ``pretokenize.GGUF_PRE_TOKENIZERS``);
- ``tokenizer.ggml.{bos,eos,padding,unknown}_token_id``, ``tokenizer.ggml.add_{bos,eos}_token``;
- ``tokenizer.chat_template``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf

from .base import AddedToken, TokenizerFileError
from .bpe import BPETokenizer, BytePairModel
from .pretokenize import steps_from_gguf_name

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's LLAMA_TOKEN_TYPE values for special and added tokens


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def bpe_from_gguf(path: str | Path) -> BPETokenizer:
    """Build a :class:`BPETokenizer` from the tokenizer metadata of a GGUF file."""
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError) as error:  # not GGUF, or cut short
        raise TokenizerFileError(f"{path} could not be read as a GGUF file ({error}).") from None
    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise TokenizerFileError(
            f"{path}: tokenizer.ggml.model is {kind!r}; only byte-level BPE ('gpt2') is read from a GGUF. "
            "For a SentencePiece model use its tokenizer.model."
        )
    tokens, merge_lines = _field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.merges")
    if not tokens or not merge_lines:
        raise TokenizerFileError(f"{path} has no tokenizer.ggml.tokens / tokenizer.ggml.merges; use the model's tokenizer.json.")
    types: list[int] = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(line.split(" ", 1)) for line in merge_lines]
    added = [AddedToken(i, token, special=token_type == CONTROL)
             for i, (token, token_type) in enumerate(zip(tokens, types)) if token_type in (CONTROL, USER_DEFINED)]

    def token_of(key: str) -> str | None:
        token_id = _field(reader, f"tokenizer.ggml.{key}")
        return None if token_id is None else tokens[token_id]

    bos, eos = token_of("bos_token_id"), token_of("eos_token_id")
    add_bos = _field(reader, "tokenizer.ggml.add_bos_token", False)  # False for SmolLM2: its template writes
    add_eos = _field(reader, "tokenizer.ggml.add_eos_token", False)  # <|im_start|> itself
    return BPETokenizer(
        BytePairModel({token: i for i, token in enumerate(tokens)}, merges),
        steps_from_gguf_name(_field(reader, "tokenizer.ggml.pre", "gpt-2")),
        added,
        prefix_tokens=[bos] if add_bos and bos else [],
        suffix_tokens=[eos] if add_eos and eos else [],
        bos_token=bos,
        eos_token=eos,
        pad_token=token_of("padding_token_id"),
        unk_token=token_of("unknown_token_id"),
        chat_template=_field(reader, "tokenizer.chat_template"),
    )
