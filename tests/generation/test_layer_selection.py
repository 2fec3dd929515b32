"""DoLa and entropy layer choice inside generate(): transformers 4.55.2, the degenerate cases, hand examples.

Tiny random LlamaForCausalLM checkpoints (initializer_range 0.2, so logits are spread and top tokens rarely
tie) are saved with save_pretrained and loaded with our load_pretrained; everything runs in float32.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
import transformers  # the oracle

from generation import generate, loop, stack_records
from generation.entropy import EntropyLayerChoice
from generation.scoring import continuation_log_probs
from generation.steps import StepContext
from model import load_pretrained


def tiny_pair(folder, num_hidden_layers: int, tie_word_embeddings: bool, seed: int = 0):
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=num_hidden_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2,
        tie_word_embeddings=tie_word_embeddings, bos_token_id=1, eos_token_id=2, pad_token_id=5)
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(folder)
    return hf, load_pretrained(folder)


@pytest.fixture(scope="module")
def untied8(tmp_path_factory):  # "low" = [0, 2], "high" = [4, 6]
    return tiny_pair(tmp_path_factory.mktemp("untied8"), 8, False)


@pytest.fixture(scope="module")
def tied6(tmp_path_factory):  # "low" = [2] (one layer: no score), "high" = [3, 5]
    return tiny_pair(tmp_path_factory.mktemp("tied6"), 6, True, seed=1)


def prompts(batch: int = 2, length: int = 6, seed: int = 3) -> torch.Tensor:
    return torch.randint(6, 96, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_dola(hf, ids, dola_layers, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf.generate(ids, do_sample=False, dola_layers=dola_layers, trust_remote_code=True,
                           pad_token_id=5, **options)


# --------------------------------------------------------------------- the transformers variant, exactly

@pytest.mark.parametrize("pair", ["untied8", "tied6"])
@pytest.mark.parametrize("dola_layers", ["low", "high", [1, 3, 4]])
def test_transformers_variant_equals_transformers_generate(request, pair, dola_layers):
    hf, ours = request.getfixturevalue(pair)
    ids = prompts()
    expected = hf_dola(hf, ids, dola_layers, max_new_tokens=10, eos_token_id=None)
    got = generate(ours, ids, max_new_tokens=10, eos_token_id=[], pad_token_id=5,
                   dola_layers=dola_layers, dola_variant="transformers")
    assert torch.equal(got.sequences, expected)


def test_transformers_variant_with_repetition_penalty_after_the_contrast(untied8):
    hf, ours = untied8
    ids = prompts(batch=1)
    expected = hf_dola(hf, ids, "high", max_new_tokens=12, repetition_penalty=1.3, eos_token_id=None)
    got = generate(ours, ids, max_new_tokens=12, eos_token_id=[], repetition_penalty=1.3,
                   dola_layers="high", dola_variant="transformers")
    assert torch.equal(got.sequences, expected)


# ------------------------------------------------------------------------------- degenerate cases

def test_alpha_one_dola_greedy_equals_plain_greedy(untied8):
    _, ours = untied8
    ids = prompts(batch=3)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding too
    plain = generate(ours, ids, mask, max_new_tokens=12, eos_token_id=[], repetition_penalty=1.2)
    dola = generate(ours, ids, mask, max_new_tokens=12, eos_token_id=[], repetition_penalty=1.2,
                    dola_layers="high", dola_alpha=1.0)
    assert torch.equal(dola.sequences, plain.sequences)


def test_uniform_premature_and_alpha_zero_reproduce_plain_decoding(untied8, monkeypatch):
    _, ours = untied8
    ids = prompts(batch=2)
    plain = generate(ours, ids, max_new_tokens=10, eos_token_id=[], output_scores=True)
    # Zero early-exit logits = a uniform q_M: the contrast is log q_N + const, so p_hat = q_N. The decode loop
    # gets them from the forward pass (one head matmul with the final logits); other callers from the model.
    monkeypatch.setattr(ours, "early_exit_logits", lambda hidden, layers, norm=True: torch.zeros(len(layers), 2, 96))
    with_early_exits = loop.final_and_early_exit_logits

    def uniform_early_exits(*args):
        logits, early = with_early_exits(*args)
        return logits, torch.zeros_like(early)

    monkeypatch.setattr(loop, "final_and_early_exit_logits", uniform_early_exits)
    dola = generate(ours, ids, max_new_tokens=10, eos_token_id=[], output_scores=True,
                    dola_layers=[2], dola_alpha=0.0)
    assert torch.equal(dola.sequences, plain.sequences)
    for p, d in zip(plain.scores, dola.scores):
        torch.testing.assert_close(d.softmax(-1), p.softmax(-1), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ DoLa records, beams

def test_dola_records_have_documented_shapes(untied8):
    _, ours = untied8
    out = generate(ours, prompts(batch=3), max_new_tokens=5, eos_token_id=[], dola_layers="bucket1")
    records = stack_records(out.records)
    layers = [4, 6]  # 8 layers: buckets (1, 3), (4, 6), (7, 7); the even layers of (4, 6) are 4 and 6
    assert records["dola_premature_layer"].shape == (5, 3)
    assert set(records["dola_premature_layer"].unique().tolist()) <= set(layers)
    assert records["dola_jsd"].shape == (5, 3, 2)
    assert ((records["dola_jsd"] >= 0) & (records["dola_jsd"] <= math.log(2) + 1e-6)).all()


def test_the_transformers_variant_records_its_score_under_its_own_name(untied8):
    """transformers' DoLa scores layers by 0.5 (KL(m || q_N) + KL(m || q_j)) averaged over the vocabulary, not by
    the JSD: the record says so. Recomputed here in float64 from the layers' early-exit logits (no norm)."""
    _, ours = untied8
    ids = prompts(batch=2)
    out = generate(ours, ids, max_new_tokens=1, eos_token_id=[], dola_layers=[2, 4], dola_variant="transformers")
    assert "dola_jsd" not in out.records and out.records["dola_layer_score"][0].shape == (2, 2)
    hidden = ours(ids, output_hidden_states=True, logits_to_keep=1).hidden_states
    final = ours(ids, logits_to_keep=1).logits[:, -1].double().log_softmax(-1)  # (B, V)
    for column, layer in enumerate([2, 4]):
        early = ours.lm_head(hidden[layer][:, -1]).double().log_softmax(-1)  # no final norm, as transformers
        m = 0.5 * (final.exp() + early.exp())
        kl = lambda log_q: (m * (m.log() - log_q)).mean(-1)  # noqa: E731  F.kl_div(log q, m, reduction="none").mean
        expected = 0.5 * (kl(final) + kl(early))
        torch.testing.assert_close(out.records["dola_layer_score"][0][:, column].double(), expected, rtol=1e-4, atol=1e-7)


