"""Reliability: broken checkpoints, configs and tokenizer files that tests/model/test_loading.py and
tests/tokenizer/test_tokenizer.py do not already cover. Each one must raise an error naming the problem and what to
do, before the weights are read; the one good outcome (mixed dtypes converted on request) is held to
transformers loading the same folder.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import copy_default_tokenizer, save_tiny_llama
from model import CheckpointError, ConfigError, ModelConfig, load_pretrained
from tokenizer import load_tokenizer

IDS = torch.tensor([[5, 9, 13, 40, 2, 77]])


def rewrite_tensors(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------- tensors of the wrong dtype
def to_bf16(name):
    return lambda tensors: tensors.update({name: tensors[name].to(torch.bfloat16)})


@pytest.mark.parametrize("name", ["model.layers.0.mlp.up_proj.weight", "model.norm.weight"])
def test_mixed_dtypes_are_named_and_converted_on_request(tmp_path, name):
    """One bf16 tensor in an fp32 checkpoint: a matrix used to fail inside the first matmul, a norm weight
    silently computed in mixed precision. Now both are refused, and dtype=... converts them like transformers."""
    from transformers import LlamaForCausalLM

    save_tiny_llama(tmp_path)
    rewrite_tensors(tmp_path, to_bf16(name))
    local = name.removeprefix("model.").replace(".", r"\.")
    with pytest.raises(CheckpointError, match=rf"mixes floating-point dtypes \('embed_tokens\.weight' is F32, "
                                              rf"'{local}' is BF16\); load it with dtype=torch\.float32"):
        load_pretrained(tmp_path)
    ours = load_pretrained(tmp_path, dtype=torch.float32)
    theirs = LlamaForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS).logits, theirs(IDS).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", torch.int8, torch.bool, 16])
def test_dtype_argument_must_be_a_floating_torch_dtype(tmp_path, dtype):
    save_tiny_llama(tmp_path)
    with pytest.raises(CheckpointError, match=r"dtype must be a floating-point torch\.dtype such as torch\.bfloat16"):
        load_pretrained(tmp_path, dtype=dtype)


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_infinite_weights_are_detected_on_request(tmp_path, value):
    save_tiny_llama(tmp_path)
    rewrite_tensors(tmp_path, lambda t: t["model.embed_tokens.weight"].__setitem__((3, 1), value))
    with pytest.raises(CheckpointError, match=r"'embed_tokens\.weight' contains NaN or inf values"):
        load_pretrained(tmp_path, dtype=torch.bfloat16, check_finite=True)  # checked after the conversion too


# --------------------------------------------------------------------------- broken sharded index
@pytest.fixture
def sharded(tmp_path):
    hf = save_tiny_llama(tmp_path / "single")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    return tmp_path / "sharded"


def test_index_that_lists_a_tensor_no_shard_holds(sharded):
    def add_phantom(index):
        first_shard = sorted(index["weight_map"].values())[0]
        index["weight_map"]["model.layers.0.extra.weight"] = first_shard

    edit_json(sharded / "model.safetensors.index.json", add_phantom)
    with pytest.raises(CheckpointError, match=r"the index lists tensors that no shard contains: "
                                              r"\['model\.layers\.0\.extra\.weight'\]"):
        load_pretrained(sharded)


@pytest.mark.parametrize("text", ["{not json", '{"metadata": {}}', '{"weight_map": 3}'])
def test_index_that_is_not_a_safetensors_index(sharded, text):
    (sharded / "model.safetensors.index.json").write_text(text)
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json is not a valid safetensors index"):
        load_pretrained(sharded)


# --------------------------------------------------------------------------- config values
BASE = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


@pytest.mark.parametrize("change, message", [
    (dict(rope_theta=float("inf")), r"'rope_theta' must be a positive number, got inf \(it must be finite\)"),
    (dict(rms_norm_eps=float("nan")), r"'rms_norm_eps' must be a positive number, got nan"),
    (dict(initializer_range="0.02"), r"'initializer_range' must be a positive number, got '0\.02'"),
    (dict(hidden_size=32.0), r"'hidden_size' must be a positive integer, got 32\.0"),
    (dict(intermediate_size="64"), r"'intermediate_size' must be a positive integer, got '64'"),
    (dict(max_position_embeddings=None), r"'max_position_embeddings' must be a positive integer, got None"),
    (dict(num_key_value_heads=0), r"'num_key_value_heads' must be a positive integer, got 0"),
    (dict(head_dim=7), r"head_dim \(7\) must be even: rotary embeddings rotate pairs of dimensions"),
    (dict(hidden_size=12), r"head_dim \(3\) must be even.*hidden_size / num_attention_heads"),
    (dict(eos_token_id=True), r"'eos_token_id' = True is not a token id"),
    (dict(bos_token_id=1.0), r"'bos_token_id' = 1\.0 is not a token id"),
    (dict(eos_token_id=[2, "3"]), r"'eos_token_id' = \[2, '3'\] is not a token id"),
    (dict(mlp_bias="false"), r"'mlp_bias' must be true or false, got 'false'"),
    (dict(rope_scaling={"rope_type": "linear", "factor": float("inf")}),
     r"rope_scaling 'factor' must be a positive number, got inf"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": "1", "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 64}),
     r"rope_scaling 'low_freq_factor' must be a positive number, got '1'"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0}),
     r"rope_scaling 'original_max_position_embeddings' must be a positive number, got 0"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": -32}),
     r"rope_scaling 'beta_fast' must be a positive number"),
])
def test_bad_config_values_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**BASE, **change})


def test_config_is_checked_before_the_weights_are_read(tmp_path):
    save_tiny_llama(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")  # would be a CheckpointError if read first
    edit_json(tmp_path / "config.json", lambda config: config.update(num_key_value_heads=3))
    with pytest.raises(ConfigError, match=r"num_attention_heads \(4\) must be divisible by num_key_value_heads \(3\)"):
        load_pretrained(tmp_path)


def test_config_json_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="a config must be a JSON object, got list"):
        ModelConfig.from_json(tmp_path)


# --------------------------------------------------------------------------- tokenizer files
@pytest.fixture
def tokenizer_copy(tmp_path):
    return copy_default_tokenizer(tmp_path)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_tokenizer_file_that_is_not_a_json_object(tokenizer_copy, name):
    (tokenizer_copy / name).write_text('["<|im_end|>"]')
    with pytest.raises(ValueError, match=rf"{name} holds a JSON list, not an object {{\.\.\.}}: it is not a "
                                         "tokenizer file"):
        load_tokenizer(tokenizer_copy)


@pytest.mark.parametrize("name", ["tokenizer_config.json", "special_tokens_map.json"])
def test_special_token_missing_from_the_vocabulary_is_named(tokenizer_copy, name):
    """Its id used to be silently None, so generation lost its end token without a word."""
    (tokenizer_copy / "tokenizer_config.json").unlink() if name == "special_tokens_map.json" else None
    edit_json(tokenizer_copy / name, lambda config: config.update(eos_token="<|end_of_turn|>"))
    with pytest.raises(ValueError, match=r"name eos_token '<\|end_of_turn\|>', which is not in the vocabulary or "
                                         r"the added tokens; fix tokenizer_config\.json"):
        load_tokenizer(tokenizer_copy)


def test_tokenizer_without_its_config_files_still_loads(tokenizer_copy):
    """tokenizer_config.json is optional: the vocabulary alone encodes like the full folder."""
    full = load_tokenizer(tokenizer_copy)
    (tokenizer_copy / "tokenizer_config.json").unlink()
    (tokenizer_copy / "special_tokens_map.json").unlink()
    bare = load_tokenizer(tokenizer_copy)
    text = "Hello <|im_start|>user\nwörld 123"
    assert bare.encode(text) == full.encode(text) and bare.eos_token_id is None and bare.chat_template is None
