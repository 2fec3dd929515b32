"""Qwen2 and Qwen3 checkpoints (model/config.py; the blocks in model/qwen.py), held to transformers 4.55.2."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers import Qwen2Config, Qwen3Config

from helpers import copy_default_tokenizer
from model import load_pretrained
from model.config import ConfigError, ModelConfig

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "generate.py"

HF_CONFIGS = {"qwen2": Qwen2Config, "qwen3": Qwen3Config}
SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2)


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
@pytest.mark.parametrize("keys", [
    {},  # every other key left to the defaults
    dict(num_key_value_heads=1, head_dim=16),
    dict(use_sliding_window=True, sliding_window=5, max_window_layers=2),
    dict(use_sliding_window=False, sliding_window=5, max_window_layers=2),  # the window is off
    dict(tie_word_embeddings=True, rope_theta=1e6, max_position_embeddings=64),
])
def test_a_config_file_means_what_it_means_to_transformers(tmp_path, model_type, keys):
    written = {"model_type": model_type, **SMALL, **keys}
    if model_type == "qwen2":
        written.pop("head_dim", None)  # Qwen2 has no head_dim key: hidden / heads
    (tmp_path / "config.json").write_text(json.dumps(written))
    ours = ModelConfig.from_json(tmp_path)
    theirs = HF_CONFIGS[model_type].from_pretrained(tmp_path)
    head_dim = getattr(theirs, "head_dim", theirs.hidden_size // theirs.num_attention_heads)
    assert ours.head_dim == head_dim
    for key in ("num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps", "tie_word_embeddings",
                "layer_types"):
        assert getattr(ours, key) == getattr(theirs, key), key
    if "sliding_attention" in ours.layer_types:
        assert ours.sliding_window == theirs.sliding_window


def test_qwen3_head_dim_stands_apart_from_hidden_over_heads():
    config = ModelConfig.from_dict({"model_type": "qwen3", **SMALL, "head_dim": 24})
    assert config.head_dim == 24 != config.hidden_size // config.num_attention_heads
    assert ModelConfig.from_dict({"model_type": "qwen3", **SMALL}).head_dim == Qwen3Config().head_dim == 128


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_absent_key_value_heads_mean_transformers_default_not_the_query_heads(model_type):
    written = {**SMALL, "model_type": model_type, "hidden_size": 64 * 8, "num_attention_heads": 64}
    del written["num_key_value_heads"]
    assert ModelConfig.from_dict(written).num_key_value_heads == HF_CONFIGS[model_type]().num_key_value_heads == 32


@pytest.mark.parametrize("change, message", [
    (dict(model_type="qwen2", attention_bias=True), "qwen2 attention has q/k/v biases and no o_proj bias"),
    (dict(model_type="qwen3", layer_types=["full_attention"] * 3), "must list one entry per layer"),
    (dict(model_type="qwen3", use_sliding_window=True, max_window_layers=None), "'max_window_layers' is null"),
    (dict(model_type="qwen2", max_window_layers=-1), "'max_window_layers' must be an integer >= 0"),
    (dict(model_type="qwen2", use_sliding_window="yes"), "'use_sliding_window' must be true or false"),
])
def test_bad_qwen_configs_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**SMALL, **change})


# ------------------------------------------------------------------ the models, against transformers

def save_tiny_qwen(folder, model_type: str, seed: int = 0, **overrides):
    """Save a random transformers Qwen2/Qwen3ForCausalLM (eager attention); return it (fp32, eval).

    Every parameter is redrawn (biases N(0, 0.5^2), norms 1 + N(0, 0.2^2), the rest N(0, 0.1^2)): transformers
    starts biases at 0 and norms at 1, where a missing bias or per-head norm would not show in the logits.
    """
    settings = dict(SMALL, num_hidden_layers=3, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                    pad_token_id=0, tie_word_embeddings=False)
    if model_type == "qwen3":
        settings["head_dim"] = 16  # not hidden_size / heads = 8
    settings.update(overrides)
    torch.manual_seed(seed)
    config = HF_CONFIGS[model_type](**settings)
    hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.2 * noise if "norm" in name else (0.5 if name.endswith("bias") else 0.1) * noise)
    hf.save_pretrained(folder)
    return hf


VARIANTS = {
    "qwen2": ("qwen2", {}),
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2_sliding": ("qwen2", dict(use_sliding_window=True, sliding_window=3, max_window_layers=1)),
    "qwen3": ("qwen3", {}),
    "qwen3_tied": ("qwen3", dict(tie_word_embeddings=True)),
    "qwen3_biases": ("qwen3", dict(attention_bias=True)),
}


def left_padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 97, (3, 9), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, :3], mask[2, :1] = 0, 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_greedy_match_transformers(tmp_path, variant):
    model_type, overrides = VARIANTS[variant]
    hf = save_tiny_qwen(tmp_path, model_type, **overrides)
    ours = load_pretrained(tmp_path)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        expected, got = hf(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits
    assert (got - expected)[mask.bool()].abs().max() <= 1e-4
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    assert torch.equal(ours.generate(ids, attention_mask=mask, max_new_tokens=10), theirs)


@pytest.mark.parametrize("model_type, weight", [("qwen2", "self_attn.k_proj.bias"),
                                                ("qwen3", "self_attn.q_norm.weight"),
                                                ("qwen3", "self_attn.k_norm.weight")])
def test_each_qwen_difference_shows_in_the_logits(tmp_path, model_type, weight):
    """The test above would catch a missing bias or per-head norm: changing one moves the logits."""
    save_tiny_qwen(tmp_path, model_type)
    ours = load_pretrained(tmp_path)
    ids, _ = left_padded_batch()
    with torch.no_grad():
        before = ours(ids).logits
        ours.get_parameter(f"layers.0.{weight}").fill_(1.0)
        assert (ours(ids).logits - before).abs().max() > 1e-2


def run_cli(argv: list[str]) -> int:
    """scripts/generate.py's main(argv), imported from its file."""
    spec = importlib.util.spec_from_file_location("generate_cli_qwen", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.main(argv)


def test_the_cli_takes_a_qwen3_folder(tmp_path, capsys):
    """--model with a tiny Qwen3 folder (the default model's tokenizer beside it): transformers' greedy text."""
    hf = save_tiny_qwen(tmp_path, "qwen3", vocab_size=49152, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    copy_default_tokenizer(tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    new = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
    code = run_cli(["--model", str(tmp_path), "--device", "cpu", "--no-chat", "--prompt", "Once upon a time",
                    "--max-new-tokens", "6"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == tokenizer.decode(new, skip_special_tokens=True) + "\n"


@pytest.mark.parametrize("variant", ["qwen2", "qwen3_tied", "qwen2_sliding"])
def test_the_accelerated_model_keeps_qwens_differences(tmp_path, variant):
    """accelerate() (what scripts/generate.py runs by default) leaves the biases and per-head norms in place."""
    from accel import accelerate

    model_type, overrides = VARIANTS[variant]
    hf = save_tiny_qwen(tmp_path, model_type, **overrides)
    fast = accelerate(load_pretrained(tmp_path))
    ids, mask = left_padded_batch(1)
    with torch.no_grad():
        expected, got = hf(ids, attention_mask=mask).logits, fast(ids, attention_mask=mask).logits
    assert (got - expected)[mask.bool()].abs().max() <= 1e-4
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(fast.generate(ids, attention_mask=mask, max_new_tokens=8), theirs)
