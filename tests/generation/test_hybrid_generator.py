"""Seed 003's HybridGenerator interface and the int8 self-draft (generation/hybrid_generator.py, int8_draft.py).

Fast tests on tiny random models with a character tokenizer: each strategy must give what the package's one
decoder for it gives (speculative = the large model's own greedy output; routing at an infinite threshold =
the small model alone), a registered strategy must be called, the statistics block printed, bad input refused.
Slow tests run seed 003's usage examples on the default model (its int8 copy as the small model), check that a
share routes that share of tokens, and that the int8 draft keeps float32 greedy output token for token.
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers import save_tiny_llama
from generation import generate
from generation.hybrid_generator import GenerationStrategy, HybridGenerator, SpeculativeStrategy, UncertaintyStrategy
from generation.int8_draft import int8_draft
from model import load_pretrained


class CharTokenizer:
    """Characters <-> ids 3..96 of the tiny models' 97-token vocabulary."""

    def encode(self, text, add_special_tokens=True):
        return [3 + ord(c) % 94 for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(32 + i % 94) for i in ids)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hybrid_generator")
    save_tiny_llama(folder / "small", seed=0, num_hidden_layers=2, initializer_range=0.3)
    save_tiny_llama(folder / "large", seed=1, num_hidden_layers=3, initializer_range=0.3)
    return folder / "small", folder / "large"


@pytest.fixture(scope="module")
def generator(folders):
    return HybridGenerator(*folders, tokenizer=CharTokenizer())


def test_speculative_strategy_writes_the_large_models_greedy_text(generator, capsys):
    text, stats = generator.generate("Write a story", strategy="speculative", max_new_tokens=12, num_drafts=3)
    ids = torch.tensor([CharTokenizer().encode("Write a story")])
    expected = generate(generator.llm, ids, max_new_tokens=12, eos_token_id=2)
    assert text == CharTokenizer().decode(expected.sequences[0, ids.shape[1]:].tolist())
    assert stats["total_tokens"] == expected.sequences.shape[1] - ids.shape[1]
    assert stats["slm_tokens"] + stats["llm_tokens"] == stats["total_tokens"]
    assert stats["draft_tokens"] >= stats["accepted"] == stats["slm_tokens"]
    printed = capsys.readouterr().out
    for line in ("Strategy: speculative", "Time taken:", "Total tokens generated:", "Speed:", "Decode steps:",
                 "Draft tokens:", "Acceptance rate:", "SLM tokens:", "LLM tokens:"):
        assert line in printed


def test_routing_strategies_follow_their_metric(generator, capsys):
    ids = torch.tensor([CharTokenizer().encode("Explain")])
    alone = generate(generator.slm, ids, max_new_tokens=10, eos_token_id=[])
    text, stats = generator.generate("Explain", strategy="entropy", threshold=math.inf, max_new_tokens=10,
                                     eos_token_id=[])
    assert text == CharTokenizer().decode(alone.sequences[0, ids.shape[1]:].tolist())
    assert (stats["slm_tokens"], stats["llm_tokens"]) == (10, 0)
    _, stats = generator.generate("Explain", strategy="uncertainty", share=0.5, max_new_tokens=10, eos_token_id=[],
                                  verbose=False)
    assert stats["strategy"] == "uncertainty" and stats["slm_tokens"] + stats["llm_tokens"] == 10
    assert "SLM tokens: 10, LLM tokens: 0" in capsys.readouterr().out


def test_sampling_arguments_and_seed_repeat(generator):
    kwargs = dict(strategy="speculative", max_new_tokens=10, temperature=0.8, top_k=20, top_p=0.95, min_p=0.05,
                  seed=7, verbose=False)
    assert generator.generate("Creative", **kwargs)[0] == generator.generate("Creative", **kwargs)[0]


def test_a_registered_strategy_is_called_with_the_seeds_arguments(generator):
    calls = []

    class Echo(GenerationStrategy):
        def generate(self, slm, llm, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, min_p, device,
                     **kwargs):
            calls.append((slm, llm, prompt, max_new_tokens, temperature, top_k, kwargs))
            return prompt.upper(), {"strategy": "echo", "time": 0.0, "total_tokens": 0, "speed": 0.0,
                                    "decode_steps": 0, "slm_tokens": 0, "llm_tokens": 0}

    generator.strategies["custom"] = Echo()
    text, stats = generator.generate("hi", strategy="custom", max_new_tokens=5, top_k=3, verbose=False)
    assert text == "HI" and stats["strategy"] == "echo"
    assert calls == [(generator.slm, generator.llm, "hi", 5, 0.0, 3, {"seed": None})]
    assert isinstance(generator.strategies["speculative"], SpeculativeStrategy)
    assert isinstance(generator.strategies["uncertainty"], UncertaintyStrategy)


