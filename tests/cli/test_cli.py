"""The command line, scripts/generate.py.

A tiny random LlamaForCausalLM written by transformers, with the default model's tokenizer files next to
it, stands in for a real model: what the CLI prints must equal transformers' generate() on the same
weights, prompt formatted by transformers' own tokenizer and chat template. Most runs call the script's
main() in this process (fast); a few run it as a real process, where a traceback or a wrong exit code
would show: --help, some bad inputs, Ctrl-C, and one end-to-end run on the default model.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers  # the oracle

from helpers import (TOKENIZER_FILES, copy_default_tokenizer, default_model_dir, read_until_printed, save_tiny_gpt_oss,
                     save_tiny_llama)


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "generate.py"
EOS = 2  # <|im_end|> in the SmolLM2 tokenizer, and the tiny model's eos_token_id
CONTEXT = 1024  # the tiny model's max_position_embeddings
SUMMARY = re.compile(r"^\[prompt \d+ tokens, (\d+) new tokens in [\d.]+ s \([\d.]+ tokens/s\), "
                     r"stop: ((?:eos|stop_string|max_new_tokens|interrupted)(?:, (?:eos|stop_string|max_new_tokens))*)"
                     r"(, seed \d+)?(.*)\]$")  # (new, stop, seed, the rest)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, hf model, hf tokenizer): random weights, the SmolLM2 tokenizer and chat template."""
    folder = tmp_path_factory.mktemp("tiny_chat")
    hf = save_tiny_llama(folder, vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                         initializer_range=0.2, bos_token_id=1, eos_token_id=EOS, pad_token_id=EOS)
    with torch.no_grad():
        hf.lm_head.weight[EOS] = 0.0  # logit 0 never wins greedily: every run lasts max_new_tokens
    hf.save_pretrained(folder)
    copy_default_tokenizer(folder)
    return folder, hf, transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_draft(tiny, tmp_path_factory):
    """(folder, hf model): another random model with the same vocabulary, as the small model."""
    folder = tmp_path_factory.mktemp("tiny_draft")
    hf = save_tiny_llama(folder, seed=1, vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=CONTEXT,
                         initializer_range=0.2, bos_token_id=1, eos_token_id=EOS, pad_token_id=EOS)
    with torch.no_grad():
        hf.lm_head.weight[EOS] = 0.0
    hf.save_pretrained(folder)
    return folder, hf


