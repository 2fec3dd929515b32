"""Incremental decoding: print text while tokens are generated, one id at a time.

Decoding each new id on its own goes wrong twice: a character can be spread over several byte tokens
(an emoji is 4 bytes), and SentencePiece drops the leading space of the first token it decodes. So we
keep a small window of recent ids and decode the window twice, without and with the new ids; the text
that appears at the end is new. It is released only once it does not end in U+FFFD, i.e. once the last
character is complete (the method of Hugging Face text-generation-inference's ``decode_token``).

    stream = tokenizer.decode_stream()
    for token_id in generated_ids:
        print(stream.push(token_id), end="", flush=True)
    print(stream.flush())
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Tokenizer

_INCOMPLETE = "\ufffd"  # what decode writes for bytes that do not (yet) form a character


class StreamDecoder:
    """Turns ids pushed one at a time into text that is never taken back."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start: ids decoded again only as context
        self.read_offset = 0  # ids before this have been released as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one id; return the text that is now complete ("" while a character is unfinished)."""
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_INCOMPLETE):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """The text still held back (bytes that never completed a character come out as U+FFFD)."""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text) :]
