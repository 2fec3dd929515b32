"""A deterministic corpus of awkward strings for tokenizer parity tests.

Each string joins a few random pieces (English, Chinese and other scripts, code, emoji, numbers,
whitespace runs, special tokens written inside the text) with random separators, drawn from
``random.Random(seed)`` so every run tests the same strings.
"""

from __future__ import annotations

import random

ENGLISH = [
    "Hello world", "The quick brown fox jumps over the lazy dog.", "I'm sure they've said it's fine, don't worry.",
    "WE'LL SEE. She'D know", "e.g. U.S.A., Mr. Smith's dog", "What is the capital of France?", "well-known",
    "Once upon a time", "   indented", "trailing   ", "CamelCaseWord snake_case_word kebab-case", "'quoted' \"double\"",
]
OTHER_SCRIPTS = [
    "你好，世界！", "机器学习是人工智能的一个分支。", "今天天气很好", "中文English混合text", "一二三四五",
    "日本語のテキストです", "한국어 문장입니다", "Привет, мир!", "Ελληνικά γράμματα", "مرحبا بالعالم",
    "नमस्ते दुनिया", "café naïve façade", "e\u0301 (combining accent)", "ſtraße ß", "ไทย",
]
CODE = [
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }", '{"key": [1, 2, 3], "ok": true}',
    "if __name__ == '__main__':\n\tmain()", "x=>x*2 // arrow", "SELECT * FROM t WHERE id <> 3;", "a[::-1] != b",
    "#include <stdio.h>", "<div class=\"x\">&amp;</div>", "$HOME/.cache && echo $?", "@decorator\nclass A(B):",
]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "❤️", "🤖🚀✨", "☃", "🫠", "©®™", "→⇒∀∃∈√∞"]
NUMBERS = [
    "42", "3.14159", "1,000,000", "2024-11-23", "-0.5e-10", "0x1F", "½ ² ³", "١٢٣", "１２３", "Ⅻ", "100%",
    "$19.99", "12:30", "v2.13.0", "007",
]
SPECIAL = [
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nhi<|im_end|>", "<repo_name>", "<file_sep>",
    "<|im_start", "|im_end|>", "<<|im_end|>>", "<|IM_START|>", "<s>", "</s>", "<unk>", "▁",
]
WHITESPACE = [" ", "  ", "    ", "\n", "\n\n", "\n\n\n", "\t", "\t\t", "\r\n", " \n ", "\u00a0", "\u3000", "\u2009", "\x0b"]
ODD = ["", "\x00", "\x7f", "\x04\x13 (bytes with no token)", "\U00040000", "\ufffd", "\u200b", "\ufeff", "a\u0300\u0301\u0302", "\u212b \u2126 \ufb01", "'", "''s", "'S"]
CATEGORIES = [ENGLISH, OTHER_SCRIPTS, CODE, EMOJI, NUMBERS, SPECIAL, WHITESPACE, ODD]
SEPARATORS = ["", " ", " ", "  ", "\n", "\t", " \n", "\n\n", "   "]


def make_corpus(n: int = 2000, seed: int = 0, categories: list[list[str]] | None = None) -> list[str]:
    """``n`` strings, each 1-6 random pieces joined by random separators; every piece appears alone once."""
    rng = random.Random(seed)
    categories = categories or CATEGORIES
    corpus = [piece for category in categories for piece in category]
    while len(corpus) < n:
        pieces = [rng.choice(rng.choice(categories)) for _ in range(rng.randint(1, 6))]
        text = pieces[0]
        for piece in pieces[1:]:
            text += rng.choice(SEPARATORS) + piece
        corpus.append(text)
    return corpus[:n]