@pytest.fixture(scope="module")
def cli():
    """The script's main(argv) -> exit code, imported from its file."""
    spec = importlib.util.spec_from_file_location("generate_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.main


def run_main(cli, capsys, *args: str) -> tuple[int, str, str]:
    code = cli(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_process(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------ against transformers

def hf_generate(tiny, prompt: str, chat: bool = True, system: str | None = None, seed: int | None = None,
                model=None, **options) -> tuple[list[str], torch.Tensor]:
    """transformers' output texts for the prompt, formatted by its own tokenizer and template."""
    _, hf, hf_tok = tiny
    hf = model or hf
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    else:
        ids = hf_tok(prompt, return_tensors="pt").input_ids
    if seed is not None:
        torch.manual_seed(seed)  # transformers samples from the global RNG; --seed seeds the same stream
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=EOS, eos_token_id=EOS,
                          trust_remote_code=True, **options)
    new = out[:, ids.shape[1]:]
    return [hf_tok.decode(row, skip_special_tokens=True) for row in new], new


CASES = {
    "greedy_chat": ([], {}),
    "plain_text": (["--no-chat"], {"chat": False}),
    "system_message": (["--system", "Answer briefly."], {"system": "Answer briefly."}),
    "sampling": (["--do-sample", "--temperature", "0.8", "--top-k", "40", "--top-p", "0.9", "--seed", "3"],
                 {"do_sample": True, "temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 3}),
    "min_p": (["--do-sample", "--min-p", "0.05", "--seed", "5"], {"do_sample": True, "min_p": 0.05, "top_k": 0,
                                                                   "seed": 5}),
    "penalties": (["--repetition-penalty", "1.3", "--no-repeat-ngram-size", "2"],
                  {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}),
    "beam_search": (["--num-beams", "3", "--length-penalty", "0.5", "--early-stopping"],
                    {"num_beams": 3, "length_penalty": 0.5, "early_stopping": True}),
    "dola_transformers": (["--dola-layers", "high", "--dola-variant", "transformers"], {"dola_layers": "high"}),
    "row_major_layout": (["--weight-layout", "row_major"], {}),
    "column_major_beams": (["--num-beams", "3", "--weight-layout", "column_major"], {"num_beams": 3}),
    "dola_column_major_blocks": (["--dola-layers", "high", "--dola-variant", "transformers", "--weight-layout",
                                  "column_major_blocks"], {"dola_layers": "high"}),
    "compiled_step": (["--compile"], {}),
    "compiled_beams": (["--compile", "--num-beams", "3"], {"num_beams": 3}),
    "contrastive": (["--penalty-alpha", "0.6", "--top-k", "4"], {"penalty_alpha": 0.6, "top_k": 4}),
    "typical_eta": (["--do-sample", "--typical-p", "0.8", "--eta-cutoff", "0.001", "--seed", "2"],
                    {"do_sample": True, "typical_p": 0.8, "eta_cutoff": 0.001, "top_k": 0, "seed": 2}),
    "bad_words_bias": (["--bad-words-ids", "[[11], [12, 13]]", "--sequence-bias", "[[[40], 2.5]]"],
                       {"bad_words_ids": [[11], [12, 13]], "sequence_bias": [[[40], 2.5]]}),
}


def test_show_logprobs_prints_each_tokens_log_probability_as_transformers(tiny, cli, capsys):
    """--show-logprobs --top-logprobs 2: after the text, one line per token: the token, log p (transformers'
    compute_transition_scores on the same weights), then the 2 best alternatives."""
    expected, new = hf_generate(tiny, "Tell me a story.", max_new_tokens=5)
    _, hf, hf_tok = tiny
    messages = [{"role": "user", "content": "Tell me a story."}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False, pad_token_id=EOS,
                      eos_token_id=EOS, return_dict_in_generate=True, output_scores=True)
    reference = hf.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
    code, text, err = run_main(cli, capsys, "--model", str(tiny[0]), "--device", "cpu", "--prompt",
                               "Tell me a story.", "--max-new-tokens", "5", "--show-logprobs", "--top-logprobs", "2")
    assert code == 0, err
    head, table = text.split("--- log-probabilities ---\n")
    assert head == expected[0] + "\n"
    rows = [row.split("\t") for row in table.splitlines()]
    assert len(rows) == 5
    for (value, shown, alternatives), token, logprob in zip(rows, new[0].tolist(), reference.tolist()):
        assert shown == repr(hf_tok.decode([token])) and abs(float(value) - logprob) < 1e-3
        best = alternatives.split("  ")
        assert len(best) == 2 and best[0] == f"{shown}={float(value):.4f}"  # greedy: the chosen token is the best


@pytest.mark.parametrize("case", CASES)
def test_output_equals_transformers(tiny, cli, capsys, case):
    flags, options = CASES[case]
    options = {"chat": True, **options}
    expected, _ = hf_generate(tiny, "Tell me a story.", max_new_tokens=8, **options)
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--device", "cpu", "--prompt",
                              "Tell me a story.", "--max-new-tokens", "8", *flags)
    assert code == 0, err
    assert out == expected[0] + "\n"
    match = SUMMARY.match(err.strip().splitlines()[-1])
    assert match and match.group(1) == "8" and match.group(2) == "max_new_tokens", err
    assert (match.group(3) is not None) == options.get("do_sample", False)  # the seed is shown when sampling


def test_int8_output_equals_transformers_on_the_dequantized_weights(tiny, cli, capsys):
    """--int8 --dtype float32: the int8 weights multiplied in float32, against transformers given the same weights
    (scale * q from accel/quantize.py's rounding, dequantized here in float64)."""
    from accel.quantize import quantize_int8_rows

    reference = copy.deepcopy(tiny[1])
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.Linear):
                q, scale = quantize_int8_rows(module.weight)
                module.weight.copy_(q.double() * scale.double()[:, None])
    expected, _ = hf_generate(tiny, "Tell me a story.", model=reference, max_new_tokens=8)
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--device", "cpu", "--prompt", "Tell me a story.",
                              "--max-new-tokens", "8", "--int8", "--dtype", "float32")
    assert code == 0, err
    assert out == expected[0] + "\n"


@pytest.mark.parametrize("flags, with_kernel, without_kernel", [
    ([], "row_major", "column_major"), (["--do-sample"], "row_major", "column_major"),
    (["--num-beams", "2"], "row_major", "row_major"),
    (["--dola-layers", "high"], "packed_head", "column_major_blocks"),
    (["--entropy-decoding", "trough"], "packed_head", "column_major_blocks"),
    (["--dola-layers", "high", "--num-beams", "2"], "row_major", "row_major"),
    (["--self-speculative", "4"], "row_major", "row_major"),
    (["--int8", "--dtype", "float32"], "row_major", "row_major"),
    (["--num-beams", "2", "--weight-layout", "column_major"], "column_major", "column_major"),
])
def test_auto_weight_layout_follows_the_rows_of_the_products(cli, monkeypatch, flags, with_kernel, without_kernel):
    """One-row products: row-major where the one-row kernel beats MKL in float32 (accel/matvec.cpp), column-major
    MKL otherwise (no kernel, or an Intel CPU)."""
    import accel.linear

    module = sys.modules["generate_cli"]
    args = module.build_parser().parse_args(["--prompt", "hi", *flags])
    for vendor, kernel, layout in (("AuthenticAMD", True, with_kernel), ("AuthenticAMD", False, without_kernel),
                                   ("GenuineIntel", True, without_kernel)):
        monkeypatch.setattr(accel.linear, "cpu_vendor", lambda: vendor)
        monkeypatch.setattr(accel.linear, "matvec_available", lambda: kernel)
        assert module.choose_weight_layout(args) == layout


# ------------------------------------------------------------------- two models, profiles and plots

def test_speculative_decoding_prints_the_targets_greedy_text(tiny, tiny_draft, cli, capsys):
    expected, _ = hf_generate(tiny, "Tell me a story.", max_new_tokens=8)
    for flags in (["--draft-model", str(tiny_draft[0]), "--num-draft-tokens", "3"], ["--self-speculative", "1"]):
        code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--device", "cpu", "--prompt",
                                  "Tell me a story.", "--max-new-tokens", "8", *flags)
        assert code == 0, err
        assert out == expected[0] + "\n"
        match = SUMMARY.match(err.strip())
        assert match.group(1, 2) == ("8", "max_new_tokens") and re.fullmatch(r", accepted \d+ of \d+ drafts",
                                                                             match.group(4)), err


