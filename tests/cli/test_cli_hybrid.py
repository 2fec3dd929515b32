"""scripts/generate.py's two-model additions: --draft int8, --route-share, and the flat-metric warning.

The tiny random model of test_cli.py (SmolLM2's tokenizer); the oracle is transformers' greedy output of the
same float32 model, which speculative decoding with an int8 draft must reproduce exactly.
"""

from __future__ import annotations

import json
import re

import pytest

from test_cli import SUMMARY, cli, hf_generate, run_main, tiny  # noqa: F401  (fixtures)


def test_int8_draft_keeps_the_float_models_greedy_output(tiny, cli, capsys):  # noqa: F811
    expected, _ = hf_generate(tiny, "Tell me a story.", max_new_tokens=8)
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--device", "cpu", "--prompt",
                              "Tell me a story.", "--max-new-tokens", "8", "--draft", "int8", "--dtype", "float32")
    assert code == 0, err
    assert out == expected[0] + "\n"
    assert re.fullmatch(r", accepted \d+ of \d+ drafts", SUMMARY.match(err.strip()).group(4)), err


def test_route_share_sends_that_share_to_the_large_model(tiny, cli, capsys, tmp_path):  # noqa: F811
    profile = tmp_path / "p.json"
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--device", "cpu", "--prompt", "Hi",
                              "--max-new-tokens", "8", "--draft", "int8", "--dtype", "float32", "--strategy",
                              "entropy", "--route-share", "0.25", "--profile", str(profile))
    assert code == 0, err
    tokens = json.loads(profile.read_text())["tokens"]
    assert len(tokens) == 8 and abs(sum(t["model_used"] == "llm" for t in tokens) - 2) <= 1


def test_a_flat_metric_is_warned_about(tiny, cli, capsys):  # noqa: F811
    # LogU's aleatoric value of a random model with small logits barely moves from token to token.
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--device", "cpu", "--prompt", "Hi",
                              "--max-new-tokens", "8", "--draft", "int8", "--dtype", "float32", "--strategy",
                              "uncertainty", "--threshold", "0.5")
    assert code == 0, err
    assert "warning: aleatoric barely varies" in err


@pytest.mark.parametrize("args, message", [
    (["--strategy", "entropy", "--draft", "int8"], "--threshold X or --route-share Q"),
    (["--strategy", "entropy", "--draft", "int8", "--threshold", "1", "--route-share", "0.2"], "one of each"),
    (["--route-share", "0.2"], "--route-share belongs to --strategy entropy or uncertainty"),
    (["--draft", "int8", "--int8"], "leave --int8 off"),
])
def test_bad_two_model_flags_are_refused(tiny, cli, capsys, args, message):  # noqa: F811
    code, _, err = run_main(cli, capsys, "--model", str(tiny[0]), "--device", "cpu", "--prompt", "Hi", *args)
    assert code == 2 and message in err, err
