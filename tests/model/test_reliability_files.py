"""Hostile and broken checkpoint folders (model/checks.py): refused by name, before anything is allocated.

A config.json that does not describe its weights (10^8 layers, a head_dim of 2*10^9) is refused in under a
second with less than 100 MB of extra memory: each such case runs in its own process under an address-space
cap and a timeout, so a regression fails here instead of taking the machine down. Shard names stay in the
folder; an index that puts a tensor in the wrong shard, an unreadable file, a file given as the folder and a
config.json that is not UTF-8 or is nested too deeply each get one error that names the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import MEASURE_PRELUDE, copy_default_tokenizer, save_tiny_llama
from model import CheckpointError, ConfigError, load_pretrained
from model.checks import check_memory

ROOT = Path(__file__).resolve().parents[2]

MEASURE = MEASURE_PRELUDE + textwrap.dedent("""
    import torch
    from model import load_pretrained
    virtual, before = statm()
    resource.setrlimit(resource.RLIMIT_AS, (virtual + 2**31, virtual + 2**31))  # the safety net: 2 GB more
    start = time.perf_counter()
    try:
        load_pretrained(sys.argv[1])
        error = None
    except ValueError as err:
        error = f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    peak = peak_rss()
    print(json.dumps({"error": error, "seconds": seconds, "extra_mb": (peak - before) / 2**20}))
""")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    save_tiny_llama(folder)
    return folder


def copy_with_config(tiny, tmp_path, **change) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(tiny, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    return folder


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="measures memory through /proc (Linux)")
@pytest.mark.parametrize("change, message", [
    ({"num_hidden_layers": 10**8}, "config.json has num_hidden_layers=100000000 but the checkpoint holds 2 layers "
                                   "(missing layers.2.*)"),
    ({"head_dim": 2 * 10**8}, "num_attention_heads*head_dim (4*200000000) needs [800000000, 32]"),
    ({"head_dim": 2 * 10**9}, "num_attention_heads*head_dim (4*2000000000) needs [8000000000, 32]"),
    ({"num_hidden_layers": 1}, "holds 2 layers (layers.1.* and on are not used)"),
    ({"vocab_size": 10**9}, "tensor 'embed_tokens.weight' has shape [97, 32] in the checkpoint but config.json's "
                            "vocab_size needs [1000000000, 32]"),
], ids=["layers_1e8", "head_dim_2e8", "head_dim_2e9", "fewer_layers", "vocab_1e9"])
def test_hostile_config_is_refused_fast_and_small(tiny, tmp_path, change, message):
    folder = copy_with_config(tiny, tmp_path, **change)
    run = subprocess.run([sys.executable, "-c", MEASURE, str(folder)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["error"] is not None and result["error"].startswith("CheckpointError: "), result
    assert message in result["error"], result["error"]
    assert result["seconds"] < 1.0, result
    assert result["extra_mb"] < 100, result


def sharded(tiny, tmp_path) -> Path:
    from transformers import LlamaForCausalLM

    folder = tmp_path / "sharded"
    LlamaForCausalLM.from_pretrained(tiny).save_pretrained(folder, max_shard_size="20KB")
    return folder


def edit_index(folder: Path, edit) -> dict:
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    edit(index["weight_map"])
    path.write_text(json.dumps(index))
    return index


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/x.safetensors", "..", "", 7])
def test_index_shard_names_stay_in_the_folder(tiny, tmp_path, shard):
    folder = sharded(tiny, tmp_path)
    (tmp_path / "outside.safetensors").write_bytes((tiny / "model.safetensors").read_bytes())  # a real file there
    edit_index(folder, lambda weights: weights.update({"model.norm.weight": shard}))
    with pytest.raises(CheckpointError, match=re.escape(f"names the shard {shard!r}; a shard must be a plain file "
                                                        "name inside")):
        load_pretrained(folder)


def test_index_placing_a_tensor_in_the_wrong_shard(tiny, tmp_path):
    folder = sharded(tiny, tmp_path)
    shards = sorted({*json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values()})
    holder = {}

    def move(weights):
        holder["was"] = weights["model.norm.weight"]
        weights["model.norm.weight"] = next(s for s in shards if s != holder["was"])

    edit_index(folder, move)
    with pytest.raises(CheckpointError, match=rf"tensor 'model.norm.weight' is in .*, but it is in {holder['was']}"):
        load_pretrained(folder)


def test_file_given_as_the_folder(tiny):
    with pytest.raises(CheckpointError, match=r"model.safetensors is a file, not a folder: give the folder"):
        load_pretrained(tiny / "model.safetensors")


@pytest.mark.parametrize("text, message", [
    (b'{"vocab_size": 97, "name": "caf\xe9"}', r"config.json is not UTF-8 text \(byte 31\)"),
    (b"[" * 100000 + b"]" * 100000, "config.json is nested too deeply"),
])
def test_config_json_that_is_not_a_config_names_the_file(tiny, tmp_path, text, message):
    folder = tmp_path / "bad"
    shutil.copytree(tiny, folder)
    (folder / "config.json").write_bytes(text)
    with pytest.raises(ConfigError, match=message):
        load_pretrained(folder)


UNREADABLE = textwrap.dedent("""
    import os, sys
    from model import load_pretrained
    if os.getuid() == 0:
        os.setgid(65534)
        os.setuid(65534)  # root reads anything: drop to nobody (after the imports, which nobody may not read)
    try:
        load_pretrained(sys.argv[1])
    except ValueError as err:
        print(err)
