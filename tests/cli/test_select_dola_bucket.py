"""scripts/select_dola_bucket.py: the verdict rule, the saved choice, and reading it back both ways.

- choose_bucket on hand-made accuracies (a winner, ties among buckets, a tie with plain decoding);
- a tiny model with questions built so that one bucket answers them all and the others do not: the script
  must pick that bucket and write its layers, and generate(dola_layers=file) / --dola-layers file must then
  decode exactly as DoLa with those layers;
- SmolLM2 on the shipped validation set (slow): no bucket beats plain decoding, the file says DoLa off, and
  generate(dola_layers=file) is plain greedy decoding.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from helpers import copy_default_tokenizer, save_tiny_llama
from generation import generate
from generation.dola import bucket_layers, dola_buckets
from generation.dola_choice import resolve_dola_layers
from generation.layer_selection import dola_layers_value
from generation.scoring import score_continuations
from model import load_pretrained

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".py", "_script"), ROOT / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script("select_dola_bucket.py")


def test_the_verdict_rule_on_hand_made_accuracies(script):
    names = ["bucket0", "bucket1", "bucket2"]
    assert script.choose_bucket({"plain": 0.5, "bucket0": 0.4, "bucket1": 0.6, "bucket2": 0.55}, names)[0] == "bucket1"
    choice, verdict = script.choose_bucket({"plain": 0.5, "bucket0": 0.4, "bucket1": 0.6, "bucket2": 0.6}, names)
    assert choice == "bucket1" and "tied with bucket2" in verdict  # the shallower of the tied buckets
    choice, verdict = script.choose_bucket({"plain": 0.6, "bucket0": 0.6, "bucket1": 0.2, "bucket2": 0.6}, names)
    assert choice is None and "no bucket beats plain decoding" in verdict and "leave DoLa off" in verdict
    assert script.choose_bucket({"plain": 0.621, "bucket0": 0.447, "bucket1": 0.447, "bucket2": 0.417},
                                names)[0] is None


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory):
    """A 7-layer random model (buckets 1-2, 3-4, 5-6) with the default model's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_dola")
    save_tiny_llama(folder, vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=7,
                    initializer_range=0.4)
    copy_default_tokenizer(folder)
    from tokenizer import load_tokenizer
    return folder, load_pretrained(folder, dtype=torch.float32), load_tokenizer(folder)


def questions_dola_wins(model, tok, count: int = 4) -> list[dict]:
    """Questions whose right answer is the choice bucket0 prefers and plain decoding does not: bucket0 scores
    1.0, plain decoding 0.0. (On this tiny model the three buckets mostly agree, so the others tie with it and
    the tie rule must give bucket0, the shallowest.)"""
    encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    methods = {"plain": {}, **{f"bucket{i}": {"dola_layers": f"bucket{i}"} for i in range(3)}}
    found, words = [], ["red", "blue", "green", "stone", "river", "seven", "cloud", "paper", "iron", "salt"]
    for i in range(200):
        choices = [words[(i + k * 3) % len(words)] + f" {i + k}" for k in range(4)]
        question = f"Which one is item {i}?"
        scores = score_continuations(model, encode(f"Q: {question}\nA:"), [encode(" " + c) for c in choices],
                                     methods)
        best = {name: int(values.argmax()) for name, values in scores.items()}
        if best["bucket0"] != best["plain"]:
            found.append({"question": question, "choices": choices, "answer": best["bucket0"]})
        if len(found) == count:
            return found
    pytest.fail("the tiny model gave too few questions on which bucket0 and plain decoding differ")


def test_a_winning_bucket_is_chosen_saved_and_read_back(script, tiny_with_tokenizer, tmp_path, capsys):
    folder, model, tok = tiny_with_tokenizer
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in questions_dola_wins(model, tok)))
    output = tmp_path / "choice.json"
    assert script.main(["--model", str(folder), "--data", str(data), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "verdict: use DoLa with bucket0" in printed
    saved = json.loads(output.read_text())
    layers = bucket_layers(*dola_buckets(7)[0])
    assert saved["dola_layers"] == layers == [2] and saved["bucket"] == "bucket0"
    assert saved["accuracy"]["plain"] == 0.0 and saved["accuracy"]["bucket0"] == 1.0
    ids = torch.tensor([tok.encode("Q: Which one is item 3?\nA:", add_special_tokens=False)])
    expected = generate(model, ids, max_new_tokens=8, eos_token_id=[], dola_layers=layers)
    from_file = generate(model, ids, max_new_tokens=8, eos_token_id=[], dola_layers=str(output))
    assert torch.equal(from_file.sequences, expected.sequences)
    assert resolve_dola_layers(dola_layers_value(str(output))) == layers  # --dola-layers choice.json


def test_a_broken_choice_file_is_refused(tmp_path, tiny_with_tokenizer):
    _, model, _ = tiny_with_tokenizer
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dola_layers": "bucket1"}))
    with pytest.raises(ValueError, match="must be a list of layer indices or null"):
        generate(model, torch.tensor([[5, 6]]), max_new_tokens=2, dola_layers=str(bad))
    with pytest.raises(ValueError, match="no such choice file"):
        generate(model, torch.tensor([[5, 6]]), max_new_tokens=2, dola_layers=str(tmp_path / "none.json"))


@pytest.mark.slow
def test_smollm2_verdict_is_dola_off_and_the_file_means_plain_decoding(script, default_model_path, tmp_path,
                                                                        capsys):
    output = tmp_path / "choice.json"
    assert script.main(["--output", str(output)]) == 0
    assert "no bucket beats plain decoding" in capsys.readouterr().out
    saved = json.loads(output.read_text())
    assert saved["dola_layers"] is None and saved["questions"] == 103
    assert all(saved["accuracy"]["plain"] > saved["accuracy"][f"bucket{i}"] for i in range(3))
    model = load_pretrained(default_model_path, dtype=torch.float32)
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    plain = generate(model, ids, max_new_tokens=8)
    assert torch.equal(generate(model, ids, max_new_tokens=8, dola_layers=str(output)).sequences, plain.sequences)
    assert resolve_dola_layers(dola_layers_value(str(output))) is None
