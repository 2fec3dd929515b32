"""Stopping criteria: max_time, your own callable, a regular expression, the first complete JSON value; each
row ends on its own, the reason is named, and the stop happens at the token that completes the pattern."""

from __future__ import annotations

import json
import re
import time
from typing import ClassVar

import pytest
import torch

from generation import LogitsStep, generate
from generation.stopping import first_json_value_end
from model import CausalLM, ModelConfig

ALPHABET = 'abcdefgh{}[]":,0123 xyz#'  # token i decodes to ALPHABET[i]; "#" is the padding
PAD = len(ALPHABET) - 1


class CharTokenizer:
    def decode(self, ids):
        return "".join(ALPHABET[i] for i in ids)


def encode(text: str) -> list[int]:
    return [ALPHABET.index(c) for c in text]


class Script(LogitsStep):
    """Forces row b to write scripts[b], one character per position (every other token at -inf)."""

    kind: ClassVar[str] = "custom"

    def __init__(self, *scripts: str):
        self.ids = [encode(s) for s in scripts]

    def __call__(self, scores, ctx):
        forced = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(self.ids):
            forced[row, ids[min(ctx.position, len(ids) - 1)]] = 0.0
        return forced


@pytest.fixture(scope="module")
def model():
    config = ModelConfig(vocab_size=len(ALPHABET), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         eos_token_id=None, pad_token_id=PAD)
    torch.manual_seed(0)
    return CausalLM(config).eval()


def run(model, scripts, **options):
    prompt = torch.full((len(scripts), 2), 1)
    return generate(model, prompt, max_new_tokens=max(map(len, scripts)), eos_token_id=[], tokenizer=CharTokenizer(),
                    logits_steps=[Script(*scripts)], **options)


def texts(out) -> list[str]:
    """The generated text of each row, without the padding after its end."""
    return [CharTokenizer().decode(row).rstrip("#") for row in out.new_tokens.tolist()]


@pytest.mark.parametrize("script, complete", [
    ('ab {"a": [1, 2]} cd', 'ab {"a": [1, 2]}'),
    ('x {"a": "}"} yyy', 'x {"a": "}"}'),  # a brace inside a string does not close the object
    ('[1, [2, 3]], 0 abc', '[1, [2, 3]]'),
    ('{"a": {"b": {}}}zz', '{"a": {"b": {}}}'),
])
def test_stop_on_json_stops_at_the_token_that_completes_the_first_value(model, script, complete):
    out = run(model, [script, "abcdefgh abcdefgh abcdefgh"[:len(script)]], stop_on_json=True)
    assert texts(out)[0] == complete and out.stop_reasons == ["json_complete", "max_new_tokens"]
    assert json.loads(complete[complete.index(complete.lstrip("abx ")[0]):]) is not None  # a JSON value indeed
    assert texts(out)[1].startswith("abcdefgh")  # the other row ran on, unaffected


def test_first_json_value_end_hand_computed():
    assert first_json_value_end('so {"a": 1} and') == 11
    assert first_json_value_end('so {"a": ') is None
    assert first_json_value_end("no json here") is None


@pytest.mark.parametrize("pattern, script, stop_at", [
    (r"\d\d", "ab1c23def", "ab1c23"),
    (r"c+d", "abcccdxyz", "abcccd"),
    (r"^zz", "abzz", None),  # ^ anchors at the start of the generated text: never here
])
def test_stop_regex_stops_at_the_first_match(model, pattern, script, stop_at):
    out = run(model, [script], stop_regex=pattern)
    expected = stop_at if stop_at is not None else script
    # reference: the shortest prefix of the script that re.search matches, in plain Python
    first = next((script[:n] for n in range(1, len(script) + 1) if re.search(pattern, script[:n])), None)
    assert first == stop_at and texts(out)[0] == expected
    assert out.stop_reasons == ["stop_regex" if stop_at is not None else "max_new_tokens"]


def test_a_users_criterion_ends_each_row_on_its_own(model):
    seven = encode("3")[0]

    def saw_a_three(sequences):
        return (sequences[:, 2:] == seven).any(dim=-1)

    out = run(model, ["ab3cdefg", "abcdefgh", "3xxxxxxx"], stopping_criteria=[saw_a_three])
    assert texts(out)[0] == "ab3" and texts(out)[2].startswith("3")
    assert out.stop_reasons == ["stopping_criteria", "max_new_tokens", "stopping_criteria"]
    assert out.new_tokens[0, 3:].eq(PAD).all()  # padding after the end


def test_a_criterion_returning_one_bool_ends_every_row(model):
    calls = []
    out = run(model, ["abcdefgh", "hgfedcba"], stopping_criteria=[lambda seqs: calls.append(1) or len(calls) >= 3])
    assert out.new_tokens.shape[1] == 3 and out.stop_reasons == ["stopping_criteria"] * 2


def test_max_time_ends_a_slow_run(model):
    class Slow(LogitsStep):
        def __call__(self, scores, ctx):
            time.sleep(0.05)
            return scores

    start = time.perf_counter()
    out = generate(model, torch.tensor([[1, 2]]), max_new_tokens=100, eos_token_id=[], max_time=0.3,
                   logits_steps=[Slow()])
    assert out.stop_reasons == ["max_time"]
    assert 0.3 <= time.perf_counter() - start < 3.0 and 1 <= out.new_tokens.shape[1] < 100


@pytest.mark.parametrize("options, message", [
    (dict(stop_regex="a(b", tokenizer=CharTokenizer()), "stop_regex must be a valid, non-empty regular expression"),
    (dict(stop_regex="ab"), "matched on decoded text: pass tokenizer="),
    (dict(stop_on_json=True), "matched on decoded text: pass tokenizer="),
    (dict(max_time=0), "max_time must be a number of seconds > 0"),
    (dict(stopping_criteria=[3]), "stopping_criteria must be a list of callables"),
])
def test_bad_stopping_options_are_refused(model, options, message):
    with pytest.raises(ValueError, match=message):
        generate(model, torch.tensor([[1, 2]]), **options)


def test_a_criterion_returning_the_wrong_shape_is_named(model):
    with pytest.raises(ValueError, match=r"returned shape \(3,\); it must return a bool or a \(N,\) bool tensor"):
        generate(model, torch.tensor([[1, 2]]), eos_token_id=[], stopping_criteria=[lambda s: torch.ones(3)])
