"""MXFP4 expert weights: decoding against transformers' convert_moe_packed_tensors and the OCP spec, and a
checkpoint in the released GPT-OSS layout (`*_blocks` / `*_scales` + quantization_config) loaded by both."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import transformers  # the oracle
from safetensors.torch import save_file
from transformers.integrations.mxfp4 import convert_moe_packed_tensors  # the oracle

from helpers import save_tiny_gpt_oss
from model import CheckpointError, load_pretrained
from model.mxfp4 import dequantize_expert_weight, dequantize_mxfp4

INT_VIEW = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}
QUANTIZATION_CONFIG = {"quant_method": "mxfp4", "modules_to_not_convert": [  # as in gpt-oss-20b's config.json
    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}


def random_mxfp4(shape: tuple[int, ...], generator: torch.Generator, scales: tuple[int, int] = (0, 256)):
    """blocks (*shape, 16) of any bytes, scales (*shape) in [lo, hi)."""
    blocks = torch.randint(0, 256, (*shape, 16), dtype=torch.uint8, generator=generator)
    return blocks, torch.randint(*scales, shape, dtype=torch.uint8, generator=generator)


def test_decoding_follows_the_spec_on_a_hand_made_block():
    blocks = torch.zeros(2, 16, dtype=torch.uint8)
    blocks[0, 0], blocks[0, 1] = 0x21, 0xF8  # codes low nibble first: 1, 2 then 8, 15
    blocks[1, 15] = 0x7D  # codes 13 (-3.0), 7 (+6.0)
    scales = torch.tensor([128, 124], dtype=torch.uint8)  # 2^1 and 2^-3
    values = dequantize_mxfp4(blocks, scales, torch.float32)  # (64,)
    assert values[:4].tolist() == [0.5 * 2, 1.0 * 2, -0.0, -6.0 * 2]
    assert values[4:32].abs().sum() == 0 and values[32:62].abs().sum() == 0
    assert values[62:].tolist() == [-3.0 / 8, 6.0 / 8]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_dequantization_equals_transformers_bit_for_bit(dtype):
    blocks, scales = random_mxfp4((3, 7, 5), torch.Generator().manual_seed(0))  # every scale byte, 0..255
    expected = convert_moe_packed_tensors(blocks, scales, dtype=dtype)  # (3, 7, 5 * 32)
    got = dequantize_mxfp4(blocks, scales, dtype)
    assert got.dtype == dtype and got.shape == expected.shape
    assert torch.equal(got.view(INT_VIEW[dtype]), expected.view(INT_VIEW[dtype]))  # the same bits, inf included


def test_expert_weight_is_transformers_transposed_parameter():
    blocks, scales = random_mxfp4((4, 48, 2), torch.Generator().manual_seed(1), scales=(110, 135))
    expected = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16).transpose(1, 2)  # as HF dequantize()
    got = dequantize_expert_weight(blocks, scales, torch.bfloat16)
    assert got.shape == (4, 64, 48) and torch.equal(got, expected)


def save_mxfp4_checkpoint(folder: Path, hf, generator: torch.Generator) -> None:
    """Replace the experts of `hf` by random MXFP4 weights (in place) and save them in the release layout."""
    state = dict(hf.state_dict())
    params = dict(hf.named_parameters())
    for name in [n for n in state if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        E, in_features, out_features = state.pop(name).shape
        blocks, scales = random_mxfp4((E, out_features, in_features // 32), generator, scales=(121, 127))
        state[name + "_blocks"], state[name + "_scales"] = blocks, scales
        with torch.no_grad():
            params[name].copy_(convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).transpose(1, 2))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": QUANTIZATION_CONFIG}))


@pytest.fixture
def mxfp4_folder(tmp_path):
    """(folder, hf model holding the same decoded weights) for a tiny GPT-OSS whose experts are MXFP4."""
    hf = save_tiny_gpt_oss(tmp_path, intermediate_size=32, num_local_experts=5, num_experts_per_tok=2)
    save_mxfp4_checkpoint(tmp_path, hf, torch.Generator().manual_seed(2))
    return tmp_path, hf


def test_mxfp4_checkpoint_loads_and_matches_transformers(mxfp4_folder):
    folder, hf = mxfp4_folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # transformers' own reading of the folder (on CPU it dequantizes the experts to bf16; exact values).
        hf_loaded = transformers.GptOssForCausalLM.from_pretrained(folder, torch_dtype=torch.float32,
                                                                   attn_implementation="eager").float().eval()
    ids = torch.randint(3, 97, (2, 11), generator=torch.Generator().manual_seed(3))
    ours = load_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        expected, reference = hf_loaded(ids).logits, hf(ids).logits
        got = ours(ids).logits
    assert torch.equal(expected, reference)  # our test checkpoint is what transformers reads
    assert (got - expected).abs().max() <= 1e-4
    as_saved = load_pretrained(folder)  # dtype None: experts decoded to the other weights' dtype (fp32 here)
    assert as_saved.layers[0].mlp.experts.down_proj.dtype == torch.float32
    assert torch.equal(as_saved.layers[1].mlp.experts.gate_up_proj, hf.model.layers[1].mlp.experts.gate_up_proj)


def rewrite(folder: Path, change) -> None:
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


BLOCKS = "model.layers.0.mlp.experts.down_proj_blocks"
SCALES = "model.layers.0.mlp.experts.down_proj_scales"


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop(SCALES), "but no 'layers.0.mlp.experts.down_proj_scales'"),
    (lambda s: s.pop(BLOCKS), "scales without blocks"),
    (lambda s: s.update({BLOCKS: s[BLOCKS].float()}), "must be uint8"),
    (lambda s: s.update({SCALES: s[SCALES][:, :-1].contiguous()}), "expected \\(E, out, G, 16\\)"),
    (lambda s: s.update({BLOCKS: s[BLOCKS][:, :-1].contiguous(), SCALES: s[SCALES][:, :-1].contiguous()}),
     "down_proj' has shape \\[5, 32, 31\\]"),
])
def test_broken_mxfp4_checkpoint_is_refused(mxfp4_folder, change, message):
    folder, _ = mxfp4_folder
    rewrite(folder, change)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(folder)


def test_other_quantization_methods_are_refused(mxfp4_folder):
    folder, _ = mxfp4_folder
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="only 'mxfp4'"):
        load_pretrained(folder)
