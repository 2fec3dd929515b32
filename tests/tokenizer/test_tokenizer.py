"""Byte-level BPE (tokenizer/bpe.py) held against transformers 4.55.2 on the default model, SmolLM2-135M-Instruct.

The oracle is transformers' fast tokenizer (the Rust `tokenizers` library) reading the default model's
tokenizer.json: the zoo folder's when it is built, else one written into a temporary folder by
model.zoo's GGUF readers from the same GGUF. Our tokenizer is loaded twice, from that folder and straight from
the GGUF file, and both must give the same ids and text as the oracle on a 2,000-string corpus.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from text_corpus import make_corpus

from model import zoo
from model.zoo import gguf_metadata, gguf_tokenizer
from tokenizer import BPETokenizer, load_tokenizer
from tokenizer.pretokenize import bytes_to_unicode

CORPUS = make_corpus(2000, seed=0)


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return zoo.locate_gguf(zoo.get_model(zoo.DEFAULT_MODEL))


@pytest.fixture(scope="module")
def tokenizer_folder(gguf_path, tmp_path_factory) -> Path:
    """A folder with the default model's tokenizer.json / tokenizer_config.json."""
    folder = zoo.default_model_path()
    if (folder / "tokenizer.json").is_file():
        return folder
    from gguf import GGUFReader

    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    reader = GGUFReader(gguf_path)
    spec = gguf_tokenizer.tokenizer_json(reader)
    tok_config = gguf_tokenizer.tokenizer_config(reader, spec, gguf_metadata.hf_config(reader))
    (folder / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def hf_tok(tokenizer_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_folder)


@pytest.fixture(scope="module")
def ours(tokenizer_folder) -> BPETokenizer:
    return load_tokenizer(tokenizer_folder)


@pytest.fixture(scope="module")
def ours_gguf(gguf_path) -> BPETokenizer:
    return load_tokenizer(gguf_path)


@pytest.mark.parametrize("source", ["folder", "gguf"])
@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_encode_matches_transformers_on_corpus(source, add_special_tokens, hf_tok, ours, ours_gguf):
    tok = ours if source == "folder" else ours_gguf
    expected = hf_tok(CORPUS, add_special_tokens=add_special_tokens)["input_ids"]
    mismatches = [(text, got, want) for text, want in zip(CORPUS, expected)
                  if (got := tok.encode(text, add_special_tokens=add_special_tokens)) != want]
    assert not mismatches, f"{len(mismatches)} of {len(CORPUS)} differ; first: {mismatches[0]}"


@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_decode_matches_transformers_on_corpus(skip_special_tokens, hf_tok, ours, ours_gguf):
    for text, ids in zip(CORPUS, hf_tok(CORPUS, add_special_tokens=False)["input_ids"]):
        want = hf_tok.decode(ids, skip_special_tokens=skip_special_tokens)
        assert ours.decode(ids, skip_special_tokens=skip_special_tokens) == want, text
        assert ours_gguf.decode(ids, skip_special_tokens=skip_special_tokens) == want, text
    assert ours.decode(hf_tok.encode(CORPUS[-1])) == CORPUS[-1]  # and it is lossless


def test_decode_of_random_ids_and_invalid_bytes_matches_transformers(hf_tok, ours):
    """Random id sequences often cut characters in half; we must give HF's U+FFFD text, never raise."""
    byte_ids = [ours.token_to_id(char) for char in bytes_to_unicode().values()]
    byte_tokens = [i for i in byte_ids if i is not None]  # SmolLM2 lacks 21 bytes (0x04, 0xC0, 0xFF, ...)
    assert len(byte_tokens) == 235 and byte_ids[0xE4] is not None and byte_ids[0x80] is not None
    for token_id in byte_tokens:  # every single byte alone, e.g. 0xE4 (the start of a 3-byte character)
        assert ours.decode([token_id]) == hf_tok.decode([token_id])
    rng = random.Random(1)
    for _ in range(300):
        ids = [rng.choice(byte_tokens) if rng.random() < 0.5 else rng.randrange(ours.vocab_size)
               for _ in range(rng.randint(1, 12))]
        assert ours.decode(ids) == hf_tok.decode(ids), ids
        assert ours.decode(ids, skip_special_tokens=True) == hf_tok.decode(ids, skip_special_tokens=True), ids


def test_special_tokens_and_vocab_match_transformers(hf_tok, ours, ours_gguf):
    for tok in (ours, ours_gguf):
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
            hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id)
        assert tok.vocab_size == len(hf_tok)
        ids = [0, 1, 2, 17, 198, 4093, 49151]
        assert tok.convert_ids_to_tokens(ids) == hf_tok.convert_ids_to_tokens(ids)
        assert tok.decode(torch.tensor(ids)) == tok.decode(ids) == hf_tok.decode(ids)
        assert tok.decode(4093) == hf_tok.decode(4093)
        assert tok.apply_chat_template([{"role": "user", "content": "Hi"}]) == hf_tok.apply_chat_template(
            [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    # SmolLM2 ends a turn with <|im_end|>: generation must stop there, not at <|endoftext|> or <|im_start|>.
    assert ours_gguf.convert_ids_to_tokens(ours_gguf.eos_token_id) == "<|im_end|>"


def test_special_token_inside_text_is_one_token(ours):
    ids = ours.encode("a<|im_start|>b<|im_end|>", add_special_tokens=False)
    assert ours.convert_ids_to_tokens(ids) == ["a", "<|im_start|>", "b", "<|im_end|>"]


def test_batch_encode_left_pads_like_transformers(hf_tok, ours):
    texts = ["Hi", "What is the capital of France?", "", "<|im_start|>user\n2 + 2 = ?"]
    want = hf_tok(texts, padding=True, padding_side="left", return_tensors="pt")
    got = ours(texts)
    torch.testing.assert_close(got.input_ids, want["input_ids"], rtol=0, atol=0)
    torch.testing.assert_close(got.attention_mask, want["attention_mask"], rtol=0, atol=0)
    assert got.input_ids[0, 0] == ours.pad_token_id and got.attention_mask[0, -1] == 1


def test_stream_decoder_releases_only_complete_characters(ours):
    emoji_ids = ours.encode("🤖", add_special_tokens=False)
    assert len(emoji_ids) > 1  # the emoji's 4 bytes are spread over several tokens
    stream = ours.decode_stream()
    pieces = [stream.push(i) for i in ours.encode("Hi 🤖!", add_special_tokens=False)]
    assert "".join(pieces) == "Hi 🤖!" and all("\ufffd" not in piece for piece in pieces)
    assert [piece for piece in pieces if piece] == ["Hi", " 🤖", "!"]  # the emoji waits for its last byte
    assert pieces.count("") >= len(emoji_ids) - 1


@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_stream_decoder_concatenation_equals_decode(ours, skip_special_tokens):
    rng = random.Random(2)
    sequences = [ours.encode(text) for text in CORPUS[:300]]
    sequences += [[rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 20))] for _ in range(200)]
    for ids in sequences:
        stream = ours.decode_stream(skip_special_tokens=skip_special_tokens)
        text = "".join(stream.push(i) for i in ids) + stream.flush()
        assert text == ours.decode(ids, skip_special_tokens=skip_special_tokens), ids


def test_decode_rejects_ids_outside_the_vocabulary(ours):
    with pytest.raises(ValueError, match="Token id 49152 is outside the vocabulary"):
        ours.decode([1, 49152])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.convert_ids_to_tokens(-1)


def test_missing_and_broken_tokenizer_files_get_clear_errors(tmp_path, tokenizer_folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=rf"No tokenizer found in {re.escape(str(tmp_path))}: looked for tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", ', encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer.json is not valid JSON \(line 1"):
        load_tokenizer(tmp_path)
    spec = json.loads((tokenizer_folder / "tokenizer.json").read_text(encoding="utf-8"))
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, spec["pre_tokenizer"]]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="pre_tokenizer type 'Whitespace' is not supported"):
        load_tokenizer(tmp_path)
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="could not be read as a GGUF file"):
        load_tokenizer(tmp_path / "fake.gguf")
