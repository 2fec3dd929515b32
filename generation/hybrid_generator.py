"""Seed 003's interface: one object holding a small and a large model, and a named strategy per call.

    generator = HybridGenerator(small_folder_or_model, large_folder_or_model)   # tokenizer: the large folder's
    text, stats = generator.generate("Write a story about AI", strategy="speculative", max_new_tokens=200,
                                     num_drafts=4, temperature=0.6, top_k=20, top_p=0.95)
    generator.generate("Explain quantum computing", strategy="uncertainty", threshold=0.5)   # or share=0.2
    generator.strategies["custom"] = MyStrategy()     # any GenerationStrategy subclass
    profile = generator.generate_with_profile("Explain quantum computing", routing_metric="uncertainty", ...)

Each strategy is a thin wrapper over the package's one decoder for it: "speculative" is
`speculative_generate(large, small)` (the large model verifies, so the text is the large model's: equal to its
greedy output, or its sampling distribution), "uncertainty" and "entropy" are `hybrid_generate` routing by
LogU's aleatoric uncertainty or by entropy. After each call the seed's statistics block is printed.

temperature 0 (the default) decodes greedily; temperature > 0 samples, from `seed` when one is given.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .hybrid import hybrid_generate
from .profiling import ProfileResult, generate_with_profile
from .speculative import speculative_generate


def stats_block(stats: dict[str, Any]) -> str:
    """Seed 003's statistics block, from a strategy's statistics dict."""
    lines = ["=" * 60, f"Strategy: {stats['strategy']}", f"Time taken: {stats['time']:.2f}s",
             f"Total tokens generated: {stats['total_tokens']}", f"Speed: {stats['speed']:.2f} tok/s",
             f"Decode steps: {stats['decode_steps']}"]
    if stats.get("draft_tokens") is not None:
        lines.append(f"Draft tokens: {stats['draft_tokens']}, Accepted: {stats['accepted']}, "
                     f"Acceptance rate: {100 * stats['acceptance_rate']:.2f}%")
    if stats.get("threshold") is not None:
        lines.append(f"Threshold: {stats['threshold']:.4g}")
    lines += [f"SLM tokens: {stats['slm_tokens']}, LLM tokens: {stats['llm_tokens']}", "=" * 60]
    return "\n".join(lines)


def sampling_options(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                     min_p: float | None, seed: int | None, tokenizer) -> dict[str, Any]:
    """generate()'s options for seed 003's sampling arguments (temperature 0: greedy, the rest unused)."""
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "tokenizer": tokenizer}
    if temperature > 0:
        options.update(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p or None)
        if seed is not None:
            options["generator"] = torch.Generator().manual_seed(seed)
    return options


class GenerationStrategy:
    """A way of writing text with two models. Subclasses implement `generate` and return (text, statistics):
    a dict with at least strategy, time, total_tokens, speed, decode_steps, slm_tokens, llm_tokens."""

    name = "custom"

    def generate(self, slm, llm, tokenizer, prompt: str, max_new_tokens: int, temperature: float,
                 top_k: int | None, top_p: float | None, min_p: float | None, device,
                 **kwargs: Any) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError("a GenerationStrategy subclass implements generate()")


class SpeculativeStrategy(GenerationStrategy):
    """The small model drafts num_drafts tokens per round, the large model verifies them in one pass."""

    name = "speculative"

    def generate(self, slm, llm, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, min_p, device,
                 num_drafts: int = 4, seed: int | None = None, **kwargs):
        ids = encode(tokenizer, prompt, device)
        options = sampling_options(max_new_tokens, temperature, top_k, top_p, min_p, seed, tokenizer)
        out = speculative_generate(llm, slm, ids, num_draft_tokens=num_drafts, **options, **kwargs)
        s = out.stats
        # Accepted drafts are the SLM's tokens (fewer if a stop rule cut some); the rest the target wrote itself.
        small_tokens = min(s.accepted, s.new_tokens)
        stats = {"strategy": self.name, "time": s.seconds, "total_tokens": s.new_tokens,
                 "speed": s.tokens_per_second, "decode_steps": s.rounds, "draft_tokens": s.drafted,
                 "accepted": s.accepted, "acceptance_rate": s.acceptance_rate,
                 "slm_tokens": small_tokens, "llm_tokens": s.new_tokens - small_tokens,
                 "target_forward_passes": s.target_forward_passes}
        return tokenizer.decode(out.new_tokens[0].tolist()), stats


class RoutingStrategy(GenerationStrategy):
    """Each token from the small model, or from the large one when the small one's `metric` exceeds the
    threshold (or is among the most uncertain `share` of tokens)."""

    def __init__(self, metric: str, name: str) -> None:
        self.metric, self.name = metric, name

    def generate(self, slm, llm, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, min_p, device,
                 threshold: float | None = None, share: float | None = None, seed: int | None = None, **kwargs):
        ids = encode(tokenizer, prompt, device)
        options = sampling_options(max_new_tokens, temperature, top_k, top_p, min_p, seed, tokenizer)
        out = hybrid_generate(slm, llm, ids, routing_metric=self.metric, threshold=threshold, share=share,
                              **options, **kwargs)
        s = out.stats
        stats = {"strategy": self.name, "time": s.seconds, "total_tokens": s.new_tokens,
                 "speed": s.tokens_per_second, "decode_steps": s.new_tokens, "draft_tokens": None,
                 "slm_tokens": s.small_tokens, "llm_tokens": s.large_tokens, "threshold": s.threshold}
        return tokenizer.decode(out.new_tokens[0].tolist()), stats


class UncertaintyStrategy(RoutingStrategy):
    def __init__(self) -> None:
        super().__init__("aleatoric", "uncertainty")


class EntropyStrategy(RoutingStrategy):
    def __init__(self) -> None:
        super().__init__("entropy", "entropy")


def encode(tokenizer, prompt: Any, device) -> torch.Tensor:
    """A non-empty prompt string -> (1, T) token ids on `device`."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    return torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)], device=device)


