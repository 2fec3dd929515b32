"""Teacher-forced continuation scores against transformers' logits and DoLa's formulas written out here."""

from __future__ import annotations

import math

import pytest
import torch
import transformers  # the oracle

from generation.scoring import MASKED_LOG_PROB, continuation_log_probs, score_continuations
from model import load_pretrained


PROMPT = [7, 8, 9, 10, 11]
CHOICES = [[12, 13, 14], [40], [50, 51]]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=5)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny6")
    hf.save_pretrained(folder)
    return hf, load_pretrained(folder)


def hf_layer_log_probs(hf, ids: list[int]) -> torch.Tensor:
    """(N + 1, T, V) log-probabilities of every layer read through the final norm and head, per position."""
    with torch.no_grad():
        hidden = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
        heads = [hf.lm_head(hf.model.norm(h[0])) for h in hidden[:-1]] + [hf.lm_head(hidden[-1][0])]
    return torch.stack(heads).log_softmax(-1)


def test_plain_scores_equal_transformers_log_softmax(pair):
    hf, ours = pair
    got = continuation_log_probs(ours, PROMPT, CHOICES)["plain"]  # (3, 3), left-aligned zeros for short rows
    for i, choice in enumerate(CHOICES):
        log_p = hf_layer_log_probs(hf, PROMPT + choice)[-1]  # (T, V)
        expected = [log_p[len(PROMPT) - 1 + k, token].item() for k, token in enumerate(choice)]
        assert got[i, 3 - len(choice):].tolist() == pytest.approx(expected, abs=1e-5)
        assert (got[i, :3 - len(choice)] == 0).all()


def test_dola_scores_equal_the_formulas_per_position(pair):
    hf, ours = pair
    layers, alpha = [0, 2, 4], 0.1
    got = continuation_log_probs(ours, PROMPT, CHOICES, {"dola": {"dola_layers": layers}})["dola"]
    for i, choice in enumerate(CHOICES):
        log_q = hf_layer_log_probs(hf, PROMPT + choice)
        for k, token in enumerate(choice):
            t = len(PROMPT) - 1 + k
            final = log_q[-1, t]
            m = [0.5 * (final.exp() + log_q[j, t].exp()) for j in layers]  # eq. 3, written out
            jsd = [0.5 * (final.exp() * (final - mj.log())).sum() + 0.5 * (log_q[j, t].exp() *
                   (log_q[j, t] - mj.log())).sum() for j, mj in zip(layers, m)]
            premature = log_q[layers[int(torch.stack(jsd).argmax())], t]
            head = final.exp() >= alpha * final.exp().max()  # eq. 4
            contrast = torch.where(head, final - premature, torch.tensor(-math.inf))  # eq. 5
            expected = max(contrast.log_softmax(-1)[token].item(), MASKED_LOG_PROB)
            assert got[i, 3 - len(choice) + k].item() == pytest.approx(expected, abs=1e-4)


def test_entropy_scores_use_the_trough_layer(pair):
    hf, ours = pair
    got = score_continuations(ours, PROMPT, CHOICES[:1], {"entropy": {"entropy_decoding": "trough"}})["entropy"]
    log_q = hf_layer_log_probs(hf, PROMPT + CHOICES[0])[1:]  # layers 1..6
    entropy = -(log_q.exp() * log_q).sum(-1)  # (6, T)
    total = 0.0
    for k, token in enumerate(CHOICES[0]):
        t, j = len(PROMPT) - 1 + k, 5
        while j > 0 and entropy[j - 1, t] < entropy[j, t]:
            j -= 1
        total += log_q[j, t, token].item()
    assert got.item() == pytest.approx(total, abs=1e-4)


def test_several_methods_share_one_forward(pair):
    _, ours = pair
    scores = score_continuations(ours, PROMPT, CHOICES, {"plain": {}, "high": {"dola_layers": "high"},
                                                         "low": {"dola_layers": "low"}})
    assert set(scores) == {"plain", "high", "low"} and all(s.shape == (3,) for s in scores.values())


@pytest.mark.parametrize("prompt, choices, message", [
    ([], [[1]], "prompt is empty"),
    ([1, 2], [], "at least one continuation"),
    ([1, 2], [[3], []], "at least one continuation"),
])
def test_bad_scoring_input(pair, prompt, choices, message):
    with pytest.raises(ValueError, match=message):
        score_continuations(pair[1], prompt, choices)


# ------------------------------------------------------------------------------- multiple choice, the script

def fake_encode(text: str) -> list[int]:
    return [6 + ord(ch) % 90 for ch in text]


def test_multiple_choice_accuracy_counts_the_transformers_argmax(pair):
    from generation.scoring import multiple_choice_accuracy

    hf, ours = pair
    questions = [{"question": q, "choices": ["red", "blue", "green"], "answer": 0} for q in ("Sky?", "Grass?", "X?")]
    best = []
    for item in questions:
        prompt = fake_encode(f"Q: {item['question']}\nA:")
        totals = []
        for choice in item["choices"]:
            ids = fake_encode(" " + choice)
            log_p = hf_layer_log_probs(hf, prompt + ids)[-1]
            totals.append(sum(log_p[len(prompt) - 1 + k, t].item() for k, t in enumerate(ids)))
        best.append(max(range(3), key=totals.__getitem__))
    questions[0]["answer"], questions[1]["answer"] = best[0], best[1]
    questions[2]["answer"] = (best[2] + 1) % 3  # wrong on purpose
    accuracy = multiple_choice_accuracy(ours, fake_encode, questions, {"plain": {}, "dola": {"dola_layers": "high"}})
    assert accuracy["plain"] == pytest.approx(2 / 3)
    assert 0.0 <= accuracy["dola"] <= 1.0


@pytest.mark.parametrize("line, message", [
    ("not json", "not valid JSON"),
    ('{"question": "Q?", "choices": ["a"], "answer": 0}', "at least two"),
    ('{"question": "Q?", "choices": ["a", "b"], "answer": 2}', r"'answer' must be an index into 'choices' \(0\.\.1\)"),
])
def test_bad_multiple_choice_file_is_refused_before_the_model_loads(tmp_path, line, message):
    import importlib.util
    from pathlib import Path

    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    script = Path(__file__).resolve().parents[2] / "scripts" / "select_dola_bucket.py"
    spec = importlib.util.spec_from_file_location("select_dola_bucket", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match=message):
        module.main(["--data", str(path), "--model", str(tmp_path / "no_model_here")])


def test_shipped_questions_are_well_formed():
    from pathlib import Path

    from generation.scoring import load_multiple_choice

    questions = load_multiple_choice(Path(__file__).resolve().parents[2] / "data" / "factual_mc.jsonl")
    assert len(questions) >= 100
    assert len({q["question"] for q in questions}) == len(questions)