@pytest.mark.parametrize("threshold, writer", [("1e9", "small"), ("-1e9", "large")])
def test_routing_threshold_decides_which_model_writes(tiny, tiny_draft, cli, capsys, tmp_path, threshold, writer):
    """Entropy routing: above any threshold nothing is routed (the small model writes everything), below any
    threshold everything is; the text is then that model's greedy text by transformers."""
    expected, ids = hf_generate(tiny, "Tell me a story.", max_new_tokens=8,
                                model=tiny_draft[1] if writer == "small" else None)
    profile = tmp_path / "profile.json"
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--draft-model", str(tiny_draft[0]),
                              "--device", "cpu", "--prompt", "Tell me a story.", "--max-new-tokens", "8",
                              "--strategy", "entropy", f"--threshold={threshold}", "--profile", str(profile))
    assert code == 0, err
    assert out == expected[0] + "\n"
    large = 0 if writer == "small" else 8
    # (a random model's entropy barely varies: a warning line may come before the summary)
    summary = SUMMARY.match(err.strip().splitlines()[-1])
    assert summary.group(4) == f", large model chose {large} of 8 tokens, wrote {profile}"
    tokens = json.loads(profile.read_text())["tokens"]
    assert [t["token_id"] for t in tokens] == ids[0].tolist()
    assert [t["model_used"] for t in tokens] == ["slm" if writer == "small" else "llm"] * 8


