"""课时1练习：分词——字节到字符的映射与 BPE 合并。

把每个 `raise NotImplementedError(...)` 换成你的实现，然后运行 `python -m lessons.grade 1`。
参考答案是 tokenizer/pretokenize.py 的 `bytes_to_unicode` 与 tokenizer/bpe.py 的 `BytePairModel.merge`
（签名完全相同；方法的第一个参数 self 就是那个 BytePairModel）。
"""

from __future__ import annotations

__all__ = ["bytes_to_unicode", "bpe_merge"]


def bytes_to_unicode() -> dict[int, str]:
    """Exercise 1.1：GPT-2 的字节 -> 可打印字符表（256 项）。

    - 可打印的字节映射到同码位的字符：'!'(33) 到 '~'(126)，'¡'(161) 到 '¬'(172)，'®'(174) 到 'ÿ'(255)；
    - 其余 68 个字节（控制字符、空格 32、换行 10、127-160、173……）按字节从小到大的顺序，
      依次映射到 chr(256)、chr(257)、……。所以空格 32 变成 'Ġ'（chr(288)），换行 10 变成 'Ċ'。
    返回 {字节: 字符} 的字典。
    """
    raise NotImplementedError("Exercise 1.1: bytes_to_unicode")


def bpe_merge(self, word: str) -> list[str]:
    """Exercise 1.2：对一个预分词后的片段做 BPE 合并（即 `tokenizer.bpe.BytePairModel.merge`）。

    `self.merge_ranks` 是 {(左, 右): 名次} 的字典，名次越小的合并在训练中学得越早。
    从单个字符开始：每一轮在所有相邻对中找名次最小的那一对，把它在整个片段里**所有**出现的地方（从左到右，
    不重叠）合并成一个符号；直到没有任何相邻对在 merge_ranks 里，或只剩一个符号。
    返回最终的符号列表，例如 "lower" -> ["low", "er"]。
    """
    raise NotImplementedError("Exercise 1.2: bpe_merge")
