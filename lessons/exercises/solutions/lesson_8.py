"""课时8 练习参考答案（贪心与采样投机解码的整个循环）。"""

from __future__ import annotations

import torch


def speculative_greedy(target, draft, input_ids: torch.Tensor, max_new_tokens: int,
                       num_draft_tokens: int) -> torch.Tensor:
    from cache import DynamicCache

    t_cache = DynamicCache()
    d_cache = DynamicCache()
    seq = input_ids[0].tolist()
    prompt_len = len(seq)
    with torch.no_grad():
        target(input_ids[:, :-1], cache=t_cache)              # both caches hold all but the last token
        draft(input_ids[:, :-1], cache=d_cache)
        while len(seq) - prompt_len < max_new_tokens:
            gamma = min(num_draft_tokens, max_new_tokens - (len(seq) - prompt_len))
            # the draft's cache may lag by one token (its last proposal was never fed): feed what it misses
            proposal, step_input = [], torch.tensor([seq[d_cache.get_seq_length():]])
            for _ in range(gamma):                            # the draft proposes gamma tokens
                token = int(draft(step_input, cache=d_cache).logits[0, -1].argmax())
                proposal.append(token)
                step_input = torch.tensor([[token]])
            verify = torch.tensor([[seq[-1], *proposal]])     # (1, gamma + 1): one target pass checks them all
            best = target(verify, cache=t_cache).logits[0].argmax(-1).tolist()
            accepted = 0
            while accepted < gamma and proposal[accepted] == best[accepted]:
                accepted += 1
            seq += proposal[:accepted] + [best[accepted]]     # the target's own token ends every round
            t_cache.crop(len(seq) - 1)                        # forget the rejected drafts
            d_cache.crop(min(d_cache.get_seq_length(), len(seq) - 1))
    return torch.tensor([seq[prompt_len:prompt_len + max_new_tokens]])


def speculative_sampling(target, draft, input_ids: torch.Tensor, max_new_tokens: int, num_draft_tokens: int,
                         generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
    from cache import DynamicCache

    def probs(logits: torch.Tensor) -> torch.Tensor:
        return (logits.float() / temperature).softmax(-1)

    t_cache, d_cache = DynamicCache(), DynamicCache()
    seq = input_ids[0].tolist()
    prompt_len = len(seq)
    with torch.no_grad():
        while len(seq) - prompt_len < max_new_tokens:
            gamma = min(num_draft_tokens, max_new_tokens - (len(seq) - prompt_len) - 1)  # room for the last token
            drafts, q = [], []
            step_input = torch.tensor([seq[d_cache.get_seq_length():]])          # what the draft has not seen
            for _ in range(gamma):                                                # d_i ~ q_i, one at a time
                q.append(probs(draft(step_input, cache=d_cache).logits[0, -1]))
                drafts.append(int(torch.multinomial(q[-1], 1, generator=generator)))
                step_input = torch.tensor([[drafts[-1]]])
            verify = torch.tensor([seq[t_cache.get_seq_length():] + drafts])    # the prompt on the first round
            p = probs(target(verify, cache=t_cache).logits[0, -(gamma + 1):])    # (gamma + 1, V) one target pass
            u = torch.rand(gamma, generator=generator)
            accepted = 0
            while accepted < gamma and u[accepted] < p[accepted, drafts[accepted]] / q[accepted][drafts[accepted]]:
                accepted += 1
            if accepted == gamma:
                last_probs = p[gamma]                                             # the bonus token, from p
            else:
                last_probs = (p[accepted] - q[accepted]).clamp(min=0)             # the mass q under-proposed
                if last_probs.sum() <= 0:                                         # p == q up to rounding
                    last_probs = p[accepted]
            seq += drafts[:accepted] + [int(torch.multinomial(last_probs / last_probs.sum(), 1, generator=generator))]
            t_cache.crop(len(seq) - 1)                                            # forget the rejected drafts
            d_cache.crop(min(d_cache.get_seq_length(), len(seq) - 1))
    return torch.tensor([seq[prompt_len:]])