def test_dola_beam_scores_equal_teacher_forced_dola_log_probs(untied8):
    _, ours = untied8
    ids = prompts(batch=2, seed=4)
    out = generate(ours, ids, max_new_tokens=6, eos_token_id=[], num_beams=3, num_return_sequences=3,
                   dola_layers="high")
    assert out.sequences.shape == (6, 12) and out.sequences_scores.shape == (6,)
    assert (out.sequences_scores.view(2, 3).diff(dim=1) <= 1e-6).all()  # best first
    assert stack_records(out.records)["dola_premature_layer"].shape[1] == 2 * 3  # per beam
    for row, score in zip(out.sequences, out.sequences_scores):
        prompt, new = row[:6].tolist(), row[6:].tolist()
        log_probs = continuation_log_probs(ours, prompt, [new], {"dola": {"dola_layers": "high"}})["dola"]
        assert score.item() == pytest.approx(log_probs.sum().item() / len(new), abs=1e-4)


def test_dola_composes_with_sampling_and_batches(tied6):
    _, ours = tied6
    ids = prompts(batch=2)
    runs = [generate(ours, ids, max_new_tokens=8, do_sample=True, top_k=20, temperature=0.8,
                     dola_layers="high", generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0].sequences, runs[1].sequences)


def test_dola_paper_runs_after_the_penalties(untied8):
    # no_repeat_ngram_size=1 bans every token already present; placed before DoLa, a banned token is -inf
    # in q_N, so it is outside V_head and can never come back through the contrast.
    _, ours = untied8
    ids = prompts(batch=2)
    out = generate(ours, ids, max_new_tokens=12, eos_token_id=[], no_repeat_ngram_size=1, dola_layers="low",
                   dola_alpha=0.0)
    for row in out.sequences.tolist():
        prompt, new = row[:6], row[6:]
        assert len(set(new)) == len(new) and not set(new) & set(prompt)


# --------------------------------------------------------------------------------- entropy, hand-computed

def table_model(widths: list[int], vocab: int = 8):
    """A stand-in model whose layer j (1..N) puts uniform mass on its first widths[j-1] tokens: H = log2(width)."""
    table = torch.full((len(widths), 1, vocab), -math.inf)
    for j, width in enumerate(widths):
        table[j, 0, :width] = 0.0
    model = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=len(widths)),
                            early_exit_logits=lambda hidden, layers: table[[j - 1 for j in layers]])
    return model, table


