"""课时6 练习参考答案（完整的束搜索：KV 缓存、已完成假设的堆、长度惩罚、提前停止）。"""

from __future__ import annotations

import heapq

import torch


def beam_search(model, input_ids: torch.Tensor, num_beams: int, max_new_tokens: int, length_penalty: float = 1.0,
                eos_token_id: int | None = None, num_return_sequences: int = 1
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
    from cache import DynamicCache  # the cache object the model fills in; any object with the same API works

    K = num_beams
    cache = DynamicCache()
    beams: list[list[int]] = [[] for _ in range(K)]            # the new tokens of each running beam
    scores = torch.full((K,), -1.0e9)                           # sum of log p; only beam 0 is live at first,
    scores[0] = 0.0                                             # or K copies of the prompt give K equal candidates
    finished: list[tuple[float, list[int]]] = []                # min-heap (score, tokens), at most K
    step_input = input_ids.repeat(K, 1)                         # (K, T) prefill: the prompt in every row
    with torch.no_grad():
        for n in range(1, max_new_tokens + 1):                  # n = tokens generated after this step
            log_p = model(step_input, cache=cache).logits[:, -1].float().log_softmax(-1)   # (K, V)
            V = log_p.shape[-1]
            top_scores, top_index = (scores[:, None] + log_p).view(-1).topk(2 * K)        # 2K best of K*V
            running, running_scores, parents = [], [], []
            for rank, (score, index) in enumerate(zip(top_scores.tolist(), top_index.tolist())):
                parent, token = divmod(index, V)
                tokens = beams[parent] + [token]
                if token == eos_token_id or n == max_new_tokens:   # this candidate ends here
                    if rank < K:       # only the top K may finish; the other K only refill the running beams
                        heapq.heappush(finished, (score / n ** length_penalty, tokens))
                        if len(finished) > K:
                            heapq.heappop(finished)                 # the worst hypothesis leaves
                elif len(running) < K:                              # the K best that go on
                    running.append(tokens)
                    running_scores.append(score)
                    parents.append(parent)
            if n == max_new_tokens:
                break
            # transformers' default early_stopping=False: stop when the best running beam, scored at its
            # current length, cannot beat the worst of K finished hypotheses
            if len(finished) == K and running_scores[0] / n ** length_penalty <= finished[0][0]:
                break
            beams, scores = running, torch.tensor(running_scores)
            cache.reorder(torch.tensor(parents))                   # each row's cache follows its parent beam
            step_input = torch.tensor([[tokens[-1]] for tokens in beams])   # (K, 1) only the new tokens
    best = sorted(finished, key=lambda h: h[0], reverse=True)[:num_return_sequences]
    return [torch.tensor(tokens) for _, tokens in best], torch.tensor([score for score, _ in best])