@pytest.mark.parametrize("flags", [["--entropy-decoding", "trough"], ["--profile", "p.json"]])
def test_plot_writes_a_png(tiny, cli, capsys, tmp_path, flags):
    flags = [str(tmp_path / f) if f.endswith(".json") else f for f in flags]
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--device", "cpu", "--prompt", "Hi",
                              "--max-new-tokens", "5", *flags, "--plot", str(tmp_path / "figure.png"))
    assert code == 0, err
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the last line: the first entropy run on a machine may print that it compiles the entropy kernel before it
    assert SUMMARY.match(err.strip().splitlines()[-1]).group(4).endswith(f"{tmp_path / 'figure.png'}"), err


def test_several_beam_sequences_are_printed_in_order(tiny, cli, capsys):
    expected, _ = hf_generate(tiny, "Name a colour.", max_new_tokens=4, num_beams=3, num_return_sequences=3)
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--device", "cpu", "--prompt", "Name a colour.",
                              "--max-new-tokens", "4", "--num-beams", "3", "--num-return-sequences", "3")
    assert code == 0, err
    headers = re.findall(r"^--- sequence (\d) of 3, score -?[\d.]+ ---$", out, flags=re.M)
    texts = [part.strip("\n") for part in re.split(r"^--- sequence \d of 3, score -?[\d.]+ ---\n", out, flags=re.M)[1:]]
    assert headers == ["1", "2", "3"] and texts == expected
    assert SUMMARY.match(err.strip()).group(1) == "12"  # 3 sequences of 4 tokens


def test_stop_string_ends_the_text_where_it_first_appears(tiny, cli, capsys):
    texts, new = hf_generate(tiny, "Say something.", max_new_tokens=12)
    _, _, hf_tok = tiny
    pieces = [hf_tok.decode(new[0, :n]) for n in range(1, 13)]
    stop = next(word for word in texts[0].split()[2:] if word.isascii() and word.isalpha())[:3]  # a few tokens in
    end = next(n for n, text in enumerate(pieces, 1) if stop in text)
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--device", "cpu", "--prompt", "Say something.",
                              "--max-new-tokens", "12", "--stop", "NEVER-THERE", "--stop", stop)
    assert code == 0, err
    assert out == pieces[end - 1] + "\n"
    assert SUMMARY.match(err.strip()).group(1, 2) == (str(end), "stop_string")


# ------------------------------------------------------------------------------------------- bad input

def broken_checkpoint(tiny, tmp_path) -> Path:
    """The tiny folder with its safetensors file cut in half."""
    folder = tmp_path / "broken"
    shutil.copytree(tiny[0], folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return folder


def bad_config(tiny, tmp_path) -> Path:
    folder = tmp_path / "bad_config"
    shutil.copytree(tiny[0], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 3}))  # 4 heads: no GQA split
    return folder


def gpt_oss(tiny, tmp_path) -> Path:
    save_tiny_gpt_oss(tmp_path / "gpt_oss")
    return tmp_path / "gpt_oss"


def no_tokenizer(tiny, tmp_path) -> Path:
    folder = tmp_path / "no_tokenizer"
    shutil.copytree(tiny[0], folder)
    for name in TOKENIZER_FILES:
        (folder / name).unlink()
    return folder