def load_model(model_or_folder: Any, role: str, device, dtype: torch.dtype):
    """A loaded CausalLM is used as it is; a folder is loaded (checked by load_pretrained)."""
    if isinstance(model_or_folder, (str, Path)):
        from model import load_pretrained

        return load_pretrained(model_or_folder, dtype=dtype, device=device)
    if not hasattr(model_or_folder, "config") or not callable(model_or_folder):
        raise ValueError(f"the {role} model must be a model folder or a loaded CausalLM, got "
                         f"{type(model_or_folder).__name__}")
    return model_or_folder


class HybridGenerator:
    """Two models with one vocabulary and one tokenizer; `generate(prompt, strategy=...)` (module docstring).

    small, large: folders or loaded CausalLMs (also accepted as seed 003's slm_model_id / llm_model_id).
    tokenizer: defaults to the large model's folder's. device/dtype apply to models loaded here.
    """

    def __init__(self, small: Any = None, large: Any = None, tokenizer: Any = None, *, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, slm_model_id: Any = None, llm_model_id: Any = None) -> None:
        small, large = small if small is not None else slm_model_id, large if large is not None else llm_model_id
        if small is None or large is None:
            raise ValueError("HybridGenerator needs a small and a large model (folders or loaded models)")
        if tokenizer is None:
            if not isinstance(large, (str, Path)):
                raise ValueError("pass tokenizer=... when the models are given loaded (no folder to read it from)")
            from tokenizer import load_tokenizer

            tokenizer = load_tokenizer(large)  # checked before the weights are read
        self.slm, self.llm = load_model(small, "small", device, dtype), load_model(large, "large", device, dtype)
        if self.slm.config.vocab_size != self.llm.config.vocab_size:
            raise ValueError(f"the small model's vocabulary ({self.slm.config.vocab_size}) differs from the large "
                             f"model's ({self.llm.config.vocab_size}): they must share one tokenizer")
        self.tokenizer, self.device = tokenizer, self.llm.device
        self.strategies: dict[str, GenerationStrategy] = {
            "speculative": SpeculativeStrategy(), "uncertainty": UncertaintyStrategy(), "entropy": EntropyStrategy()}
        self.last_stats: dict[str, Any] | None = None

    def generate(self, prompt: str, strategy: str = "speculative", max_new_tokens: int = 200, num_drafts: int = 4,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, threshold: float | None = None, share: float | None = None,
                 seed: int | None = None, verbose: bool = True, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        """Write up to max_new_tokens after `prompt` with a named strategy; print and return (text, statistics).

        num_drafts: speculative only; threshold or share: the routing strategies only."""
        if strategy not in self.strategies:
            raise ValueError(f"unknown strategy {strategy!r}: one of {sorted(self.strategies)}, or register yours "
                             "with generator.strategies[name] = MyStrategy()")
        extra = dict(kwargs, seed=seed)
        if strategy == "speculative":
            extra["num_drafts"] = num_drafts
        elif isinstance(self.strategies[strategy], RoutingStrategy):
            extra.update(threshold=threshold, share=share)
        start = time.perf_counter()
        text, stats = self.strategies[strategy].generate(self.slm, self.llm, self.tokenizer, prompt, max_new_tokens,
                                                         temperature, top_k, top_p, min_p, self.device, **extra)
        stats.setdefault("time", time.perf_counter() - start)
        self.last_stats = stats
        if verbose:
            print(stats_block(stats))
        return text, stats

    def generate_with_profile(self, prompt: str, max_new_tokens: int = 100, threshold: float | None = None,
                              routing_metric: str = "uncertainty", share: float | None = None,
                              **options: Any) -> ProfileResult:
        """Routing with a record of every token (generation/profiling.py)."""
        ids = encode(self.tokenizer, prompt, self.device)
        return generate_with_profile(self.slm, self.llm, ids, routing_metric=routing_metric, threshold=threshold,
                                     share=share, max_new_tokens=max_new_tokens, tokenizer=self.tokenizer, **options)
