"""课时5 练习参考答案（带 KV 缓存的生成循环、停止词、重复检测、distinct-n）。"""

from __future__ import annotations

import torch


def _filter(scores: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """(B, V) -> (B, V): logits / temperature, then top-k, then top-p (transformers' order); dropped -> -inf."""
    scores = scores / temperature
    if top_k is not None:
        kth = scores.topk(min(top_k, scores.shape[-1])).values[..., -1:]        # (B, 1) the k-th best score
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None:
        # Sum the mass from the worst token up: drop the tail whose total is <= 1 - top_p, keep the best one always.
        sorted_scores, order = scores.sort()                                     # ascending, (B, V)
        drop_sorted = sorted_scores.softmax(-1).cumsum(-1) <= 1 - top_p
        drop_sorted[..., -1] = False
        scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return scores


def generate_with_cache(model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None,
                        do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None, generator: torch.Generator | None = None,
                        attention_mask: torch.Tensor | None = None, pad_token_id: int | None = None) -> torch.Tensor:
    from cache import DynamicCache  # the cache object the model fills in; any object with the same API works

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)                            # (B, T) no padding
    if pad_token_id is None:
        pad_token_id = eos_token_id if eos_token_id is not None else 0         # as transformers; no EOS: never used
    cache = DynamicCache()
    B = input_ids.shape[0]
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    new: list[torch.Tensor] = []
    step_input = input_ids                                                     # prefill: the whole prompt once
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)           # (B, T) left padding: 0 at the 1st real
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(step_input, attention_mask=attention_mask, position_ids=positions,
                           cache=cache).logits[:, -1].float()                  # (B, V)
            if do_sample:
                probs = _filter(logits, temperature, top_k, top_p).softmax(-1)
                tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)   # one draw for the batch
            else:
                tokens = logits.argmax(-1)                                     # (B,)
            tokens = tokens.masked_fill(finished, pad_token_id)                # finished rows only get padding
            new.append(tokens)
            if eos_token_id is not None:
                finished = finished | (tokens == eos_token_id)
            if bool(finished.all()):
                break
            step_input = tokens[:, None]                                       # then only the new tokens, (B, 1)
            positions = positions[:, -1:] + 1                                  # (B, 1) one past each row's last
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=-1)   # (B, past + 1)
    return torch.stack(new, dim=1).long() if new else input_ids.new_zeros(B, 0)   # (B, n)


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
