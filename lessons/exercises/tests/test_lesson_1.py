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
    """'a' 仍是 'a'，空格变成 'Ġ'，换行变成 'Ċ'，字节 0 变成 chr(256)"""
    table = impl.bytes_to_unicode()
    got = (table[ord("a")], table[32], table[10], table[0], len(table))
    check_equal(got, ("a", "Ġ", "Ċ", chr(256), 256),
                "可打印字节映射到自己；其余字节按从小到大的顺序依次映射到 chr(256)、chr(257)……")


def test_bytes_to_unicode_matches_gpt2(impl):
    """整张表与 GPT-2 的相同（transformers 的 bytes_to_unicode）"""
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
    """玩具合并表：名次最小的对先合并，直到没有相邻对可以合并"""
    check_equal(impl.bpe_merge(_model(), word), expected,
                "每轮合并名次最小（最早学到）的相邻对；没有可合并的对时停止")


def test_bpe_merge_every_occurrence(impl):
    """'aaaaa' 依次用 (a, a)、(aa, aa) 合并得 ['aaaa', 'a']：同一对从左到右合并，不重叠"""
    check_equal(impl.bpe_merge(_model(), "aaaaa"), ["aaaa", "a"],
                "一轮里把这一对的所有出现都合并，从左到右、不重叠：aaaaa -> aa aa a -> aaaa a")


def test_bpe_merge_rank_not_position(impl):
    """先合并名次最小的对，而不是最靠左的对：'ewer' -> ['e', 'we', 'r']"""
    merges = [("w", "e"), ("e", "r"), ("e", "w")]
    model = BytePairModel(_vocab(merges), merges)
    check_equal(impl.bpe_merge(model, "ewer"), ["e", "we", "r"],
                "按名次选而不是按位置选：(w, e) 名次 0 最先合并，之后 e|we|r 里已没有可合并的相邻对")


@pytest.mark.parametrize("word", ["lowest", "newer", "slower", "aaaaaaa", "wideawake", "lowlowlow"])
def test_bpe_merge_matches_tokenizers_library(impl, word):
    """与 Hugging Face `tokenizers` 库（Rust）用同一份合并表的 BPE 模型切出相同的片段"""
    vocab = _vocab(MERGES)
    expected = [t.value for t in BPE(vocab, MERGES).tokenize(word)]
    check_equal(impl.bpe_merge(BytePairModel(vocab, MERGES), word), expected,
                "与 tokenizers 库的 BPE 不一致：每轮只合并名次最小的那一对（所有出现处）")