""")


def test_unreadable_file_is_a_permission_problem_not_corruption(tiny):
    with tempfile.TemporaryDirectory() as parent:  # outside pytest's private (0700) tmp folder: nobody can enter
        folder = Path(parent) / "model"
        shutil.copytree(tiny, folder)
        os.chmod(parent, 0o755)
        os.chmod(folder, 0o755)
        os.chmod(folder / "model.safetensors", 0)
        run = subprocess.run([sys.executable, "-c", UNREADABLE, str(folder)], capture_output=True, text=True,
                             timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert f"{folder / 'model.safetensors'} cannot be read (permission denied)" in run.stdout, run.stdout + run.stderr


def test_weights_that_cannot_fit_in_memory_are_refused_with_the_figures(monkeypatch):
    import model.checks

    monkeypatch.setattr(model.checks, "available_memory", lambda device: 10 * 2**30)  # 10 GB free
    tensors = {"a": ((2**20, 1024), "BF16"), "b": ((1024,), "F32")}  # 2 GB stored as bf16, 4 KB as fp32
    check_memory(tensors, None, "cpu")  # in place: nothing copied
    check_memory(tensors, torch.float32, "cpu")  # a (2**30 elements) copied to 4 GB; b used in place
    check_memory({"a": ((2**30,), "F32")}, torch.float64, "cpu")  # 8 GB: fits
    with pytest.raises(CheckpointError, match=r"needs 16.0 GB for the weights in float64 on cpu, but only 10.0 GB"):
        check_memory({"a": ((2**31,), "F32")}, torch.float64, "cpu")


def test_file_given_as_the_model_folder_on_the_command_line(tiny, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_cli_files", ROOT / "scripts" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    code = module.main(["--model", str(tiny / "config.json"), "--prompt", "hi"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "") and err.count("\n") == 1, err
    assert "--model folder" in err and "config.json is a file, not a folder" in err, err


@pytest.mark.parametrize("name, text, message", [
    ("tokenizer_config.json", b'{"eos_token": "caf\xe9"}', r"tokenizer_config.json is not UTF-8 text \(byte 18\)"),
    ("tokenizer_config.json", b"[" * 100000 + b"]" * 100000, "tokenizer_config.json is nested too deeply"),
    ("tokenizer.json", b"{" * 3 + b"\xff", r"tokenizer.json is not UTF-8 text \(byte 3\)"),
    ("chat_template.jinja", b"{{ 'caf\xe9' }}", r"chat_template.jinja is not UTF-8 text \(byte 7\)"),
])
def test_tokenizer_files_that_are_not_text_name_the_file(tmp_path, name, text, message):
    from tokenizer import TokenizerFileError, load_tokenizer

    copy_default_tokenizer(tmp_path)
    (tmp_path / name).write_bytes(text)
    with pytest.raises(TokenizerFileError, match=message):
        load_tokenizer(tmp_path)
