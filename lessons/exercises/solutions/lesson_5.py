"""课时5 练习参考答案（带 KV 缓存的生成循环、停止词、重复检测、distinct-n）。"""

from __future__ import annotations

import torch


def _filter(scores: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    scores = scores / temperature
    if top_k is not None:
        kth = scores.topk(min(top_k, scores.shape[-1])).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None:
        sorted_scores, order = scores.sort(descending=True)
        mass_before = sorted_scores.softmax(-1).cumsum(-1) - sorted_scores.softmax(-1)
        drop_sorted = mass_before >= top_p                    # the first token always stays (mass before = 0)
        scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return scores


def generate_with_cache(model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None,
                        do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    from cache import DynamicCache  # the cache object the model fills in; any object with the same API works

    cache = DynamicCache()
    new: list[int] = []
    step_input = input_ids                                    # prefill: the whole prompt once
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(step_input, cache=cache).logits[:, -1].float()      # (1, V)
            if do_sample:
                probs = _filter(logits, temperature, top_k, top_p).softmax(-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            else:
                token = int(logits.argmax(-1))
            new.append(token)
            if token == eos_token_id:
                break
            step_input = torch.tensor([[token]], device=input_ids.device)     # then only the new token
    return torch.tensor([new], dtype=torch.long)


def trim_at_stop_string(text: str, stop_strings: list[str]) -> tuple[str, bool]:
    ends = [text.find(s) + len(s) for s in stop_strings if s and s in text]
    if not ends:
        return text, False
    return text[:min(ends)], True


def repeated_ngram(tokens: list[int], n: int) -> bool:
    if len(tokens) <= n:
        return False
    tail = tuple(tokens[-n:])
    return any(tuple(tokens[i:i + n]) == tail for i in range(len(tokens) - n))


def distinct_n(rows: list[list[int]], n: int) -> float:
    grams = [tuple(row[i:i + n]) for row in rows for i in range(len(row) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
