"""Tokenizers: text <-> token ids, chat templates, and streaming decode.

    from tokenizer import load_tokenizer
    tok = load_tokenizer("~/.cache/scratch-lm/smollm2-135m-instruct")   # or a .gguf, or a LLaMA-2 folder
    ids = tok.encode("Hello world")                         # list[int]
    tok.decode(ids)                                         # "Hello world"
    batch = tok(["Hi", "A longer prompt"])                  # BatchEncoding(input_ids, attention_mask), left padded
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])   # the model's own template
    stream = tok.decode_stream()                            # stream.push(id) -> finished text

Files:

- ``base.py``        the shared interface: special tokens matched whole, left-padded batches, chat templates
- ``pretokenize.py`` the split before BPE (GPT-2 / Llama-3 regexes, digits) and the GPT-2 byte-to-character map
- ``bpe.py``         byte-level BPE merges by rank (GPT-2, SmolLM2, Llama-3, Qwen2)
- ``spm.py``         SentencePiece ``tokenizer.model`` files (LLaMA-2 family), via the sentencepiece library
- ``chat.py``        rendering a checkpoint's Jinja chat template in a sandbox
- ``streaming.py``   incremental decoding that only releases complete characters
- ``loading.py``     ``load_tokenizer``: finds tokenizer.json / tokenizer.model / .gguf and the config files
- ``gguf_vocab.py``  reading the vocabulary and merges stored in a GGUF file

Tests (``tests/test_tokenizer*.py``) compare encode, decode and chat templates with transformers 4.55.2.
"""

from .base import AddedToken, BatchEncoding, Tokenizer, TokenizerFileError
from .bpe import BPETokenizer, BytePairModel
from .chat import ChatTemplateError, ChatTemplateRefusal, render_chat_template
from .loading import load_tokenizer
from .spm import SentencePieceTokenizer
from .streaming import StreamDecoder

__all__ = [
    "AddedToken",
    "BatchEncoding",
    "BPETokenizer",
    "BytePairModel",
    "ChatTemplateError",
    "ChatTemplateRefusal",
    "SentencePieceTokenizer",
    "StreamDecoder",
    "Tokenizer",
    "TokenizerFileError",
    "load_tokenizer",
    "render_chat_template",
]