MODEL = object()  # stands for the tiny model's folder in the argument lists below
BAD_INPUT = [  # (arguments, exit code, a piece of the message)
    (["--prompt", "  \n"], 2, "the prompt is empty"),
    (["--prompt", "hi", "--model", "/no/such/folder"], 2, "model folder /no/such/folder does not exist"),
    (["--model", MODEL], 2, "the following arguments are required: --prompt"),
    (["--prompt", "word " * (CONTEXT + 10)], 2, "context window (max_position_embeddings) is 1024 tokens"),
    (["--prompt", "hi", "--max-new-tokens", "2000"], 2, "use --max-new-tokens"),
    (["--prompt", "hi", "--max-new-tokens", "0"], 2, "--max-new-tokens must be an integer >= 1"),
    (["--prompt", "hi", "--do-sample", "--top-p", "1.5"], 2, "--top-p must be in (0, 1]"),
    (["--prompt", "hi", "--do-sample", "--temperature", "-1"], 2, "--temperature must be a number >= 0"),
    (["--prompt", "hi", "--temperature", "0.7", "--top-k", "5"], 2, "--temperature, --top-k only shape"),
    (["--prompt", "hi", "--top-k", "many"], 2, "invalid int value: 'many'"),
    (["--prompt", "hi", "--repetition-penalty", "0"], 2, "--repetition-penalty must be a number > 0"),
    (["--prompt", "hi", "--num-beams", "2", "--num-return-sequences", "3"], 2,
     "--num-return-sequences (3) must be <= --num-beams (2)"),
    (["--prompt", "hi", "--num-return-sequences", "2"], 2, "needs --do-sample"),
    (["--prompt", "hi", "--early-stopping", "sometimes"], 2, "is not true, false or never"),
    (["--prompt", "hi", "--dtype", "int8"], 2, "invalid choice: 'int8'"),
    (["--prompt", "hi", "--device", "toaster"], 2, "--device 'toaster' is not a device name"),
    (["--prompt", "hi", "--stop", ""], 2, "--stop needs a non-empty text"),
    (["--prompt", "hi", "--no-chat", "--system", "Be kind."], 2, "--system needs chat formatting"),
    (["--prompt", "hi", "--dola-layers", "high", "--entropy-decoding", "trough"], 2, "use one of them"),
    (["--prompt", "hi", "--dola-layers", "1,7"], 2, "--dola-layers"),
    (["--prompt", "hi", "--dola-alpha", "2", "--dola-layers", "high"], 2, "--dola-alpha must be in [0, 1]"),
    (["--prompt", "hi", "--entropy-decoding", "trough", "--entropy-consistency-alpha", "-1"], 2,
     "--entropy-consistency-alpha must be a finite number >= 0"),
    (["--prompt", "hi", "--threshold", "2"], 2, "--threshold belongs to --strategy entropy or uncertainty"),
    (["--prompt", "hi", "--strategy", "entropy"], 2, "--strategy entropy needs --draft-model"),
    (["--prompt", "hi", "--strategy", "speculative"], 2, "needs one draft: --draft-model PATH or --self-speculative K"),
    (["--prompt", "hi", "--self-speculative", "2"], 2, "K must be in 1..1 (the model has 2 layers)"),
    (["--prompt", "hi", "--draft-model", "/no/draft"], 2, "--draft-model folder /no/draft does not exist"),
    (["--prompt", "hi", "--self-speculative", "1", "--num-beams", "2"], 2, "produce one sequence"),
    (["--prompt", "hi", "--plot", "x.png"], 2, "--plot draws layer records or a profile"),
    (["--prompt", "hi", "--profile", "/no/dir/p.json"], 2, "the folder /no/dir does not exist"),
    (["--prompt", "hi", "--threads", "0"], 2, "--threads must be >= 1"),
    (["--prompt", "hi", "--compile", "--dola-layers", "high"], 2, "a step here reads every layer's hidden state"),
    (["--prompt", "hi", "--compile", "--self-speculative", "1"], 2,
     "speculative decoding and hybrid routing run their own"),
    (["--prompt", "hi", "--penalty-alpha", "0.6"], 2,
     "contrastive search) re-ranks the --top-k most likely tokens: give --top-k > 1"),
    (["--prompt", "hi", "--num-beams", "2", "--show-logprobs"], 2,
     "--show-logprobs / --top-logprobs are per chosen token"),
    (["--prompt", "hi", "--stop-regex", "a(b"], 2, "--stop-regex must be a valid, non-empty regular expression"),
    (["--prompt", "hi", "--bad-words-ids", "[[1,"], 2, "is not valid JSON"),
    (["--prompt", "hi", "--frequency-penalty", "5"], 2, "--frequency-penalty must be a number in [-2, 2]"),
    (["--prompt", "hi", "--model", broken_checkpoint], 1, "not a readable safetensors file"),
    (["--prompt", "hi", "--model", bad_config], 1, "must be divisible by num_key_value_heads"),
    (["--prompt", "hi", "--model", no_tokenizer], 1, "tokenizer"),
    (["--prompt", "hi", "--model", gpt_oss, "--int8"], 2, "--int8 supports LLaMA-style models"),
]


def arguments(args: list, tiny, tmp_path) -> list[str]:
    """Fill in the model folder: MODEL, a folder builder, or (if no --model is given) the tiny model."""
    out = [str(tiny[0]) if a is MODEL else str(a(tiny, tmp_path)) if callable(a) else a for a in args]
    return out if "--model" in out else ["--model", str(tiny[0]), *out]