def run_entropy_step(widths, strategy, generator=None, record_tokens=True, hidden=None, consistency_alpha=None):
    model, table = table_model(widths)
    records = {}
    hidden_states = hidden if hidden is not None else (None,) * (len(widths) + 1)
    ctx = StepContext(torch.zeros(1, 3, dtype=torch.long), 3, table[-1], hidden_states, model, generator, 0, records)
    step = EntropyLayerChoice(strategy, consistency_alpha=consistency_alpha, record_tokens=record_tokens)
    return step(table[-1], ctx), records


def test_entropy_trough_hand_computed():
    # widths 4, 1, 2, 8 -> entropies 2, 0, 1, 3 bits for layers 1..4: from layer 4 the walk falls to 3 (1 bit)
    # and to 2 (0 bits), then rises at layer 1 (2 bits): the trough is layer 2.
    for record_tokens in (True, False):
        scores, records = run_entropy_step([4, 1, 2, 8], "trough", record_tokens=record_tokens)
        assert records["entropy_selected_layer_indices"][0].tolist() == [2]
        assert torch.equal(scores, torch.tensor([[0.0] + [-math.inf] * 7]))
    assert records == {"entropy_selected_layer_indices": [torch.tensor([2])]}  # the lazy walk records less
    _, records = run_entropy_step([4, 1, 2, 8], "trough")
    assert records["entropy_per_layer"][0].tolist() == [[2.0, 0.0, 1.0, 3.0]]
    assert records["entropy_per_layer_token_ids"][0].shape == (1, 4)


def test_consistency_score_moves_the_trough_hand_computed():
    # Entropies 2, 0, 1, 3 (layers 1..4); cos(h_j, h_4) = 1, 0, 1, 1. With alpha = 1.5 the cost H - 1.5 cos is
    # 0.5, 0, -0.5, 1.5: from layer 4 it falls to layer 3, then rises at layer 2: the trough is layer 3.
    along, across = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 2.0]]])
    hidden = (None, along, across, along, along)  # (B=1, 1, H=2) per layer; index 0 (embeddings) unused
    for record_tokens in (True, False):
        _, records = run_entropy_step([4, 1, 2, 8], "trough", hidden=hidden, consistency_alpha=1.5,
                                      record_tokens=record_tokens)
        assert records["entropy_selected_layer_indices"][0].tolist() == [3]


def test_entropy_random_after_draws_between_trough_and_last_layer():
    seen = set()
    for seed in range(40):
        _, records = run_entropy_step([4, 1, 2, 8], "random_after", torch.Generator().manual_seed(seed))
        seen.add(records["entropy_selected_layer_indices"][0].item())
    assert seen == {2, 3, 4}


def test_entropy_generate_records_and_lazy_walk_agree(untied8):
    _, ours = untied8
    ids = prompts(batch=2)
    full = generate(ours, ids, max_new_tokens=6, eos_token_id=[], entropy_decoding="trough",
                    entropy_record_tokens=True)
    lazy = generate(ours, ids, max_new_tokens=6, eos_token_id=[], entropy_decoding="trough")
    assert torch.equal(full.sequences, lazy.sequences)
    records = stack_records(full.records)
    assert records["entropy_selected_layer_indices"].shape == (6, 2)
    assert records["entropy_per_layer_token_ids"].shape == (6, 2, 8)
    assert records["entropy_per_layer"].shape == (6, 2, 8)
    assert torch.equal(records["entropy_selected_token_ids"].T, full.new_tokens)
    chosen = records["entropy_selected_layer_indices"] - 1  # greedy: the token is the chosen layer's top one
    assert torch.equal(records["entropy_per_layer_token_ids"].gather(2, chosen[..., None])[..., 0],
                       records["entropy_selected_token_ids"])


def test_entropy_steps_take_their_first_layers_from_the_forward_head_matmul(tmp_path, monkeypatch):
    """All layers (record_tokens) or the walk's first chunk of 8 come with the final logits (early_exit_layers):
    the step heads only what lies below that chunk itself, and chooses what it chose without the request."""
    _, ours = tiny_pair(tmp_path, 12, False, seed=2)  # N = 12: the first chunk is layers 4..11
    ids = prompts(batch=3)
    asked, original = [], ours.early_exit_logits
    monkeypatch.setattr(ours, "early_exit_logits", lambda hidden, layers: asked.append(list(layers))
                        or original(hidden, layers))
    heads = []
    hook = ours.lm_head.register_forward_hook(lambda module, args, out: heads.append(args[0].shape[0]))
    try:
        runs = {record: generate(ours, ids, max_new_tokens=4, eos_token_id=[], entropy_decoding="trough",
                                 entropy_record_tokens=record, repetition_penalty=1.3, do_sample=True, top_k=20,
                                 generator=torch.Generator().manual_seed(0))
                for record in (True, False)}
    finally:
        hook.remove()
    assert heads == [12] * 4 + [9] * 4  # (1 + 11) rows, then (1 + 8): prefill and 3 steps each
    assert all(max(layers) < 4 for layers in asked)  # only below the first chunk, when a walk went that deep
    assert torch.equal(runs[True].sequences, runs[False].sequences)  # the full table and the walk agree
    records = stack_records(runs[True].records)
    assert torch.equal(records["entropy_selected_layer_indices"],
                       stack_records(runs[False].records)["entropy_selected_layer_indices"])
    # The same step built without the model's N asks for nothing and heads every layer itself: same choices.
    requested = generate(ours, ids, max_new_tokens=4, eos_token_id=[], entropy_decoding="trough")
    itself = generate(ours, ids, max_new_tokens=4, eos_token_id=[], logits_steps=[EntropyLayerChoice()])
    assert EntropyLayerChoice().needs.early_exit_layers == ()
    assert torch.equal(requested.sequences, itself.sequences)
    assert torch.equal(stack_records(requested.records)["entropy_selected_layer_indices"],
                       stack_records(itself.records)["entropy_selected_layer_indices"])


