"""Checkpoint loading: sharded files, dtype, and every way a checkpoint or config can be wrong."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers import save_tiny_llama
from model import CheckpointError, ConfigError, ModelConfig, load_pretrained
from model.fast_loading import map_file
from model.loading import read_safetensors


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


IDS = torch.tensor([[5, 9, 13, 40, 2, 77]])


def test_sharded_checkpoint_loads_and_matches_single_file(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    hf = save_tiny_llama(single)
    hf.save_pretrained(sharded, max_shard_size="20KB")  # transformers writes an index + several shards
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    # Equal up to float rounding: the weights sit at other memory offsets in the shards, and MKL's kernels pick
    # their blocking (hence summation order) by alignment.
    torch.testing.assert_close(logits(load_pretrained(single), IDS), logits(load_pretrained(sharded), IDS),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_mapped_tensors_equal_what_safetensors_reads(tmp_path, dtype):
    save_tiny_llama(tmp_path)
    path = tmp_path / "model.safetensors"
    save_file({name: t.to(dtype) for name, t in load_file(path).items()}, path)
    mapped, reference = map_file(path), safe_open(str(path), framework="pt")
    assert sorted(mapped) == sorted(reference.keys())
    for name, tensor in mapped.items():
        expected = reference.get_tensor(name)
        assert tensor.dtype == expected.dtype and torch.equal(tensor, expected), name


@pytest.mark.parametrize("read_file", [map_file, read_safetensors])
def test_each_reader_loads_exactly_the_stored_tensors(tmp_path, read_file):
    save_tiny_llama(tmp_path)
    model = load_pretrained(tmp_path, read_file=read_file)
    ours = model.state_dict()
    for name, stored in load_file(tmp_path / "model.safetensors").items():
        assert torch.equal(ours[name.removeprefix("model.")], stored), name


def test_a_tensor_at_an_unaligned_offset_is_read_correctly(tmp_path):
    """safetensors does not require alignment; a typed view cannot start mid-element, so that tensor is copied."""
    header = {"bytes": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "matrix": {"dtype": "F32", "shape": [2, 3], "data_offsets": [3, 27]}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "unaligned.safetensors"
    matrix = torch.tensor([[1.5, -2.0, 3.25], [0.0, 7.0, -1e-3]])
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes([7, 8, 9]) + matrix.numpy().tobytes())
    mapped, reference = map_file(path), safe_open(str(path), framework="pt")
    assert torch.equal(mapped["matrix"], reference.get_tensor("matrix")) and torch.equal(mapped["matrix"], matrix)
    assert mapped["bytes"].tolist() == [7, 8, 9]


def test_editing_a_loaded_weight_never_writes_the_checkpoint(tmp_path):
    """The fast path maps the file copy-on-write: gate_proj is stacked in place over the mapping (accelerated),
    and an in-place edit changes the model, not the file."""
    save_tiny_llama(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    from accel import accelerate

    model = accelerate(load_pretrained(tmp_path, read_file=map_file))
    with torch.no_grad():
        model.layers[0].mlp.gate_proj.weight.add_(1.0)
        model.embed_tokens.weight.zero_()
    assert model.layers[0].mlp.gate_up_proj.weight[0, 0] == model.layers[0].mlp.gate_proj.weight[0, 0]
    assert (tmp_path / "model.safetensors").read_bytes() == before


def test_dtype_argument_converts_weights(tmp_path):
    save_tiny_llama(tmp_path)
    fp32, bf16 = load_pretrained(tmp_path), load_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and fp32.dtype == torch.float32
    assert (logits(bf16, IDS).float() - logits(fp32, IDS)).abs().max() < 0.05


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nope")


def test_folder_without_weights(tmp_path):
    save_tiny_llama(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index.json"):
        load_pretrained(tmp_path)


def test_truncated_file(tmp_path):
    save_tiny_llama(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pretrained(tmp_path)


def test_corrupt_header(tmp_path):
    save_tiny_llama(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"not json at all, just garbage!!!"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pretrained(tmp_path)


def test_index_pointing_at_missing_shard(tmp_path):
    hf = save_tiny_llama(tmp_path / "a")
    hf.save_pretrained(tmp_path / "s", max_shard_size="20KB")
    shard = sorted((tmp_path / "s").glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"points at shard '{shard.name}', which is missing"):
        load_pretrained(tmp_path / "s")


def rewrite_tensors(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    save_tiny_llama(tmp_path)
    rewrite_tensors(tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1 tensor.*layers\.1\.mlp\.up_proj\.weight"):
        load_pretrained(tmp_path)


def test_unexpected_tensor_is_named(tmp_path):
    save_tiny_llama(tmp_path)
    rewrite_tensors(tmp_path, lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"does not use.*layers\.0\.extra\.weight"):
        load_pretrained(tmp_path)


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
    save_tiny_llama(tmp_path)
    rewrite_tensors(tmp_path, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(8, 32)}))
    with pytest.raises(CheckpointError, match=r"'layers\.0\.self_attn\.k_proj\.weight' has shape \[8, 32\].*\[16, 32\]"):
        load_pretrained(tmp_path)


def test_integer_tensor_is_refused(tmp_path):
    save_tiny_llama(tmp_path)
    rewrite_tensors(tmp_path, lambda t: t.update({"model.norm.weight": torch.ones(32, dtype=torch.int32)}))
    with pytest.raises(CheckpointError, match=r"'norm\.weight' is stored as I32"):
        load_pretrained(tmp_path)


def test_config_that_does_not_fit_the_weights(tmp_path):
    save_tiny_llama(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing .*layers\.2\..*does config.json belong"):
        load_pretrained(tmp_path)


def test_nan_weights_detected_on_request(tmp_path):
    save_tiny_llama(tmp_path)

    def poison(t):
        t["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")

    rewrite_tensors(tmp_path, poison)
    load_pretrained(tmp_path)  # not scanned by default: scanning reads every weight
    with pytest.raises(CheckpointError, match=r"'layers\.0\.mlp\.down_proj\.weight' contains NaN or inf"):
        load_pretrained(tmp_path, check_finite=True)


def test_tied_config_with_a_different_head_is_refused(tmp_path):
    save_tiny_llama(tmp_path, tie_word_embeddings=True)
    rewrite_tensors(tmp_path, lambda t: t.update({"lm_head.weight": torch.randn(97, 32)}))
    with pytest.raises(CheckpointError, match="lm_head.weight differs from embed_tokens.weight"):
        load_pretrained(tmp_path)


BASE = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


@pytest.mark.parametrize("change, message", [
    (dict(hidden_size=30), r"hidden_size \(30\) must be divisible by num_attention_heads \(4\)"),
    (dict(num_key_value_heads=3), r"num_attention_heads \(4\) must be divisible by num_key_value_heads \(3\)"),
    (dict(num_hidden_layers=-2), r"'num_hidden_layers' must be a positive integer, got -2"),
    (dict(vocab_size="100"), r"'vocab_size' must be a positive integer, got '100'"),
    (dict(rms_norm_eps=0), r"'rms_norm_eps' must be a positive number"),
    (dict(tie_word_embeddings="yes"), r"'tie_word_embeddings' must be true or false"),
    (dict(model_type="mamba"), r"'model_type' is 'mamba'"),
    (dict(hidden_act="gelu"), r"'hidden_act' is 'gelu'"),
    (dict(rope_scaling={"rope_type": "longrope"}), r"rope_scaling type 'longrope' is not supported"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), r"missing key\(s\): \['high_freq_factor'"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 0.5}), r"'factor' must be a number >= 1"),
    (dict(eos_token_id=100), r"'eos_token_id' = 100 is not a token id in \[0, vocab_size=100\)"),
])
def test_bad_config_values_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**BASE, **change})


def test_config_missing_required_key_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="missing the required key 'intermediate_size'"):
        ModelConfig.from_dict({k: v for k, v in BASE.items() if k != "intermediate_size"})
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        ModelConfig.from_json(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_json(tmp_path / "elsewhere")


def test_config_round_trips_unknown_keys():
    config = ModelConfig.from_dict({**BASE, "architectures": ["LlamaForCausalLM"], "my_note": 1})
    assert config.extra == {"architectures": ["LlamaForCausalLM"], "my_note": 1}
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.head_dim == 8 and config.num_key_value_heads == 4  # HF's defaults when absent