@pytest.mark.parametrize("args, code, message", BAD_INPUT, ids=[str(i) for i in range(len(BAD_INPUT))])
def test_bad_input_is_one_line_on_stderr(tiny, cli, capsys, tmp_path, args, code, message):
    got_code, out, err = run_main(cli, capsys, *arguments(args, tiny, tmp_path))
    assert got_code == code, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_compile_without_a_cpp_compiler_is_one_line_naming_the_flag(tiny, cli, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--prompt", "hi", "--compile")
    assert code == 2 and out == ""
    assert err.splitlines() == ["error: --compile on the CPU needs a C++ compiler (the compiled step is generated C++ "
                                "code): install g++ or leave --compile off"]


@pytest.mark.parametrize("index", [1, 13, -4])  # a missing folder, a bad value, a broken checkpoint
def test_bad_input_in_a_real_process_has_no_traceback(tiny, tmp_path, index):
    args, code, message = BAD_INPUT[index]
    result = run_process(*arguments(args, tiny, tmp_path))
    assert result.returncode == code
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_help_lists_every_option_with_examples():
    result = run_process("--help", timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    for flag in ["--prompt", "--model", "--no-chat", "--system", "--max-new-tokens", "--seed", "--dtype", "--device",
                 "--do-sample", "--temperature", "--top-k", "--top-p", "--min-p", "--repetition-penalty",
                 "--no-repeat-ngram-size", "--num-beams", "--length-penalty", "--early-stopping",
                 "--num-return-sequences", "--stop", "--dola-layers", "--dola-variant", "--dola-alpha",
                 "--entropy-decoding", "--entropy-normalize", "--entropy-consistency-alpha", "--plot",
                 "--draft-model", "--self-speculative", "--strategy", "--num-draft-tokens", "--threshold",
                 "--profile", "--threads", "--compile", "--int8", "--typical-p", "--epsilon-cutoff", "--eta-cutoff",
                 "--penalty-alpha", "--min-new-tokens", "--bad-words-ids", "--sequence-bias", "--frequency-penalty",
                 "--presence-penalty", "--stop-regex", "--stop-on-json", "--max-time", "--show-logprobs",
                 "--top-logprobs", "--entropy-record-tokens"]:
        assert re.search(rf"^\s+{flag}\b", result.stdout, flags=re.M), f"{flag} is not listed"
    from generation.options import option_fields

    for f in option_fields():  # every option of generate(): a flag of the same name, or --help says why not
        if f.metadata["cli"] is not None:
            assert re.search(rf"^\s+--{f.name.replace('_', '-')}\b", result.stdout, flags=re.M), f.name
        else:
            assert f.metadata["api_only"] and re.search(rf"^\s+{f.name}: ", result.stdout, flags=re.M), f.name
    examples = result.stdout.split("examples:")[1]
    assert examples.count("scripts/generate.py --prompt") >= 5
    assert "stop: eos]" in examples and "Exit codes" in examples


# --------------------------------------------------------------------------------------------- Ctrl-C

def test_ctrl_c_keeps_the_printed_text_and_exits_130(tiny):
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--model", str(tiny[0]), "--device", "cpu",
                                "--prompt", "Tell me a long story.", "--max-new-tokens", "900"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    printed, reader = read_until_printed(process)
    seen = bytes(printed)
    assert seen, "nothing was printed"
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=60)
    reader.join(timeout=10)
    err = process.stderr.read().decode()
    assert code == 130, err
    assert bytes(printed).startswith(seen) and bytes(printed).endswith(b"\n")
    assert "Traceback" not in err
    match = SUMMARY.match(err.strip())
    assert match and match.group(2) == "interrupted" and 0 < int(match.group(1)) < 900, err


# ----------------------------------------------------------------------------------- the default model

@pytest.mark.slow
def test_default_model_answers_paris():
    if default_model_dir() is None:
        pytest.skip("default model not prepared: run `python -m model.zoo fetch smollm2-135m-instruct`")
    result = run_process("--prompt", "What is the capital of France?", "--max-new-tokens", "12", "--device", "cpu")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "Paris" in result.stdout
    assert SUMMARY.match(result.stderr.strip().splitlines()[-1]), result.stderr
