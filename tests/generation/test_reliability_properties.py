"""Property-based tests (hypothesis): invariants that must hold for any input, not only the ones we thought of.

- logits steps: after any penalties and then any warpers, in any order and repeated, on any logits (ties, huge
  values, -inf entries), a token of the highest penalised score survives, the probabilities sum to 1 and the
  sampler draws only surviving tokens; the penalties equal a plain-Python reference of their rule;
- caches (DynamicCache, StaticCache, sliding window): after any sequence of update / crop / reorder /
  repeat_interleave they hold exactly what plain tensors, concatenated, sliced and indexed by hand, hold;
- tokenizer: decode(encode(s)) == s for any text the default tokenizer can represent.

Run with `pytest tests/generation/test_reliability_properties.py --hypothesis-show-statistics` to see the case counts.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache import DynamicCache, DynamicLayer, SlidingWindowLayer, StaticCache
from generation import (MinP, NoRepeatNGram, RepetitionPenalty, StepContext, Temperature, TopK, TopP,
                        apply_logits_steps, select_sample)

# Case counts chosen so the file stays near 30 s on two cores; each run draws new cases (hypothesis's default).
def examples(count: int) -> settings:
    return settings(deadline=None, max_examples=count, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- logits steps
# A logit is any float32 in [-1e4, 1e4] (the range a model's logits live in, with room), a few exact values
# that make ties, or -inf (a token an earlier step removed).
LOGIT = st.one_of(st.floats(-1e4, 1e4, width=32), st.sampled_from([0.0, 1.0, -1.0, 5.0]), st.just(-math.inf))


@st.composite
def scores_and_history(draw):
    """(scores (B, V) float32 with a finite entry in every row, history (B, T) long over the vocabulary)."""
    rows, vocab, length = draw(st.integers(1, 3)), draw(st.integers(1, 24)), draw(st.integers(0, 10))
    values = draw(st.lists(st.lists(LOGIT, min_size=vocab, max_size=vocab), min_size=rows, max_size=rows))
    for row in values:
        if all(v == -math.inf for v in row):
            row[draw(st.integers(0, vocab - 1))] = draw(st.floats(-1e4, 1e4, width=32))
    history = draw(st.lists(st.lists(st.integers(0, vocab - 1), min_size=length, max_size=length),
                            min_size=rows, max_size=rows))
    return torch.tensor(values, dtype=torch.float32), torch.tensor(history, dtype=torch.long).view(rows, length)


KEEP = st.integers(1, 3)  # min_tokens_to_keep
WARPER = st.one_of(
    st.builds(Temperature, st.floats(1e-3, 100.0)),  # > 0: temperature 0 is greedy, handled before the steps
    st.builds(TopK, st.integers(1, 30), KEEP),
    st.builds(TopP, st.floats(0.0, 1.0, exclude_min=True), KEEP),
    st.builds(MinP, st.floats(0.0, 1.0), KEEP),
)
PENALTY = st.one_of(st.builds(RepetitionPenalty, st.floats(0.1, 10.0)), st.builds(NoRepeatNGram, st.integers(1, 4)))


def context(history: torch.Tensor, scores: torch.Tensor) -> StepContext:
    return StepContext(history, 0, scores, None, None, None, 0, {})


@examples(250)
@given(scores_and_history(), st.lists(PENALTY, max_size=3), st.lists(WARPER, max_size=5), st.integers(0, 2**31))
def test_after_any_warpers_a_best_token_survives_and_probabilities_sum_to_one(data, penalties, warpers, seed):
    scores, history = data
    penalised = apply_logits_steps(penalties, scores, context(history, scores))
    alive = torch.isfinite(penalised).any(dim=-1)  # no-repeat-ngram may ban every token of a row
    assert not torch.isnan(penalised).any() and not (penalised == math.inf).any()

    final = apply_logits_steps(warpers, penalised, context(history, penalised))
    assert not torch.isnan(final).any() and not (final == math.inf).any()
    best = penalised == penalised.max(dim=-1, keepdim=True).values  # (B, V) every token of the top score
    survives = torch.isfinite(final) & best
    assert torch.equal(survives.any(dim=-1), alive)  # warpers never remove the last token, nor add one back

    live = final[alive]
    probs = torch.softmax(live, dim=-1)
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(len(live)), rtol=0, atol=1e-5)
    assert (probs[~torch.isfinite(live)] == 0).all()  # a removed token has probability exactly 0
    if len(live):
        drawn = select_sample(live, torch.Generator().manual_seed(seed))
        assert torch.isfinite(live.gather(1, drawn[:, None])).all()


def banned_by_reference(history: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already in `history` (the rule, in plain Python)."""
    if len(history) < n:
        return set()
    prefix = history[len(history) - n + 1:]
    return {history[i + n - 1] for i in range(len(history) - n + 1) if history[i:i + n - 1] == prefix}


