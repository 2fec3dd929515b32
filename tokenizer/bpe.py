"""Byte-level BPE (GPT-2, SmolLM, Llama-3, Qwen2), written out so every step can be read.

Encoding a text:

1. cut out added / special tokens ("<|im_start|>") and keep them whole (``base.Tokenizer``);
2. normalize every other part if the tokenizer asks for it (Qwen2: Unicode NFC), then pre-tokenize it
   into pieces and write their bytes as characters (``pretokenize.py``);
3. BPE on each piece: start from single characters and repeatedly join the adjacent pair that was
   learned earliest (lowest rank in the merges list), until no learned pair is left
   (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units");
4. look every resulting symbol up in the vocabulary; optionally add BOS/EOS (the post-processor).

Decoding concatenates the bytes of the tokens and reads them as UTF-8. A token can hold part of a
character (an emoji is 4 bytes and may be split over tokens), so invalid bytes become U+FFFD instead
of raising, exactly as Hugging Face tokenizers do.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

import torch

from .base import AddedToken, Tokenizer
from .pretokenize import PreTokenizeStep, pre_tokenize, token_to_bytes

_NOT_A_MERGE = float("inf")


class BytePairModel:
    """Vocabulary + ranked merges: turns one pre-tokenized piece into token ids."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        ignore_merges: bool = False,
        unk_token: str | None = None,
        cache_size: int = 100_000,
    ) -> None:
        self.vocab = vocab
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.ignore_merges = ignore_merges  # Llama-3: a piece that is itself a token is not split at all
        self.unk_token = unk_token
        self.cache_size = cache_size
        self._cache: dict[str, list[int]] = {}  # the same words come back again and again

    def merge(self, word: str) -> list[str]:
        """Apply the merges to ``word`` in rank order; returns the final symbols."""
        symbols = list(word)
        while len(symbols) > 1:
            # The adjacent pair learned earliest in training is merged first, everywhere it occurs.
            rank, (first, second) = min(
                (self.merge_ranks.get(pair, _NOT_A_MERGE), pair) for pair in zip(symbols, symbols[1:])
            )
            if rank == _NOT_A_MERGE:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def encode_word(self, word: str) -> list[int]:
        """Token ids of one pre-tokenized piece (byte-level characters)."""
        if word in self._cache:
            return self._cache[word]
        if self.ignore_merges and word in self.vocab:
            ids = [self.vocab[word]]
        else:
            ids = [i for symbol in self.merge(word) if (i := self._symbol_id(symbol)) is not None]
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def _symbol_id(self, symbol: str) -> int | None:
        """Id of a final symbol. A byte the vocabulary lacks (SmolLM2 has no token for 0x04 or 0xFF)
        becomes the unk token, or is dropped when there is none, as Hugging Face tokenizers do."""
        if symbol in self.vocab:
            return self.vocab[symbol]
        return self.vocab.get(self.unk_token) if self.unk_token is not None else None


class BPETokenizer(Tokenizer):
    """A byte-level BPE tokenizer; build it with ``load_tokenizer`` from a tokenizer.json or a GGUF."""

    def __init__(
        self,
        model: BytePairModel,
        pre_tokenizer: list[PreTokenizeStep],
        added_tokens: Sequence[AddedToken] = (),
        unicode_forms: Sequence[str] = (),
        prefix_tokens: Sequence[str] = (),
        suffix_tokens: Sequence[str] = (),
        clean_up_tokenization_spaces: bool = False,
        **special_tokens,
    ) -> None:
        super().__init__(added_tokens, **special_tokens)
        self.model = model
        self.pre_tokenizer = pre_tokenizer
        self.unicode_forms = list(unicode_forms)  # normalizer, e.g. ["NFC"]: "e" + U+0301 -> "é"
        self.prefix_tokens, self.suffix_tokens = list(prefix_tokens), list(suffix_tokens)
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self._id_to_str = {i: token for token, i in model.vocab.items()}
        self._id_to_str.update({t.id: t.content for t in self.added_tokens.values()})
        self._vocab_size = max(self._id_to_str) + 1
        self._bytes_cache: dict[int, bytes] = {}

    def _encode_plain(self, text: str) -> list[int]:
        for form in self.unicode_forms:
            text = unicodedata.normalize(form, text)
        return [i for piece in pre_tokenize(text, self.pre_tokenizer) for i in self.model.encode_word(piece)]

    def _with_special_tokens(self, ids: list[int]) -> list[int]:
        """The post-processor: e.g. Llama-3 puts "<|begin_of_text|>" in front; SmolLM2 adds nothing."""
        prefix = [self.token_to_id(token) for token in self.prefix_tokens]
        suffix = [self.token_to_id(token) for token in self.suffix_tokens]
        return prefix + ids + suffix

    def decode(self, ids: int | Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD (never raises for them)."""
        skip = self.all_special_ids if skip_special_tokens else set()
        data = b"".join(self._token_bytes(i) for i in self._checked_ids(ids) if i not in skip)
        text = data.decode("utf-8", errors="replace")
        return clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def _token_bytes(self, token_id: int) -> bytes:
        if token_id not in self._bytes_cache:
            token = self._id_to_str.get(token_id)
            self._bytes_cache[token_id] = b"" if token is None else token_to_bytes(token)
        return self._bytes_cache[token_id]

    def _id_to_token(self, token_id: int) -> str:
        return self._id_to_str.get(token_id, "")

    def token_to_id(self, token: str) -> int | None:
        if token in self.added_tokens:
            return self.added_tokens[token].id
        return self.model.vocab.get(token)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization_spaces``: drop the space before punctuation and contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text
