"""Who proposes the draft tokens in speculative decoding, and how each model's KV cache follows the sequence.

Both drafters keep one rule for their caches: a cache holds a *prefix* of the sequence, and before a model
predicts, `feed` runs it on the tokens its cache has not seen yet (`sequence[:, cache_length:]`). So a model
that fell behind (the draft model after a fully accepted round, the large model of hybrid routing after a
run of small-model tokens) catches up in one batched pass, and rolling back is just `cache.crop(length)`.

- `ModelDrafter`: a separate small model with its own cache (Leviathan et al. 2023; HF "assisted decoding").
- `EarlyExitDrafter`: the target's own first k blocks, then its final norm and head (self-speculative
  decoding, Zhang et al. 2023 "Draft & Verify"; Elhoushi et al. 2024 "LayerSkip"). It needs no second model
  and no second cache: it writes into the target's cache layers 0..k-1.
"""

from __future__ import annotations

import torch

from cache import DynamicCache


def feed(model, cache: DynamicCache, sequence: torch.Tensor, logits_to_keep: int = 1,
         num_layers: int | None = None) -> torch.Tensor:
    """Run `model` on the tokens of `sequence` (1, n) that `cache` has not seen; return their last
    `logits_to_keep` logits as float32, (logits_to_keep, V). The cache then holds all n positions."""
    unseen = sequence[:, cache.get_seq_length():]  # (1, T_new)
    if unseen.shape[1] < logits_to_keep:
        raise ValueError(f"asked for {logits_to_keep} logits but the cache has seen all but {unseen.shape[1]} "
                         "tokens of the sequence")
    if num_layers is None:
        return model(unseen, cache=cache, logits_to_keep=logits_to_keep).logits[0].float()  # (logits_to_keep, V)
    # An early exit: the first num_layers blocks, then the final norm and the head.
    (states,) = model.hidden_states(unseen, cache=cache, layers=[num_layers], keep_last=logits_to_keep)
    return model.logits_from_hidden(states)[0].float()  # (logits_to_keep, V)


def catch_up(model, cache: DynamicCache, sequence: torch.Tensor) -> bool:
    """Feed `model` the tokens of `sequence` (1, n) that `cache` has not seen, when there are any (a
    prefill, in effect). Returns whether a forward pass ran."""
    if cache.get_seq_length() >= sequence.shape[1]:
        return False
    model(sequence[:, cache.get_seq_length():], cache=cache, logits_to_keep=1)
    return True


class ModelDrafter:
    """A second, smaller model that shares the target's vocabulary; it keeps its own cache."""

    def __init__(self, draft_model) -> None:
        self.model = draft_model
        self.cache = DynamicCache()
        self.forward_passes = 0

    def next_logits(self, sequence: torch.Tensor) -> torch.Tensor:
        """(1, n) -> (V,) the draft's raw logits for the token after `sequence`."""
        self.forward_passes += 1
        return feed(self.model, self.cache, sequence)[-1]

    def before_verify(self, committed_length: int) -> None:
        """Nothing to do: the draft's cache is its own, and the target never reads it."""

    def rollback(self, length: int) -> None:
        """Forget every position from `length` on (the rejected drafts). A cache that is shorter stays as it
        is: after a fully accepted round the draft never saw its own last draft, and `feed` catches up."""
        self.cache.crop(length)


class EarlyExitDrafter:
    """The target's first `num_layers` blocks + final norm + head, writing into the target's cache.

    The scheme, kept simple so that it is clearly right. At the start of a round every layer of the shared
    cache holds the committed sequence minus its last token (n - 1 positions). Drafting appends the draft
    tokens to layers 0..k-1 only. Before the target verifies, `before_verify` crops those layers back to
    n - 1, and the verification pass recomputes all layers for the last token and the drafts. Blocks 0..k-1
    see the same inputs in both passes, so nothing computed during drafting was wrong; it is recomputed
    only because the upper blocks need the block-k hidden states of every draft. (Keeping those hidden
    states and running only blocks k..N-1 would save that work; see LayerSkip's cache reuse.)
    """

    def __init__(self, target, num_layers: int, target_cache: DynamicCache) -> None:
        N = target.config.num_hidden_layers
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers < N:
            raise ValueError(f"self-speculative drafting uses the first k of the target's {N} layers: k must be "
                             f"an integer in [1, {N - 1}], got {num_layers!r}")
        self.model, self.num_layers, self.cache = target, num_layers, target_cache
        self.forward_passes = 0

    def next_logits(self, sequence: torch.Tensor) -> torch.Tensor:
        """(1, n) -> (V,) the early-exit logits for the token after `sequence`."""
        self.forward_passes += 1
        return feed(self.model, self.cache, sequence, num_layers=self.num_layers)[-1]

    def before_verify(self, committed_length: int) -> None:
        """Drop the drafts' entries from layers 0..k-1; the upper layers never had them."""
        self.cache.crop(committed_length - 1)

    def rollback(self, length: int) -> None:
        """The target already cropped the shared cache to `length`; nothing else holds draft state."""
