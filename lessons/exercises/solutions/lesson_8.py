"""课时8 练习参考答案（贪心投机解码的整个循环）。"""

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
