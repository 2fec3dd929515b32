"""Lesson 1 (byte-level BPE) against transformers' GPT-2 byte table, the `tokenizers` library's BPE model
and hand-computed merges."""

from __future__ import annotations

import pytest
from tokenizers.models import BPE
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode as gpt2_bytes_to_unicode

from tokenizer.bpe import BytePairModel

from .helpers import check_equal

LESSON = 1

# A toy vocabulary learned from "low lower lowest newer wider": merges in the order they were learned.
MERGES = [("l", "o"), ("lo", "w"), ("e", "r"), ("n", "e"), ("ne", "w"), ("e", "s"), ("es", "t"), ("w", "i"),
          ("a", "a"), ("aa", "aa")]


def _vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = sorted(set("abcdefghijklmnopqrstuvwxyz")) + [a + b for a, b in merges]
    return {s: i for i, s in enumerate(dict.fromkeys(symbols))}


def _model() -> BytePairModel:
    return BytePairModel(_vocab(MERGES), MERGES)


# ----------------------------------------------------------------------------------- 1.1 byte table
def test_bytes_to_unicode_hand_computed(impl):
    """'a' stays 'a', a space becomes 'Ġ', a newline 'Ċ', byte 0 chr(256)"""
    table = impl.bytes_to_unicode()
    got = (table[ord("a")], table[32], table[10], table[0], len(table))
    check_equal(got, ("a", "Ġ", "Ċ", chr(256), 256),
                "可打印字节映射到自己；其余字节按从小到大的顺序依次映射到 chr(256)、chr(257)……")


def test_bytes_to_unicode_matches_gpt2(impl):
    """The whole table equals GPT-2's (transformers' bytes_to_unicode)"""
    table = impl.bytes_to_unicode()
    expected = gpt2_bytes_to_unicode()
    wrong = {b: (table.get(b), expected[b]) for b in range(256) if table.get(b) != expected[b]}
    if wrong:
        first = dict(list(wrong.items())[:4])
        raise AssertionError(f"{len(wrong)} 个字节映射不对，例如 {{字节: (你的, 应为)}} = {first}；"
                             "检查三段可打印范围：33-126、161-172、174-255")


# ----------------------------------------------------------------------------------- 1.2 merges
@pytest.mark.parametrize("word, expected", [
    ("lower", ["low", "er"]),
    ("newest", ["new", "est"]),
    ("wider", ["wi", "d", "er"]),
    ("x", ["x"]),
])
def test_bpe_merge_hand_computed(impl, word, expected):
    """Toy merges: lowest rank first, until no pair is a merge"""
    check_equal(impl.bpe_merge(_model(), word), expected,
                "每轮合并名次最小（最早学到）的相邻对；没有可合并的对时停止")


def test_bpe_merge_every_occurrence(impl):
    """'aaaaa' with (a, a) then (aa, aa): ['aaaa', 'a'] -- pairs merge left to right, without overlap"""
    check_equal(impl.bpe_merge(_model(), "aaaaa"), ["aaaa", "a"],
                "一轮里把这一对的所有出现都合并，从左到右、不重叠：aaaaa -> aa aa a -> aaaa a")


def test_bpe_merge_rank_not_position(impl):
    """The lowest-ranked pair is merged first, not the leftmost: 'ewer' -> ['e', 'we', 'r']"""
    merges = [("w", "e"), ("e", "r"), ("e", "w")]
    model = BytePairModel(_vocab(merges), merges)
    check_equal(impl.bpe_merge(model, "ewer"), ["e", "we", "r"],
                "按名次选而不是按位置选：(w, e) 名次 0 最先合并，之后 e|we|r 里已没有可合并的相邻对")


@pytest.mark.parametrize("word", ["lowest", "newer", "slower", "aaaaaaa", "wideawake", "lowlowlow"])
def test_bpe_merge_matches_tokenizers_library(impl, word):
    """Same pieces as the BPE model of Hugging Face's `tokenizers` library (Rust) with the same merges"""
    vocab = _vocab(MERGES)
    expected = [t.value for t in BPE(vocab, MERGES).tokenize(word)]
    check_equal(impl.bpe_merge(BytePairModel(vocab, MERGES), word), expected,
                "与 tokenizers 库的 BPE 不一致：每轮只合并名次最小的那一对（所有出现处）")