def test_the_profiler_takes_seed_003s_uncertainty(generator):
    profile = generator.generate_with_profile("Explain", max_new_tokens=8, threshold=2.1,
                                              routing_metric="uncertainty", eos_token_id=[])
    assert len(profile.tokens) == 8 and profile.stats.routing_metric == "aleatoric"


def test_bad_input_is_refused(folders, generator, tmp_path):
    with pytest.raises(ValueError, match="unknown strategy 'fast'"):
        generator.generate("hi", strategy="fast")
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        generator.generate("  ")
    with pytest.raises(ValueError, match="threshold must be a number"):
        generator.generate("hi", strategy="entropy")
    small = load_pretrained(folders[0])
    with pytest.raises(ValueError, match="pass tokenizer"):
        HybridGenerator(small, small)
    with pytest.raises(ValueError, match="needs a small and a large model"):
        HybridGenerator(small)
    save_tiny_llama(tmp_path / "other", vocab_size=50)
    with pytest.raises(ValueError, match="vocabulary"):
        HybridGenerator(folders[0], tmp_path / "other", tokenizer=CharTokenizer())


def test_int8_draft_shares_the_embedding_and_keeps_greedy_output(folders):
    target = load_pretrained(folders[1], dtype=torch.float32)
    draft = int8_draft(target)
    assert draft.embed_tokens.weight is target.embed_tokens.weight
    assert type(target.layers[0].self_attn.q_proj).__name__ != "Int8Linear"  # the target is left alone
    from generation import speculative_generate
    ids = torch.tensor([[5, 9, 13, 20]])
    expected = generate(target, ids, max_new_tokens=20, eos_token_id=[])
    out = speculative_generate(target, draft, ids, num_draft_tokens=4, max_new_tokens=20, eos_token_id=[])
    assert torch.equal(out.sequences, expected.sequences) and out.stats.accepted > 0


# --------------------------------------------------------------------------- the default model (slow)
@pytest.fixture(scope="module")
def default_generator(default_model_path):
    large = load_pretrained(default_model_path, dtype=torch.float32)
    from tokenizer import load_tokenizer
    return HybridGenerator(int8_draft(large), large, tokenizer=load_tokenizer(default_model_path))


@pytest.mark.slow
def test_seed_003s_usage_examples_on_the_default_model(default_generator, capsys):
    generator = default_generator  # seed 003's examples, max_new_tokens cut from 200 to keep the suite short
    text, stats = generator.generate(prompt="Write a story about AI", strategy="speculative", max_new_tokens=40,
                                     num_drafts=4, temperature=0.6, top_k=20, top_p=0.95)
    assert text and stats["accepted"] > 0
    text, stats = generator.generate(prompt="Explain quantum computing", strategy="uncertainty", threshold=0.5,
                                     max_new_tokens=40)
    # LogU's aleatoric value of SmolLM2 sits near ln 10 for every token: 0.5 sends everything to the LLM
    assert stats["llm_tokens"] == stats["total_tokens"] > 0
    text, stats = generator.generate(prompt="Write code to sort a list", strategy="entropy", threshold=2.0,
                                     max_new_tokens=40)
    assert 0 < stats["slm_tokens"] and stats["slm_tokens"] + stats["llm_tokens"] == stats["total_tokens"]
    generator.generate(prompt="Creative writing task", strategy="speculative", temperature=0.8, top_k=40,
                       top_p=0.9, min_p=0.05, max_new_tokens=40)
    profile = generator.generate_with_profile(prompt="Explain quantum computing", max_new_tokens=40, threshold=0.5,
                                              routing_metric="uncertainty")
    analysis = profile.analyze_distribution("uncertainty", percentiles=[10, 20, 30])
    assert analysis["percentiles"]["top_10%"] >= analysis["median"]
    assert profile.flat_metric_warning("uncertainty") is not None  # LogU barely varies on SmolLM2
    assert profile.flat_metric_warning("entropy") is None
    assert capsys.readouterr().out.count("Strategy:") == 4


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["uncertainty", "entropy"])
def test_a_share_routes_that_share_on_the_default_model(default_generator, metric):
    # int8 small, float32 large: the large model's tokens may change what follows, hence +-1 token.
    _, stats = default_generator.generate("Explain quantum computing", strategy=metric, share=0.25,
                                          max_new_tokens=40, eos_token_id=[], verbose=False)
    assert abs(stats["llm_tokens"] - 10) <= 1


@pytest.mark.slow
def test_int8_draft_equals_float32_greedy_on_the_default_model(default_generator):
    from generation import speculative_generate
    ids = torch.tensor([default_generator.tokenizer.encode("The history of the printing press", False)])
    expected = generate(default_generator.llm, ids, max_new_tokens=48, eos_token_id=[])
    out = speculative_generate(default_generator.llm, default_generator.slm, ids, num_draft_tokens=4,
                               max_new_tokens=48, eos_token_id=[])
    assert torch.equal(out.sequences, expected.sequences)
    assert out.stats.acceptance_rate > 0.5


