"""Log-probabilities of given continuations by teacher forcing, under plain, DoLa or entropy decoding.

This is how DoLa's multiple-choice evaluation works (TruthfulQA-MC, FACTOR): each choice is appended to the
prompt, the model reads the whole text once, and the choice's score is the sum over its tokens of
log p(token | everything before it), with p the distribution the decoding method would sample from.

    scores = score_continuations(model, prompt_ids, [choice_a_ids, choice_b_ids],
                                 methods={"plain": {}, "dola": {"dola_layers": "high"}})
    scores["dola"]   # (2,) summed log-probabilities

One forward pass serves every method: the choices are left-padded into one batch, the hidden states are
kept only for the positions that predict a choice token, and each position is then treated as a row of a
batch by the very step objects generate() uses (DoLa, EntropyLayerChoice), so there is one implementation.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import torch

from .layer_selection import LayerSelectionOptions
from .steps import StepContext, combined_needs, order_steps, run_steps

# A token outside DoLa's plausible set V_head has probability 0; summing log 0 = -inf would make every such
# choice tie. DoLa's own evaluation code scores it with this floor instead (its `relative_top_value`).
MASKED_LOG_PROB = -1000.0


def left_padded_choices(prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                        pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows prompt + continuation_i, left-padded to one length: (n, T) ids and (n, T) attention mask."""
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty: the first continuation token needs at least one token before it")
    if not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("give at least one continuation, each of at least one token")
    rows = [list(prompt_ids) + list(c) for c in continuations]
    T = max(len(r) for r in rows)
    ids = torch.tensor([[pad_token_id] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@torch.no_grad()
def continuation_log_probs(model, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                           methods: dict[str, dict[str, Any]] | None = None,
                           generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-token log-probabilities (n, C_max) of each continuation under each method; 0 where a row is shorter.

    methods: name -> layer-selection options of generate() ({} = plain decoding). Default: {"plain": {}}.
    """
    methods = {"plain": {}} if methods is None else methods
    builders = {name: LayerSelectionOptions(**options) for name, options in methods.items()}  # checked first
    steps = {name: order_steps(b.steps(model.config, 1)) for name, b in builders.items()}
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids, mask = left_padded_choices(prompt_ids, continuations, pad)
    ids, mask = ids.to(model.device), mask.to(model.device)
    n, T = ids.shape
    C = max(len(c) for c in continuations)
    hidden = any(combined_needs(method).hidden_states for method in steps.values())
    # Keep C + 1 positions; the first C of them predict the last C tokens of each row.
    out = model(ids, attention_mask=mask, output_hidden_states=hidden, logits_to_keep=C + 1)
    logits = out.logits[:, :-1].float().reshape(n * C, -1)  # (P = n * C, V): positions as rows
    hidden_states = None
    if hidden:  # each (n, C + 1, H) -> (P, 1, H), the shape a decode step sees
        hidden_states = tuple(h[:, :-1].reshape(n * C, 1, -1) for h in out.hidden_states)
    targets = ids[:, T - C:]  # (n, C) the token each kept position predicts
    lengths = torch.tensor([len(c) for c in continuations], device=ids.device)
    valid = torch.arange(C, device=ids.device)[None, :] >= (C - lengths)[:, None]  # (n, C)
    ctx = StepContext(ids.repeat_interleave(C, dim=0), T, logits, hidden_states, model, generator, 0, {})
    result = {}
    for name, method_steps in steps.items():
        log_probs = run_steps(method_steps, logits, ctx).log_softmax(-1)  # (P, V)
        picked = log_probs.gather(1, targets.reshape(-1, 1)).view(n, C).clamp(min=MASKED_LOG_PROB)
        result[name] = torch.where(valid, picked, torch.zeros_like(picked))
    return result


def score_continuations(model, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                        methods: dict[str, dict[str, Any]] | None = None,
                        generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Summed log-probability (n,) of each continuation under each method (see continuation_log_probs)."""
    per_token = continuation_log_probs(model, prompt_ids, continuations, methods, generator)
    return {name: values.sum(-1) for name, values in per_token.items()}


# ------------------------------------------------------------------------------- multiple-choice questions

def load_multiple_choice(path) -> list[dict[str, Any]]:
    """Read a JSONL file of {"question": str, "choices": [str, ...], "answer": index}; refuse bad lines clearly."""
    questions = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
            choices, answer = item.get("choices"), item.get("answer")
            if not isinstance(item.get("question"), str) or not isinstance(choices, list) or len(choices) < 2 \
                    or not all(isinstance(c, str) and c for c in choices):
                raise ValueError(f"{path}, line {number}: needs a 'question' string and a 'choices' list of at "
                                 f"least two non-empty strings")
            if not isinstance(answer, int) or not 0 <= answer < len(choices):
                raise ValueError(f"{path}, line {number}: 'answer' must be an index into 'choices' "
                                 f"(0..{len(choices) - 1}), got {answer!r}")
            questions.append(item)
    if not questions:
        raise ValueError(f"{path} holds no questions")
    return questions


def multiple_choice_accuracy(model, encode: Callable[[str], list[int]], questions: Sequence[dict[str, Any]],
                             methods: dict[str, dict[str, Any]],
                             template: str = "Q: {question}\nA:") -> dict[str, float]:
    """Fraction of questions whose right choice gets the highest summed log-probability, per method.

    encode(text) -> token ids without special tokens; each choice is scored as " " + choice after the prompt.
    """
    correct = dict.fromkeys(methods, 0)
    for item in questions:
        prompt = encode(template.format(question=item["question"]))
        choices = [encode(" " + choice) for choice in item["choices"]]
        scores = score_continuations(model, prompt, choices, methods)
        for name, values in scores.items():
            correct[name] += int(values.argmax()) == item["answer"]
    return {name: count / len(questions) for name, count in correct.items()}
