"""The logits-step protocol: one declaration (kind, needs) decides where a step runs and what the model computes;
misspelt or contradictory declarations are errors; a layer-selection step receives the other steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from generation import (DoLa, EntropyLayerChoice, LogitsStep, NoRepeatNGram, RepetitionPenalty, StepNeeds,
                        Temperature, TopK, generate, order_steps, prepare_call)
from model import CausalLM, ModelConfig


@pytest.fixture(scope="module")
def tiny_model():
    config = ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         initializer_range=0.2, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    return CausalLM(config).eval()


@dataclass(frozen=True)
class Shift(LogitsStep):
    """A user's penalty: it must run with the penalties, before a paper-DoLa contrast."""

    amount: float
    kind: ClassVar[str] = "penalty"

    def __call__(self, scores, ctx):
        return scores - self.amount


def test_steps_run_in_the_order_of_their_kinds_whatever_the_order_given():
    def mine(scores, ctx):
        return scores

    dola = DoLa((1,), "paper")
    raw = DoLa((1,), "transformers")
    given = [Temperature(0.5), mine, dola, Shift(1.0), RepetitionPenalty(1.2)]
    assert [type(s).__name__ for s in order_steps(given)] == ["Shift", "RepetitionPenalty", "DoLa", "FunctionStep",
                                                             "Temperature"]
    assert order_steps([TopK(3), NoRepeatNGram(2), raw])[0] is raw  # transformers' DoLa before every processor


def test_a_users_penalty_lands_before_dola_in_generate(tiny_model):
    """The user's penalty (kind "penalty") runs before the paper's DoLa: DoLa sees the shifted logits."""
    seen = []

    @dataclass(frozen=True)
    class Probe(LogitsStep):
        kind: ClassVar[str] = "penalty"

        def __call__(self, scores, ctx):
            seen.append("penalty")
            return scores

    class AfterDoLa(LogitsStep):
        kind = "custom"

        def __call__(self, scores, ctx):
            seen.append("custom:" + str("dola_premature_layer" in ctx.records))
            return scores

    generate(tiny_model, torch.tensor([[3, 4, 5]]), max_new_tokens=1, eos_token_id=[], dola_layers=[2],
             logits_steps=[AfterDoLa(), Probe()])
    assert seen == ["penalty", "custom:True"]


@pytest.mark.parametrize("body, message", [
    ({"needs_hidden_states": True}, "needs = StepNeeds"),
    ({"early_exit_layers": (1,)}, "needs = StepNeeds"),
    ({"need": StepNeeds(hidden_states=True)}, "did you mean 'needs'"),
    ({"kinds": "penalty"}, "did you mean 'kind'"),
    ({"kind": "penalties"}, r"kind must be one of .*did you mean 'penalty'"),
])
def test_a_misspelt_declaration_is_an_error_when_the_class_is_made(body, message):
    with pytest.raises((TypeError, ValueError), match=message):
        type("MyStep", (LogitsStep,), {**body, "__call__": lambda self, scores, ctx: scores})


def test_a_duck_typed_declaration_without_the_protocol_is_refused(tiny_model):
    class OldStyle:
        needs_hidden_states = True

        def __call__(self, scores, ctx):
            return scores

    with pytest.raises(TypeError, match="declares needs_hidden_states but is not a generation.LogitsStep"):
        generate(tiny_model, torch.tensor([[3, 4]]), max_new_tokens=1, logits_steps=[OldStyle()])


@pytest.mark.parametrize("needs, message", [
    (dict(early_exit_layers=(1,)), "early_exit_layers are read from the hidden states"),
    (dict(early_exit_norm=False), "no early_exit_layers are declared"),
    (dict(hidden_states="yes"), "must be True or False"),
    (dict(hidden_states=True, early_exit_layers=[1]), "must be a tuple"),
])
def test_contradictory_needs_are_errors(needs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        StepNeeds(**needs)


def test_two_steps_asking_for_different_early_exit_layers_are_refused(tiny_model):
    with pytest.raises(ValueError, match="ask for different early-exit layers"):
        generate(tiny_model, torch.tensor([[3, 4]]), max_new_tokens=1, dola_layers=[1],
                 logits_steps=[DoLa((2,), "paper")])


def test_a_contrast_and_a_layer_selection_together_are_refused(tiny_model):
    with pytest.raises(ValueError, match="each replaces the next-token distribution"):
        generate(tiny_model, torch.tensor([[3, 4]]), max_new_tokens=1, entropy_decoding="trough",
                 logits_steps=[DoLa((2,), "paper")])


def test_the_needs_decide_what_the_forward_computes(tiny_model):
    ids = torch.tensor([[3, 4, 5]])
    plain = prepare_call(tiny_model, ids, None, {"max_new_tokens": 2})
    assert plain.needs == StepNeeds()
    dola = prepare_call(tiny_model, ids, None, {"max_new_tokens": 2, "dola_layers": [1, 2],
                                                "dola_variant": "transformers"})
    assert dola.needs == StepNeeds(hidden_states=True, early_exit_layers=(1, 2), early_exit_norm=False)


def test_a_layer_selection_step_gets_the_other_steps_from_the_loop(tiny_model):
    """EntropyLayerChoice holds no step list of its own: the loop hands it the penalties and warpers, in order."""
    handed = []

    class Watch(EntropyLayerChoice):
        def __call__(self, scores, ctx):
            handed.append(tuple(type(s).__name__ for s in ctx.layer_steps))
            return super().__call__(scores, ctx)

    generate(tiny_model, torch.tensor([[3, 4, 5]]), max_new_tokens=2, eos_token_id=[], do_sample=True,
             temperature=0.7, repetition_penalty=1.3, generator=torch.Generator().manual_seed(0),
             logits_steps=[Watch()])
    assert handed == [("RepetitionPenalty", "Temperature")] * 2
