"""SentencePiece tokenizer (tokenizer/spm.py) held against transformers' LlamaTokenizer.

A tiny SentencePiece BPE model is trained inside the test with the LLaMA-2 options (byte fallback,
split digits, no normalization), then loaded by us and by transformers' slow LlamaTokenizer
(legacy=True, its default; legacy=False needs protobuf, which this project does not install).
"""

from __future__ import annotations

import random

import pytest
import sentencepiece
from text_corpus import EMOJI, ENGLISH, NUMBERS, SPECIAL, WHITESPACE, make_corpus

from tokenizer import SentencePieceTokenizer, load_tokenizer

WORDS = "the of and to in is was for on that with as by at from this be it are or".split()
WORDS += ["你好", "世界", "模型", "数据", "café", "naïve"]
CORPUS = make_corpus(1000, seed=1, categories=[ENGLISH, EMOJI, NUMBERS, SPECIAL, WHITESPACE,
                                               ["<pad>", "<|user|>", "你好世界", "数据模型很好"]])


@pytest.fixture(scope="module")
def sp_folder(tmp_path_factory):
    """A folder with a freshly trained 400-piece tokenizer.model and nothing else."""
    folder = tmp_path_factory.mktemp("spm")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(600)]
    lines += [line for line in ENGLISH for _ in range(5)]
    (folder / "train.txt").write_text("\n".join(lines), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "train.txt"), model_prefix=str(folder / "tokenizer"), vocab_size=400,
        model_type="bpe", character_coverage=1.0, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
    )
    (folder / "train.txt").unlink()
    (folder / "tokenizer.vocab").unlink()
    return folder


@pytest.fixture(scope="module")
def hf_tok(sp_folder):
    from transformers import LlamaTokenizer

    return LlamaTokenizer(str(sp_folder / "tokenizer.model"), legacy=True)


@pytest.fixture(scope="module")
def hf_saved(hf_tok, sp_folder, tmp_path_factory):
    """The same tokenizer with a pad token and one more special token, saved by transformers."""
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer(str(sp_folder / "tokenizer.model"), legacy=True)
    tok.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<|user|>"]})
    folder = tmp_path_factory.mktemp("spm-saved")
    tok.save_pretrained(folder)
    return folder, tok


@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_encode_matches_llama_tokenizer(sp_folder, hf_tok, add_special_tokens):
    ours = load_tokenizer(sp_folder)
    assert isinstance(ours, SentencePieceTokenizer)
    for text in CORPUS:
        assert ours.encode(text, add_special_tokens) == hf_tok.encode(text, add_special_tokens=add_special_tokens), text


def _hf_drops_a_space(hf_tok, ids: list[int]) -> bool:
    """transformers' LlamaTokenizer strips a "▁" from the first piece, then SentencePiece strips the dummy
    prefix again: a text that starts with spaces ("   indented") comes back one space short. We give
    the text back as it was (see the round-trip test); these cases are left out of the comparison."""
    pieces = hf_tok.convert_ids_to_tokens(ids, skip_special_tokens=True)
    if not pieces or set(pieces[0]) != {"▁"}:
        return False
    return len(pieces[0]) > 1 or (len(pieces) > 1 and pieces[1].startswith("▁"))


def test_decode_matches_llama_tokenizer(sp_folder, hf_tok):
    ours = load_tokenizer(sp_folder)
    rng = random.Random(3)
    random_ids = [[rng.randrange(len(hf_tok)) for _ in range(rng.randint(1, 15))] for _ in range(300)]
    compared = 0
    for ids in [hf_tok.encode(text) for text in CORPUS] + random_ids:
        if not _hf_drops_a_space(hf_tok, ids):
            assert ours.decode(ids, skip_special_tokens=True) == hf_tok.decode(ids, skip_special_tokens=True), ids
            compared += 1
    assert compared > 1000


def test_decode_inverts_encode_with_special_tokens_visible(sp_folder):
    """transformers' legacy decode inserts a space before each special token; we give the text back as it was."""
    ours = load_tokenizer(sp_folder)
    for text in CORPUS:  # SentencePiece reads a "▁" in the text as a space: the one lossy case
        if "▁" not in text:
            assert ours.decode(ours.encode(text, add_special_tokens=False)) == text


def test_byte_fallback_pieces_decode_without_raising(sp_folder, hf_tok):
    ours = load_tokenizer(sp_folder)
    byte_ids = [ours.token_to_id(f"<0x{b:02X}>") for b in range(256)]
    assert None not in byte_ids
    for token_id in byte_ids:  # 0xE4 alone, 0xFF alone: not UTF-8, must come out as U+FFFD
        assert ours.decode([token_id]) == hf_tok.decode([token_id])


def test_saved_folder_with_added_tokens_and_pad(hf_saved):
    folder, hf = hf_saved
    ours = load_tokenizer(folder)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.unk_token_id) == (
        hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id)
    assert ours.vocab_size == len(hf) == 402
    for text in CORPUS[:300]:
        assert ours.encode(text) == hf.encode(text), text
    ids = hf.encode("<|user|>hi there<pad>")
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    batch = ours(["a", "the model is good"])
    want = hf(["a", "the model is good"], padding=True, padding_side="left", return_tensors="pt")
    assert batch.input_ids.tolist() == want["input_ids"].tolist()
    assert batch.attention_mask.tolist() == want["attention_mask"].tolist()


def test_stream_decoder_keeps_sentencepiece_spaces(sp_folder):
    """Decoding ids one by one would drop every word's space; the stream must not."""
    ours = load_tokenizer(sp_folder)
    text = "the model is good 你好 🤖 done"
    ids = ours.encode(text, add_special_tokens=False)
    stream = ours.decode_stream()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == text
    assert all("\ufffd" not in piece for piece in pieces)
