"""Numbers generation must not act on silently (generation/guards.py, generation/profiling.py): NaN or infinite
logits are named at their step whatever the decoding, a length penalty that overflows is refused up front, and a
profile file is JSON that any reader accepts (null, never NaN or Infinity)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import save_tiny_llama
from generation import generate
from generation.guards import NonFiniteLogitsError, check_logits
from generation.profiling import finite_or_null
from model import load_pretrained


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    save_tiny_llama(folder)
    return load_pretrained(folder)


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}, {"do_sample": True, "top_k": 0}],
                         ids=["greedy", "beams", "sampling"])
def test_a_nan_in_one_logit_is_never_chosen(tiny, options):
    with torch.no_grad():
        saved = tiny.lm_head.weight[5].clone()
        tiny.lm_head.weight[5] = float("nan")  # one token's logit is NaN, every other is finite
    try:
        with pytest.raises(NonFiniteLogitsError, match="the model produced NaN logits at step 1: the weights"):
            generate(tiny, torch.tensor([[1, 2, 3]]), max_new_tokens=4, **options)
    finally:
        with torch.no_grad():
            tiny.lm_head.weight[5] = saved


def test_banned_tokens_are_fine_but_nan_and_plus_inf_scores_are_not():
    logits = torch.zeros(2, 5)
    check_logits(logits, torch.tensor([[0.0, -torch.inf, 1, 2, 3], [-torch.inf] * 4 + [0.0]]), step=0)
    with pytest.raises(NonFiniteLogitsError, match="into NaN scores at step 3"):
        check_logits(logits, torch.tensor([[0.0, torch.nan, 1, 2, 3]] * 2), step=2)
    with pytest.raises(NonFiniteLogitsError, match="into infinite scores at step 1"):
        check_logits(logits, torch.tensor([[0.0, torch.inf, 1, 2, 3]] * 2), step=0)
    with pytest.raises(NonFiniteLogitsError, match="the model produced infinite logits at step 1"):
        check_logits(torch.tensor([[0.0, -torch.inf]]), torch.zeros(1, 2), step=0)


def test_a_length_penalty_that_overflows_is_refused_up_front(tiny):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(OverflowError):  # what Python does with the formula: 8 ** 400
        8 ** 400.0
    with pytest.raises(ValueError, match="length_penalty 400 is too large for max_new_tokens 8"):
        generate(tiny, ids, num_beams=2, max_new_tokens=8, length_penalty=400.0)
    with pytest.raises(ValueError, match="length_penalty -400 is too large"):  # 8 ** -400 is 0.0: scores / 0
        generate(tiny, ids, num_beams=2, max_new_tokens=8, length_penalty=-400.0)
    assert generate(tiny, ids, num_beams=2, max_new_tokens=8, length_penalty=300.0).sequences.shape[0] == 1


def test_profile_json_holds_null_not_nan_or_infinity():
    data = {"a": float("inf"), "b": [1.5, float("nan"), {"c": -float("inf")}], "d": "Infinity", "e": 3}
    text = json.dumps(finite_or_null(data), allow_nan=False)

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    assert json.loads(text, parse_constant=refuse) == {"a": None, "b": [1.5, None, {"c": None}], "d": "Infinity",
                                                       "e": 3}