@examples(200)
@given(scores_and_history(), st.integers(1, 4), st.floats(0.1, 10.0))
def test_penalties_follow_their_rule_written_in_plain_python(data, n, penalty):
    scores, history = data
    banned = NoRepeatNGram(n)(scores, context(history, scores))
    penalised = RepetitionPenalty(penalty)(scores, context(history, scores))
    for row in range(scores.shape[0]):
        seen, ban = set(history[row].tolist()), banned_by_reference(history[row].tolist(), n)
        for token, value in enumerate(scores[row].tolist()):
            assert banned[row, token].item() == (-math.inf if token in ban else value)
            expected = (value * penalty if value < 0 else value / penalty) if token in seen else value
            assert penalised[row, token].item() == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- caches
HEADS, DIM, LAYERS, STATIC_LENGTH = 2, 4, 2, 40


class ReferenceLayer:
    """What a cache layer must hold, as plain tensors: every position seen, and the first one still stored."""

    def __init__(self, window: int | None) -> None:
        self.keys = self.values = None
        self.window, self.start = window, 0  # a sliding layer stores positions start .. seen - 1

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.start
        self.keys = keys if self.keys is None else torch.cat([self.keys, keys], dim=2)
        self.values = values if self.values is None else torch.cat([self.values, values], dim=2)
        if self.window is not None:  # the next query sees at most window - 1 earlier keys
            self.start = max(start, self.seen - (self.window - 1))
        return self.keys[:, :, start:], self.values[:, :, start:]

    @property
    def seen(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def crop(self, length: int) -> bool:
        """Keep positions < length; False where a sliding layer no longer holds what that needs."""
        if length >= self.seen:
            return True
        if self.window is not None and max(length - (self.window - 1), 0) < self.start:
            return False
        self.keys, self.values = self.keys[:, :, :length], self.values[:, :, :length]
        return True

    def select_rows(self, index: torch.Tensor) -> None:
        if self.keys is not None:
            self.keys, self.values = self.keys[index], self.values[index]


def stored(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """The (B, n_kv, S_stored, d) keys and values a cache layer holds (a static layer: its filled prefix)."""
    if hasattr(layer, "max_length"):
        return layer.keys[:, :, :layer.length], layer.values[:, :, :layer.length]
    return layer.keys, layer.values


def build_cache(kind: str, window: int):
    if kind == "dynamic":
        return DynamicCache(), [ReferenceLayer(None) for _ in range(LAYERS)]
    if kind == "static":
        return StaticCache(LAYERS, max_length=STATIC_LENGTH), [ReferenceLayer(None) for _ in range(LAYERS)]
    layers = [SlidingWindowLayer(window), DynamicLayer()]  # GPT-OSS alternates sliding and full layers
    return DynamicCache(layers=layers), [ReferenceLayer(window), ReferenceLayer(None)]


OPERATION = st.sampled_from(["update", "update", "crop", "reorder", "repeat_interleave"])


@examples(200)
@given(st.sampled_from(["dynamic", "static", "sliding"]), st.integers(1, 6), st.lists(OPERATION, max_size=12),
       st.data())
def test_cache_operations_keep_what_plain_tensors_keep(kind, window, operations, data):
    cache, reference = build_cache(kind, window)
    batch, generator = data.draw(st.integers(1, 3), label="batch"), torch.Generator().manual_seed(0)
    for operation in ["update", *operations]:
        if operation == "update":
            new = data.draw(st.integers(1, 5), label="new positions")
            if kind == "static" and reference[0].seen + new > STATIC_LENGTH:
                with pytest.raises(ValueError, match="StaticCache is full"):
                    cache.update(*torch.zeros(2, batch, HEADS, new, DIM), 0)
                continue
            for layer_idx, ref in enumerate(reference):
                keys, values = torch.randn(2, batch, HEADS, new, DIM, generator=generator)
                got, expected = cache.update(keys, values, layer_idx), ref.update(keys, values)
                assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        elif operation == "crop":
            length = data.draw(st.integers(-1, reference[0].seen + 2), label="crop length")
            if length < 0:
                with pytest.raises(ValueError, match="cannot crop a cache to a negative length"):
                    cache.crop(length)
                continue
            if not reference[0].crop(length):  # layer 0 is the sliding one: it refuses before any layer changes
                with pytest.raises(ValueError, match="re-run the prefix instead"):
                    cache.crop(length)
                continue
            for ref in reference[1:]:
                ref.crop(length)
            cache.crop(length)
        elif operation == "reorder":
            index = torch.tensor(data.draw(st.lists(st.integers(0, batch - 1), min_size=batch, max_size=batch),
                                           label="beam index"))
            cache.reorder(index)
            for ref in reference:
                ref.select_rows(index)
        else:
            repeats = data.draw(st.integers(1, 3), label="repeats")
            cache.repeat_interleave(repeats)
            for ref in reference:
                ref.select_rows(torch.arange(batch).repeat_interleave(repeats))
            batch *= repeats
        assert_same(cache, reference)


def assert_same(cache, reference: list[ReferenceLayer]) -> None:
    assert cache.get_seq_length() == reference[0].seen
    for layer, ref in zip(cache.layers, reference):
        keys, values = stored(layer)
        assert torch.equal(keys, ref.keys[:, :, ref.start:]) and torch.equal(values, ref.values[:, :, ref.start:])
        if ref.window is not None:  # a sliding layer still holds every key the next query may attend to
            assert ref.start <= max(ref.seen - (ref.window - 1), 0)
    assert cache.nbytes() == sum(2 * ref.keys[:, :, ref.start:].numel() * 4 for ref in reference)


# --------------------------------------------------------------------------- tokenizer round trip
def missing_bytes(tokenizer) -> set[int]:
    """Bytes with no token of their own: SmolLM2 lacks 21 (0x04 0x06 0x13 0x14 0x16 0x1D 0xC0 0xC1 0xF1 0xF2
    0xF5-0xFF), so its encode drops the control characters U+0004 ... U+001D and code points U+40000-U+BFFFF."""
    from tokenizer.pretokenize import bytes_to_unicode

    return {b for b, char in bytes_to_unicode().items() if tokenizer.token_to_id(char) is None}


def test_smollm2_lacks_exactly_the_21_documented_bytes(default_tokenizer):
    assert sorted(missing_bytes(default_tokenizer)) == [0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2,
                                                          *range(0xF5, 0x100)]


@pytest.fixture(scope="module")
def representable_text(default_tokenizer):
    """Any text whose UTF-8 bytes all have tokens, mixed with special tokens and runs of spaces and newlines."""
    missing = missing_bytes(default_tokenizer)
    char = st.characters(codec="utf-8").filter(lambda c: not missing & set(c.encode("utf-8")))
    specials = st.sampled_from(["<|im_start|>", "<|im_end|>", "<|endoftext|>", "  ", "\n\n", " \n", "'s", "123"])
    return st.lists(st.one_of(st.text(char, max_size=12), specials), max_size=6).map("".join)


@examples(300)
@given(data=st.data())
def test_decode_of_encode_is_the_text(default_tokenizer, representable_text, data):
    text = data.draw(representable_text, label="text")
    assert default_tokenizer.decode(default_tokenizer.encode(text)) == text
