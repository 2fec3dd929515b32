"""What every tokenizer in this package shares: special tokens, batching with left padding, chat templates.

A subclass only knows how to turn plain text (with no special token inside) into ids, how to turn ids
back into text, and which token string each id stands for. Everything else lives here:

- added and special tokens ("<|im_start|>", "<s>") are cut out of the text first and matched whole,
  so a special token written inside a prompt is never split into pieces;
- ``batch_encode`` / ``__call__`` pad on the LEFT, so the last column of every row is a real token and
  generation can append to all rows at once;
- ``apply_chat_template`` renders the checkpoint's own Jinja chat template in a sandbox (see ``chat.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import regex
import torch

from .chat import render_chat_template


class TokenizerFileError(ValueError):
    """A tokenizer file that cannot be read or understood; the message names the file."""


@dataclass(frozen=True)
class AddedToken:
    """A token matched whole in the text before the model's own splitting (HF ``added_tokens``)."""

    id: int
    content: str
    special: bool = True   # special tokens are dropped by decode(skip_special_tokens=True)
    lstrip: bool = False   # also swallow the whitespace on the left of the token
    rstrip: bool = False   # ... and on its right


class BatchEncoding(NamedTuple):
    """``input_ids`` (B, T) long and ``attention_mask`` (B, T) long, 1 = real token, 0 = left padding.

    A tuple (``ids, mask = tokenizer(texts)``) that also reads like transformers' mapping, so
    ``model.generate(**tokenizer(texts, return_tensors="pt"))`` passes both by name.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def keys(self) -> tuple[str, ...]:
        return self._fields

    def __getitem__(self, key):  # a name ("input_ids") as in transformers, or a tuple index
        return getattr(self, key) if isinstance(key, str) else tuple.__getitem__(self, key)


def special_token_pattern(tokens: Iterable[AddedToken]) -> regex.Pattern | None:
    """One regex that finds any added token; longest first, so "<|im_start|>" wins over "<|im".

    An ``lstrip`` / ``rstrip`` token also captures the whitespace next to it, which is then dropped.
    """
    alternatives = []
    for token in sorted(tokens, key=lambda t: len(t.content), reverse=True):
        left = r"\s*" if token.lstrip else ""
        right = r"\s*" if token.rstrip else ""
        alternatives.append(f"{left}(?P<t{token.id}>{regex.escape(token.content)}){right}")
    return regex.compile("|".join(alternatives)) if alternatives else None


class Tokenizer:
    """The interface shared by :class:`BPETokenizer` and :class:`SentencePieceTokenizer`."""

    def __init__(
        self,
        added_tokens: Sequence[AddedToken],
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.added_tokens = {token.content: token for token in added_tokens}
        self._added_by_id = {token.id: token for token in added_tokens}
        self._added_pattern = special_token_pattern(added_tokens)
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        self.chat_template = chat_template
        self.chat_template_name = "the chat template"  # load_tokenizer names the file it came from

    # ---- what a subclass provides -------------------------------------------------------------
    def _encode_plain(self, text: str) -> list[int]:
        """Ids of ``text``, which contains no added token."""
        raise NotImplementedError

    def _with_special_tokens(self, ids: list[int]) -> list[int]:
        """``ids`` with the tokens the tokenizer adds around a sequence (e.g. BOS in front)."""
        raise NotImplementedError

    def decode(self, ids: int | Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; never raises for bytes that are not valid UTF-8 (they become U+FFFD)."""
        raise NotImplementedError

    def _id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of an id, e.g. "Ġworld" or "▁world"."""
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry, or None if there is no such token."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (what the embedding table needs; ``len(hf_tokenizer)``)."""
        raise NotImplementedError

    # ---- encoding -----------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in the text are kept whole."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}; use batch_encode for a list.")
        ids: list[int] = []
        for piece, added in self._split_on_added_tokens(text):
            ids.extend([added.id] if added is not None else self._encode_plain(piece))
        return self._with_special_tokens(ids) if add_special_tokens else ids

    def _split_on_added_tokens(self, text: str) -> list[tuple[str, AddedToken | None]]:
        """Cut text into (plain piece, None) and (token text, AddedToken) parts, in order."""
        if self._added_pattern is None:
            return [(text, None)] if text else []
        parts: list[tuple[str, AddedToken | None]] = []
        start = 0
        for match in self._added_pattern.finditer(text):
            if match.start() > start:
                parts.append((text[start : match.start()], None))
            token_id = int(match.lastgroup[1:])  # group name is "t<id>"
            parts.append((match.group(match.lastgroup), self._added_by_id[token_id]))
            start = match.end()
        if start < len(text):
            parts.append((text[start:], None))
        return parts

    def batch_encode(self, texts: str | Sequence[str], add_special_tokens: bool = True) -> BatchEncoding:
        """Encode several texts into one LEFT-padded (B, T) batch with its attention mask."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise ValueError("batch_encode needs at least one text.")
        rows = [self.encode(text, add_special_tokens) for text in texts]
        width = max(len(row) for row in rows)
        pad_id = self._padding_id() if any(len(row) != width for row in rows) else 0
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        for b, row in enumerate(rows):
            if row:  # right-align: padding goes on the left
                input_ids[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
                attention_mask[b, width - len(row) :] = 1
        return BatchEncoding(input_ids, attention_mask)

    def __call__(self, texts: str | Sequence[str], add_special_tokens: bool = True, return_tensors: str = "pt",
                 padding: bool | str = True) -> BatchEncoding:
        """`batch_encode` with transformers' call arguments: tensors ("pt") and padding (always on the left)."""
        if return_tensors != "pt":
            raise ValueError(f"this tokenizer returns torch tensors: use return_tensors='pt', got {return_tensors!r}")
        if padding not in (True, "longest"):
            raise ValueError(f"rows are always left-padded to the longest: use padding=True, got {padding!r}")
        return self.batch_encode(texts, add_special_tokens)

    def _padding_id(self) -> int:
        """The pad id, else the EOS id (as generate() does); padded positions are masked out anyway."""
        for token_id in (self.pad_token_id, self.eos_token_id):
            if token_id is not None:
                return token_id
        raise ValueError("Texts of different lengths need padding, but this tokenizer has no pad or eos token.")

    # ---- tokens and ids -----------------------------------------------------------------------
    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        """The token string of one id, or of each id in a list."""
        if isinstance(ids, int):
            return self._id_to_token(self._check_id(ids))
        return [self._id_to_token(self._check_id(int(i))) for i in ids]

    def _checked_ids(self, ids: int | Iterable[int] | torch.Tensor) -> list[int]:
        """``ids`` (an id, a list, or a 0-d / 1-d tensor) as a list of ints inside the vocabulary."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        elif isinstance(ids, int):
            ids = [ids]
        return [self._check_id(int(i)) for i in ids]

    def _check_id(self, token_id: int) -> int:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"Token id {token_id} is outside the vocabulary (ids 0..{self.vocab_size - 1}).")
        return token_id

    @property
    def all_special_ids(self) -> set[int]:
        """Ids dropped by ``decode(..., skip_special_tokens=True)``."""
        named = (self.bos_token_id, self.eos_token_id, self.pad_token_id, self.unk_token_id)
        return {t.id for t in self.added_tokens.values() if t.special} | {i for i in named if i is not None}

    def _named_id(self, token: str | None) -> int | None:
        return None if token is None else self.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._named_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._named_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._named_id(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._named_id(self.unk_token)

    def __len__(self) -> int:
        return self.vocab_size

    # ---- chat ---------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        chat_template: str | None = None,
        **template_kwargs,
    ) -> str | list[int]:
        """Render ``messages`` ([{"role": ..., "content": ...}, ...]) with the checkpoint's chat template.

        Returns the prompt text, or its ids (no extra special tokens added) when ``tokenize=True``.
        Raises ``chat.ChatTemplateError`` (``ChatTemplateRefusal`` when the template refuses the messages).
        """
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError(
                "This tokenizer has no chat template (none in tokenizer_config.json, chat_template.jinja or "
                "the GGUF). Pass chat_template=... or encode the prompt as plain text (--no-chat)."
            )
        special = {"bos_token": self.bos_token, "eos_token": self.eos_token,
                   "pad_token": self.pad_token, "unk_token": self.unk_token}
        name = "the chat_template argument" if chat_template else self.chat_template_name
        text = render_chat_template(template, messages, add_generation_prompt, template_name=name,
                                    **{**special, **template_kwargs})
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # ---- streaming ----------------------------------------------------------------------------
    def decode_stream(self, skip_special_tokens: bool = False) -> "StreamDecoder":
        """A :class:`StreamDecoder` that turns ids, one at a time, into finished text."""
        from .streaming import StreamDecoder

        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)
