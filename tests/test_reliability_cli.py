"""Reliability on the command line: the cases tests/test_cli.py leaves out, each one line on stderr with
exit code 2 (bad argument) or 1 (broken model files), nothing on stdout.

tests/test_cli.py covers the usual bad flags, an empty or over-long prompt, a truncated checkpoint, a bad
config, missing tokenizer files and Ctrl-C; here: non-finite numbers, a checkpoint that mixes dtypes (and
--dtype converting it), a non-finite config value, and tokenizer files that are JSON but wrong.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_cli import cli, run_main, tiny  # noqa: F401  (fixtures: the tiny chat model and the script's main)


def copy_with(tiny, tmp_path, name, edit):
    folder = tmp_path / name
    shutil.copytree(tiny[0], folder)
    edit(folder)
    return folder


def mixed_dtypes(folder):
    tensors = load_file(folder / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.bfloat16)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def edit_json(name, change):
    def edit(folder):
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**data, **change}))
    return edit


def json_list(folder):
    (folder / "tokenizer.json").write_text("[]")


BAD_FILES = [  # (folder edit, a piece of the message)
    (mixed_dtypes, "mixes floating-point dtypes ('embed_tokens.weight' is F32, 'norm.weight' is BF16)"),
    (edit_json("config.json", {"rope_theta": float("inf")}), "'rope_theta' must be a positive number, got inf"),
    (edit_json("tokenizer_config.json", {"eos_token": "<|nope|>"}), "name eos_token '<|nope|>', which is not in"),
    (json_list, "tokenizer.json holds a JSON list, not an object"),
]


@pytest.mark.parametrize("edit, message", BAD_FILES, ids=["mixed_dtypes", "rope_theta_inf", "eos_not_a_token",
                                                          "tokenizer_json_list"])
def test_broken_model_files_are_one_line_with_exit_code_1(tiny, cli, capsys, tmp_path, edit, message):
    folder = copy_with(tiny, tmp_path, "broken", edit)
    code, out, err = run_main(cli, capsys, "--model", str(folder), "--prompt", "hi", "--max-new-tokens", "2")
    assert (code, out) == (1, "") and err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_dtype_flag_loads_a_mixed_dtype_checkpoint(tiny, cli, capsys, tmp_path):
    folder = copy_with(tiny, tmp_path, "mixed", mixed_dtypes)
    code, out, err = run_main(cli, capsys, "--model", str(folder), "--prompt", "hi", "--max-new-tokens", "3",
                              "--dtype", "float32")
    assert code == 0 and out.strip(), err
    assert (tiny[1].model.norm.weight == 1).all()  # ones are exact in bf16: converted back, the model is unchanged
    _, reference, _ = run_main(cli, capsys, "--model", str(tiny[0]), "--prompt", "hi", "--max-new-tokens", "3")
    assert out == reference


@pytest.mark.parametrize("flags, message", [
    (["--do-sample", "--temperature", "nan"], "--temperature must be a number >= 0 (0 = greedy, 1 = unchanged), "
                                              "got nan (it must be finite)"),
    (["--do-sample", "--temperature", "inf"], "got inf (it must be finite)"),
    (["--repetition-penalty", "inf"], "--repetition-penalty must be a number > 0"),
    (["--num-beams", "2", "--length-penalty", "nan"], "--length-penalty must be a real number"),
    (["--do-sample", "--top-p", "nan"], "--top-p must be in (0, 1]"),
    (["--do-sample", "--min-p", "nan"], "--min-p must be in [0, 1]"),
])
def test_non_finite_numbers_are_one_line_with_exit_code_2(tiny, cli, capsys, flags, message):
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--prompt", "hi", *flags)
    assert (code, out) == (2, "") and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("template, code, message", [
    ("{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}x",
     2, "tokenizer_config.json refused these messages: System role not supported (change the messages"),
    ("{{ 'a' * 10**10 }}", 1, "tokenizer_config.json failed: it needs more than 96 MB of memory"),
    ("{% if add_generation_prompt %}{% endif %}", 1, "tokenizer_config.json rendered nothing"),
], ids=["refused", "hostile", "renders_nothing"])
def test_chat_template_errors_are_one_line(tiny, cli, capsys, tmp_path, template, code, message):
    folder = copy_with(tiny, tmp_path, "template", edit_json("tokenizer_config.json", {"chat_template": template}))
    got, out, err = run_main(cli, capsys, "--model", str(folder), "--prompt", "hi", "--system", "Be brief.")
    assert (got, out) == (code, "") and err.count("\n") == 1 and message in err, err