def test_entropy_first_step_matches_transformers_hidden_states(untied8):
    hf, ours = untied8
    ids = prompts(batch=2)
    out = generate(ours, ids, max_new_tokens=1, eos_token_id=[], entropy_decoding="trough",
                   entropy_record_tokens=True, entropy_normalize=True)
    with torch.no_grad():
        hidden = hf(ids, output_hidden_states=True).hidden_states  # transformers: last slot already normed
        heads = [hf.lm_head(hf.model.norm(h[:, -1])) for h in hidden[1:-1]] + [hf.lm_head(hidden[-1][:, -1])]
    log_p = torch.stack(heads).log_softmax(-1)  # (8, B, V)
    entropy = -(log_p.exp() * log_p).sum(-1) / math.log(96)  # normalised: bits / log2 V = nats / ln V
    for b in range(2):
        j = 7
        while j > 0 and entropy[j - 1, b] < entropy[j, b]:
            j -= 1
        assert out.records["entropy_selected_layer_indices"][0][b].item() == j + 1
        torch.testing.assert_close(out.records["entropy_per_layer"][0][b], entropy[:, b], rtol=0, atol=1e-5)


def test_entropy_composes_with_sampling_and_beams(tied6):
    _, ours = tied6
    ids = prompts(batch=2)
    sampled = generate(ours, ids, max_new_tokens=5, do_sample=True, top_p=0.9, repetition_penalty=1.2,
                       entropy_decoding="random_after", generator=torch.Generator().manual_seed(0))
    assert sampled.sequences.shape == (2, 11)
    beams = generate(ours, ids, max_new_tokens=5, num_beams=2, eos_token_id=[], entropy_decoding="trough")
    assert beams.sequences.shape == (2, 11)
    assert stack_records(beams.records)["entropy_selected_layer_indices"].shape[1] == 4


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("options, message", [
    (dict(dola_layers="high", entropy_decoding="trough"), "use one of them"),
    (dict(dola_layers="top"), "dola_layers must be"),
    (dict(dola_layers=[9]), r"layer indices in 0\.\.7"),
    (dict(dola_layers="high", dola_alpha=2.0), r"dola_alpha must be in \[0, 1\]"),
    (dict(dola_layers="high", dola_variant="hf"), "dola_variant must be one of"),
    (dict(dola_layers="high", dola_variant="transformers", num_beams=2), "no DoLa beam search"),
    (dict(entropy_decoding="lowest"), "entropy_decoding must be one of"),
])
def test_bad_layer_selection_options_fail_before_any_forward(untied8, monkeypatch, options, message):
    _, ours = untied8

    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran before the options were checked")

    monkeypatch.setattr(ours, "forward", no_forward)
    with pytest.raises(ValueError, match=message):
        generate(ours, prompts(), max_new_tokens=3, **options)


# ------------------------------------------------------------------------------------- the default model

@pytest.fixture(scope="module")
def default_pair(default_model_path):
    hf = transformers.LlamaForCausalLM.from_pretrained(default_model_path, torch_dtype=torch.float32).eval()
    return hf, load_pretrained(default_model_path)


@pytest.mark.slow
@pytest.mark.parametrize("dola_layers", ["low", "high", [4, 12, 20, 28]])
def test_transformers_variant_equals_transformers_on_the_default_model(default_pair, dola_layers):
    hf, ours = default_pair
    ids = torch.tensor([[504, 3575, 282, 4649, 314]])  # "The capital of France is" in SmolLM2's vocabulary
    expected = hf_dola(hf, ids, dola_layers, max_new_tokens=6, eos_token_id=None)
    got = generate(ours, ids, max_new_tokens=6, eos_token_id=[], dola_layers=dola_layers,
                   dola_variant="transformers")
    assert torch.equal(got.sequences, expected)
