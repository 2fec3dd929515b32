"""model.generate(**inputs, ...): transformers' calling convention (seed 000), held to transformers 4.55.2."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import save_tiny_llama
from generation import generate
from model import load_pretrained


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    hf = save_tiny_llama(folder, num_hidden_layers=4)
    ids = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0  # row 1 left-padded
    return hf, load_pretrained(folder), {"input_ids": ids, "attention_mask": mask}


def assert_close_steps(ours: tuple, theirs: tuple) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert torch.equal(torch.isinf(a), torch.isinf(b))  # the same tokens removed (-inf)
        finite = torch.isfinite(b)
        assert (a[finite] - b[finite]).abs().max() <= 1e-4


def test_greedy_scores_and_logits_mean_what_they_mean_in_transformers(tiny):
    hf, ours, inputs = tiny
    options = dict(max_new_tokens=8, repetition_penalty=1.3, output_scores=True, output_logits=True)
    theirs = hf.generate(**inputs, **options, return_dict_in_generate=True, do_sample=False)
    out = ours.generate(**inputs, **options, return_dict_in_generate=True)
    assert torch.equal(out.sequences, theirs.sequences)
    assert_close_steps(out.scores, theirs.scores)  # after the repetition penalty
    assert_close_steps(out.logits, theirs.logits)  # raw: before it
    assert not torch.equal(out.scores[1], out.logits[1])
    # Without return_dict_in_generate both return the sequences tensor, whatever output_scores says.
    plain = ours.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"], **options)
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, hf.generate(**inputs, **options, do_sample=False))


def test_sampling_follows_torch_manual_seed_like_transformers(tiny):
    hf, ours, inputs = tiny
    options = dict(max_new_tokens=8, do_sample=True, temperature=0.8, top_k=20)
    torch.manual_seed(7)
    theirs = hf.generate(**inputs, **options, return_dict_in_generate=True, output_scores=True)
    torch.manual_seed(7)
    out = ours.generate(**inputs, **options, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(out.sequences, theirs.sequences)
    assert_close_steps(out.scores, theirs.scores)


def test_beam_search_logits_are_the_running_beams_raw_logits_like_transformers(tiny):
    hf, ours, inputs = tiny
    options = dict(max_new_tokens=5, num_beams=3, output_logits=True, output_scores=True)
    theirs = hf.generate(**inputs, **options, return_dict_in_generate=True, do_sample=False, early_stopping=False)
    out = ours.generate(**inputs, **options, return_dict_in_generate=True)
    assert torch.equal(out.sequences, theirs.sequences)
    assert_close_steps(out.logits, theirs.logits)


def test_random_after_without_a_generator_draws_from_torchs_global_generator(tiny):
    _, ours, inputs = tiny
    runs = {}
    for seed in (0, 0, 1, 2, 3):
        torch.manual_seed(seed)
        out = generate(ours, **inputs, max_new_tokens=6, entropy_decoding="random_after")
        runs.setdefault(seed, []).append(torch.stack(out.entropy_selected_layer_indices))  # (steps, B)
    assert torch.equal(runs[0][0], runs[0][1])  # the same seed, the same layers
    assert len({tuple(r[0].flatten().tolist()) for r in runs.values()}) > 1  # other seeds, other draws
    torch.manual_seed(0)
    unseeded_state = torch.get_rng_state()
    generate(ours, **inputs, max_new_tokens=6, entropy_decoding="random_after")
    assert not torch.equal(torch.get_rng_state(), unseeded_state)  # the draws moved the global generator


def test_records_read_as_attributes_and_a_missing_one_is_named(tiny):
    _, ours, inputs = tiny
    out = ours.generate(**inputs, max_new_tokens=4, entropy_decoding="trough", entropy_record_tokens=True,
                        return_dict_in_generate=True)
    assert out.entropy_selected_layer_indices == tuple(out.records["entropy_selected_layer_indices"])
    assert len(out.entropy_per_layer_token_ids) == 4 and out.entropy_per_layer_token_ids[0].shape == (2, 4)
    with pytest.raises(AttributeError, match="no attribute or record 'dola_jsd'.*entropy_per_layer"):
        out.dola_jsd


@pytest.mark.parametrize("call, message", [
    (lambda m, i: m.generate(i["input_ids"], input_ids=i["input_ids"]), "give the prompt once"),
    (lambda m, i: m.generate(input_ids=[[5, 6]]), "needs the prompt ids as a \\(B, T\\) tensor"),
    (lambda m, i: m.generate(**i, return_dict_in_generate="yes"), "return_dict_in_generate must be True or False"),
    (lambda m, i: m.generate(**i, output_logits=1), "output_logits must be True or False"),
    (lambda m, i: generate(m, **i, return_dict_in_generate=True), "always returns the whole GenerateOutput"),
])
def test_bad_calls_are_named(tiny, call, message):
    _, ours, inputs = tiny
    with pytest.raises((ValueError, TypeError), match=message):
        call(ours, inputs)


# ------------------------------------------------------------------ seed 000's usage example, on the default model

def trough(entropies: list[float]) -> int:
    """Seed 000, 4.2, in plain Python: from the last layer down while the entropy keeps falling (1-based)."""
    j = len(entropies) - 1
    while j > 0 and entropies[j - 1] < entropies[j]:
        j -= 1
    return j + 1


def test_seed_000_usage_example_runs_as_written(default_model_path):
    from model import load_pretrained as from_pretrained  # in place of GptOssForCausalLM.from_pretrained
    from tokenizer import load_tokenizer  # in place of AutoTokenizer.from_pretrained

    model = from_pretrained(default_model_path)
    tokenizer = load_tokenizer(default_model_path)
    inputs = tokenizer(["The capital of France is", "def fibonacci(n):"], return_tensors="pt")

    # --- seed 000, section 2.1, verbatim ---
    outputs = model.generate(
        **inputs,
        max_new_tokens=64,
        entropy_decoding="trough",       # 或 "random_after" / None
        entropy_record_tokens=True,      # 可选：记录各层 token 以便分析
        return_dict_in_generate=True,
    )
    # --- section 6: the fields, one per step ---
    N = model.config.num_hidden_layers
    steps = len(outputs.entropy_selected_layer_indices)
    new = outputs.sequences[:, inputs.input_ids.shape[1]:]
    assert steps == new.shape[1] and outputs.entropy_per_layer_token_ids[0].shape == (2, N)
    for t in range(steps):
        for row in range(2):
            if t > 0 and new[row, t - 1] == tokenizer.eos_token_id:
                continue  # a finished row only grows padding
            chosen = int(outputs.entropy_selected_layer_indices[t][row])
            assert chosen == trough(outputs.records["entropy_per_layer"][t][row].tolist())
            # greedy: the token decoded is the chosen layer's top token
            assert outputs.entropy_selected_token_ids[t][row] == outputs.entropy_per_layer_token_ids[t][row, chosen - 1]
    assert torch.equal(torch.stack(outputs.entropy_selected_token_ids, dim=1), new)

    # entropy_decoding=None: the plain model, token for token transformers' greedy
    plain = model.generate(**inputs, max_new_tokens=16, entropy_decoding=None)
    hf = AutoModelForCausalLM.from_pretrained(default_model_path, torch_dtype=torch.float32).eval()
    assert torch.equal(plain, hf.generate(**inputs, max_new_tokens=16, do_sample=False))
    assert torch.equal(generate(model, **inputs, max_new_tokens=16).sequences, plain)  # the function takes ** too
