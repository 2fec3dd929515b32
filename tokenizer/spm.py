"""SentencePiece tokenizer for ``tokenizer.model`` files (LLaMA-1/2, Mistral-7B-v0.1, TinyLlama).

SentencePiece (Kudo & Richardson 2018) works on raw text: a space is written "▁", a "▁" is put in front
of the text (the "dummy prefix", so "Hello" at the start and " Hello" in a sentence share a token), and
characters outside the vocabulary fall back to byte tokens "<0xE4>". The ``sentencepiece`` library does
the segmentation; this class adds the shared interface around it.

Special tokens ("<s>", "</s>", "<unk>", and added tokens from tokenizer_config.json) written in the text
are matched whole; every plain part between them is encoded by SentencePiece on its own, so each part
gets its dummy prefix. This is transformers' ``LlamaTokenizer`` with ``legacy=True`` (its default) and
Meta's reference, which encodes each turn of a chat separately.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece
import torch

from .base import AddedToken, Tokenizer


class SentencePieceTokenizer(Tokenizer):
    """Wraps ``sentencepiece.SentencePieceProcessor`` with the interface of :class:`base.Tokenizer`."""

    def __init__(
        self,
        model_file: str | Path,
        added_tokens: Sequence[AddedToken] = (),
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        **special_tokens,
    ) -> None:
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        # Defaults for a bare tokenizer.model: the ids the model itself declares (-1 = it has none).
        for name, sp_id in (("bos_token", self.sp.bos_id()), ("eos_token", self.sp.eos_id()),
                            ("unk_token", self.sp.unk_id()), ("pad_token", self.sp.pad_id())):
            if special_tokens.get(name) is None and sp_id >= 0:
                special_tokens[name] = self.sp.id_to_piece(sp_id)
        added = {token.content: token for token in added_tokens}
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            content = special_tokens.get(name)  # matched whole in the text, as in LlamaTokenizer
            if content is not None and content not in added and piece_id(self.sp, content) is not None:
                added[content] = AddedToken(piece_id(self.sp, content), content, special=True)
        super().__init__(list(added.values()), **special_tokens)
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        self._vocab_size = max([self.sp.get_piece_size() - 1, *(t.id for t in added_tokens)]) + 1

    def _encode_plain(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def _with_special_tokens(self, ids: list[int]) -> list[int]:
        bos = [self.bos_token_id] if self.add_bos_token and self.bos_token_id is not None else []
        eos = [self.eos_token_id] if self.add_eos_token and self.eos_token_id is not None else []
        return bos + ids + eos

    def decode(self, ids: int | Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; SentencePiece turns invalid byte sequences into U+FFFD.

        Added tokens are written as their text (special ones dropped with ``skip_special_tokens``); each
        run of ordinary ids between them is decoded by SentencePiece, which drops the dummy-prefix space.
        So ``decode(encode(text))`` gives the text back; transformers' legacy LlamaTokenizer instead
        writes a space before each special token and loses one leading space.
        """
        added = self._added_by_id
        text, run = [], []
        for i in self._checked_ids(ids):
            if i not in added:
                run.append(i)
            elif not (skip_special_tokens and added[i].special):
                text += [self.sp.decode(run), added[i].content]
                run = []
        return "".join(text) + self.sp.decode(run)

    def _id_to_token(self, token_id: int) -> str:
        if token_id in self._added_by_id:
            return self._added_by_id[token_id].content
        return self.sp.id_to_piece(token_id)

    def token_to_id(self, token: str) -> int | None:
        if token in self.added_tokens:
            return self.added_tokens[token].id
        return piece_id(self.sp, token)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size


def piece_id(sp: sentencepiece.SentencePieceProcessor, piece: str) -> int | None:
    """Id of ``piece``, or None when the model does not have it (SentencePiece itself answers unk_id)."""
    token_id = sp.piece_to_id(piece)
    return token_id if sp.id_to_piece(token_id) == piece else None