@pytest.mark.slow
def test_seed_003s_remaining_code_blocks_run_as_written(default_model_path, monkeypatch, tmp_path, capsys):
    """The seed's constructor, advanced usage, custom strategy and profiling blocks, in its own words: the model ids
    become the default model's folder, "cuda" the CPU, and max_new_tokens shorter to keep the suite short."""
    monkeypatch.chdir(tmp_path)  # profile.png / profile.json land here
    from generation.hybrid_generator import (  # in place of `from hybrid_generator import (...)`
        HybridGenerator,
        SpeculativeStrategy,
        UncertaintyStrategy,
    )

    generator = HybridGenerator(
        slm_model_id=default_model_path,
        llm_model_id=default_model_path,
        device="cpu",
        dtype=torch.float16
    )
    result = generator.generate(
        prompt="Creative writing task",
        strategy="speculative",
        temperature=0.8,    # 更高的随机性
        top_k=40,           # 更大的候选池
        top_p=0.9,          # 更宽松的 nucleus sampling
        min_p=0.05,         # 过滤低概率 token
        max_new_tokens=16,
    )
    assert generator.llm.dtype == torch.float16 and isinstance(result[0], str)
    assert isinstance(generator.strategies["speculative"], SpeculativeStrategy)
    assert isinstance(generator.strategies["uncertainty"], UncertaintyStrategy)

    from generation.hybrid_generator import GenerationStrategy  # in place of hybrid_generator.strategies

    class MyCustomStrategy(GenerationStrategy):
        def generate(self, slm, llm, tokenizer, prompt,
                     max_new_tokens, temperature, top_k,
                     top_p, min_p, device, **kwargs):
            # 实现你的策略
            # 返回 (生成文本, 统计字典)
            return prompt, {"strategy": "custom", "time": 0.0, "total_tokens": 0, "speed": 0.0, "decode_steps": 0,
                            "slm_tokens": 0, "llm_tokens": 0}

    # 注册到 HybridGenerator
    generator.strategies['custom'] = MyCustomStrategy()
    assert generator.generate("echo", strategy="custom")[0] == "echo"

    profile = generator.generate_with_profile(
        prompt="Explain quantum computing",
        max_new_tokens=24,
        threshold=0.5,
        routing_metric="uncertainty"  # 或 "entropy"
    )

    # 打印详细摘要
    profile.print_summary()

    # 分析分布
    analysis = profile.analyze_distribution("uncertainty", percentiles=[10, 20, 30])
    print(f"Top 10% 的 token 不确定性 >= {analysis['percentiles']['top_10%']:.4f}")

    # 获取最不确定的 tokens
    high_uncertain = profile.get_high_uncertainty_tokens(10)
    for token in high_uncertain:
        print(f"位置 {token.position}: '{token.token_text}' "
              f"(不确定性: {token.aleatoric_uncertainty:.4f})")

    # 可视化分布 (需要 matplotlib)
    profile.plot_distributions("profile.png")

    # 导出数据
    profile.save_to_file("profile.json")

    analysis = profile.analyze_distribution("uncertainty")

    print(f"平均不确定性: {analysis['mean']:.4f}")
    print(f"标准差: {analysis['std']:.4f}")
    print(f"范围: [{analysis['min']:.4f}, {analysis['max']:.4f}]")

    print("\n分位数 (从最高值开始):")
    print(f"  Top 10%: {analysis['percentiles']['top_10%']:.4f}")
    print(f"  Top 20%: {analysis['percentiles']['top_20%']:.4f}")
    print(f"  Top 30%: {analysis['percentiles']['top_30%']:.4f}")
    print(f"  中位数: {analysis['median']:.4f}")

    print(f"\nTop 10% tokens:")
    print(f"  平均值: {analysis['top_10_percent']['mean']:.4f}")
    print(f"  范围: [{analysis['top_10_percent']['min']:.4f}, "
          f"{analysis['top_10_percent']['max']:.4f}]")

    # What the blocks printed and wrote, checked against the profile's own tokens in plain Python.
    out = capsys.readouterr().out
    values = [t.aleatoric_uncertainty for t in profile.tokens]
    assert len(high_uncertain) == min(10, len(values)) and values
    assert [t.aleatoric_uncertainty for t in high_uncertain] == sorted(values, reverse=True)[:10]
    assert f"平均不确定性: {sum(values) / len(values):.4f}" in out and f"位置 {high_uncertain[0].position}:" in out
    assert (tmp_path / "profile.png").stat().st_size > 0
    import json
    assert len(json.loads((tmp_path / "profile.json").read_text())["tokens"]) == len(values)
