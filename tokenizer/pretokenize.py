"""Pre-tokenization for byte-level BPE: cut text into pieces, then map each piece's bytes to characters.

BPE merges never cross a piece boundary, so this split decides which tokens can exist at all.
A Hugging Face ``tokenizer.json`` describes the split as a list of steps applied one after the other,
each step cutting every piece of the previous step again:

- ``Digits``    SmolLM2 first isolates every digit, so numbers are always spelled digit by digit.
- ``Split``     Llama-3 / Qwen2 cut with their own regex (letters, 1-3 digit groups, punctuation, spaces).
- ``ByteLevel`` GPT-2 (Radford et al. 2019, ``encoder.py``) cuts with the GPT-2 regex and then writes every
                UTF-8 byte as one printable character, so any text, in any script, is a string over 256
                symbols and the vocabulary needs no unknown token.

The regexes need Unicode classes like ``\\p{L}`` (any letter) and ``\\p{N}`` (any number), which the standard
``re`` module lacks; we use the ``regex`` module, as GPT-2's reference code does.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import regex

# GPT-2's split: common English contractions, a word with its leading space, a number, a run of other
# symbols, and whitespace. `\s+(?!\S)` keeps the last space of a run to start the next word (" hello").
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Llama-3's split (the `Split` step of its tokenizer.json): numbers in groups of at most 3 digits.
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2's split: like Llama-3 but every digit on its own.
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")

PreTokenizeStep = Callable[[str], list[str]]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 table from each byte 0..255 to a printable character.

    Printable Latin-1 bytes map to themselves ("a" -> "a"); the others (control bytes, space, ...) are
    shifted to unused code points from U+0100 on, so a space becomes "Ġ" and a newline "Ċ".
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of :func:`bytes_to_unicode`, used when decoding."""
    return {char: byte for byte, char in bytes_to_unicode().items()}


def byte_encode(text: str) -> str:
    """Write the UTF-8 bytes of ``text`` as byte-level characters: ``" hé"`` -> ``"ĠhÃ©"``."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def token_to_bytes(token: str) -> bytes:
    """The bytes a byte-level token stands for.

    Tokens that are not written in byte-level characters (an added token such as "<|im end|>" with a
    space) stand for their own UTF-8 text, as in the Hugging Face ByteLevel decoder.
    """
    table = unicode_to_bytes()
    if all(char in table for char in token):
        return bytes(table[char] for char in token)
    return token.encode("utf-8")


def split_isolated(pattern: regex.Pattern, text: str, keep_matches: bool = True) -> list[str]:
    """Cut ``text`` around every match: matches and the gaps between them become separate pieces."""
    pieces, start = [], 0
    for match in pattern.finditer(text):
        if match.start() > start:
            pieces.append(text[start : match.start()])
        if keep_matches and match.end() > match.start():
            pieces.append(match.group())
        start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def digits_step(individual_digits: bool) -> PreTokenizeStep:
    """The ``Digits`` step: isolate each digit (or each run of digits)."""
    pattern = regex.compile(r"\p{N}" if individual_digits else r"\p{N}+")
    return lambda text: split_isolated(pattern, text)


def split_step(pattern: str, behavior: str = "Isolated") -> PreTokenizeStep:
    """The ``Split`` step with a regex; ``Removed`` drops the matches, ``Isolated`` keeps them."""
    if behavior not in ("Isolated", "Removed"):
        raise ValueError(f"Split pre-tokenizer behavior {behavior!r} is not supported (only Isolated, Removed).")
    compiled = regex.compile(pattern)
    return lambda text: split_isolated(compiled, text, keep_matches=behavior == "Isolated")


def byte_level_step(use_regex: bool = True, add_prefix_space: bool = False) -> PreTokenizeStep:
    """The ``ByteLevel`` step: optional GPT-2 regex split, then bytes written as characters."""
    compiled = regex.compile(GPT2_PATTERN)

    def step(text: str) -> list[str]:
        if add_prefix_space and not text.startswith(" "):
            text = " " + text
        pieces = split_isolated(compiled, text) if use_regex else [text]
        return [byte_encode(piece) for piece in pieces]

    return step


def pre_tokenize(text: str, steps: list[PreTokenizeStep]) -> list[str]:
    """Run the steps in order, each one cutting every piece the previous step produced."""
    pieces = [text]
    for step in steps:
        pieces = [part for piece in pieces for part in step(piece)]
    return pieces


def steps_from_json(spec: dict | None) -> list[PreTokenizeStep]:
    """Build the steps from the ``pre_tokenizer`` entry of a tokenizer.json."""
    if spec is None:
        return []
    kind = spec.get("type")
    if kind == "Sequence":
        return [step for sub in spec["pretokenizers"] for step in steps_from_json(sub)]
    if kind == "Digits":
        return [digits_step(spec.get("individual_digits", False))]
    if kind == "ByteLevel":
        return [byte_level_step(spec.get("use_regex", True), spec.get("add_prefix_space", False))]
    if kind == "Split":
        if spec.get("invert", False):
            raise ValueError("Split pre-tokenizer with invert=true is not supported.")
        pattern = spec["pattern"]
        source = pattern["Regex"] if "Regex" in pattern else regex.escape(pattern["String"])
        return [split_step(source, spec.get("behavior", "Isolated"))]
    raise ValueError(
        f"pre_tokenizer type {kind!r} is not supported by the byte-level BPE tokenizer "
        "(supported: Sequence, Digits, Split, ByteLevel)."
    )


# llama.cpp writes the name of the pre-tokenizer into a GGUF (tokenizer.ggml.pre) instead of its regex;
# these are the names for the splits above (see llama.cpp, src/llama-vocab.cpp).
GGUF_PRE_TOKENIZERS: dict[str, Callable[[], list[PreTokenizeStep]]] = {
    "gpt-2": lambda: [byte_level_step()],
    "smollm": lambda: [digits_step(True), byte_level_step()],
    "starcoder": lambda: [digits_step(True), byte_level_step()],
    "llama-bpe": lambda: [split_step(LLAMA3_PATTERN), byte_level_step(use_regex=False)],
    "qwen2": lambda: [split_step(QWEN2_PATTERN), byte_level_step(use_regex=False)],
}


def steps_from_gguf_name(name: str) -> list[PreTokenizeStep]:
    """Build the steps for a GGUF ``tokenizer.ggml.pre`` name."""
    if name not in GGUF_PRE_TOKENIZERS:
        raise ValueError(
            f"GGUF pre-tokenizer {name!r} is not supported (supported: {', '.join(sorted(GGUF_PRE_TOKENIZERS))}). "
            "Use the model's tokenizer.json instead."
        )
    return GGUF_PRE_TOKENIZERS[name]()
