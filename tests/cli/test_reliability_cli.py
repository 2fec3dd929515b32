"""Reliability on the command line: the cases tests/cli/test_cli.py leaves out, each one line on stderr with
exit code 2 (bad argument) or 1 (broken model files), nothing on stdout.

tests/cli/test_cli.py covers the usual bad flags, an empty or over-long prompt, a truncated checkpoint, a bad
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


# ------------------------------------------------------------------ issue 21: every error one line, the right code

@pytest.mark.parametrize("flags, message", [
    (["--num-beams", "2", "--length-penalty", "400", "--max-new-tokens", "8"],
     "--length-penalty 400 is too large for --max-new-tokens 8: length ** --length-penalty overflows; use a "
     "--length-penalty between -337 and 337"),
    (["--seed", str(2**70)], f"--seed must be in 0 .. 2**64 - 1 = {2**64 - 1}, got {2**70}"),
    (["--seed", "-1"], f"--seed must be in 0 .. 2**64 - 1 = {2**64 - 1}, got -1"),
    (["--device", "meta"], "--device meta holds shapes but no numbers"),
    (["--prompt", "caf\udcff"], "--prompt is not valid UTF-8 text (byte 0xff at position 3)"),
    (["--system", "\udcc3("], "--system is not valid UTF-8 text (byte 0xc3 at position 0)"),
], ids=["length_penalty_400", "seed_2_70", "seed_minus_1", "device_meta", "prompt_not_utf8", "system_not_utf8"])
def test_bad_values_are_one_line_with_exit_code_2(tiny, cli, capsys, flags, message):
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--prompt", "hi", *flags)
    assert (code, out) == (2, "") and err.count("\n") == 1 and message in err, err


def truncated_weights(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])


@pytest.mark.parametrize("flag", ["--profile", "--plot"])
def test_output_paths_are_checked_before_loading(tiny, cli, capsys, tmp_path, flag):
    broken = copy_with(tiny, tmp_path, "broken", truncated_weights)  # loading it would fail with exit code 1
    extra = ["--self-speculative", "1"] if flag == "--profile" else ["--dola-layers", "high"]
    for path, message in [(tmp_path, f"{flag} {tmp_path} is a folder: give a file name"),
                          (tmp_path / "no" / "x.json", f"the folder {tmp_path / 'no'} does not exist")]:
        code, out, err = run_main(cli, capsys, "--model", str(broken), "--prompt", "hi", flag, str(path),
                                  *(extra if flag == "--plot" else []))
        assert (code, out) == (2, "") and err.count("\n") == 1 and message in err, err


def test_closed_stdout_and_invalid_utf8_argv_in_a_real_process(tiny):
    import subprocess
    import sys

    from test_cli import SCRIPT

    closed = subprocess.run(f'"{sys.executable}" "{SCRIPT}" --prompt hi >&-', shell=True, capture_output=False,
                            stderr=subprocess.PIPE, text=True, timeout=120)
    assert closed.returncode == 2 and closed.stderr == "error: stdout is closed: run with the output going to a " \
                                                       "terminal, a file or a pipe\n", closed.stderr
    raw = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny[0]), "--prompt", b"caf\xff"],
                         capture_output=True, text=True, timeout=120)
    assert (raw.returncode, raw.stdout) == (2, "") and raw.stderr.count("\n") == 1, raw.stderr
    assert "--prompt is not valid UTF-8 text (byte 0xff at position 3)" in raw.stderr


def nan_in_the_final_norm(folder):
    tensors = load_file(folder / "model.safetensors")
    tensors["model.norm.weight"][3] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("flags", [[], ["--num-beams", "2"], ["--do-sample", "--seed", "0"],
                                   ["--self-speculative", "1"], ["--draft-model", "{tiny}", "--strategy", "entropy",
                                                                 "--threshold", "0"]],
                         ids=["greedy", "beams", "sampling", "speculative", "hybrid"])
def test_nan_weights_are_named_at_the_step_never_chosen(tiny, cli, capsys, tmp_path, flags):
    folder = copy_with(tiny, tmp_path, "nan", nan_in_the_final_norm)
    flags = [flag.format(tiny=tiny[0]) for flag in flags]  # hybrid: a healthy small model, the NaN large one
    code, out, err = run_main(cli, capsys, "--model", str(folder), "--prompt", "hi", "--max-new-tokens", "3", *flags)
    assert code == 1 and out.strip() == "" and err.count("\n") == 1, err
    assert "error: the model produced NaN logits at step 1: the weights or the temperature are not usable" in err


def test_a_temperature_that_overflows_is_named(tiny, cli, capsys):
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--prompt", "hi", "--do-sample",
                              "--temperature", "1e-45", "--top-k", "0", "--seed", "0", "--max-new-tokens", "2")
    assert code == 1 and err.count("\n") == 1, err
    assert "the logits steps turned finite logits into infinite scores at step 1" in err, err
