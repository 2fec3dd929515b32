"""Hybrid decoding: a small model (SLM) writes, and hands a token to the large model (LLM) when it is unsure.

At every position the small model predicts; a measure of its uncertainty about that prediction (entropy,
or LogU's aleatoric / epistemic uncertainty, generation/uncertainty.py) is compared with a threshold:

    measure <= threshold  ->  the token comes from the small model's distribution
    measure >  threshold  ->  the token comes from the large model's distribution

Lower thresholds use the large model more (better text, slower). The measure is computed on the small
model's raw logits, so it is the model's own uncertainty, whatever the sampling settings.

A raw threshold means something only on the metric's own scale (LogU's aleatoric value of SmolLM2 stays near
ln 10 for every token, so no threshold in seed 003's 0.1-1.0 range routes anything to the small model).
`share=q` instead asks for "the most uncertain q of the tokens": the threshold is calibrated on the small
model's measures, from a run of the small model alone on the prompt (same options), or teacher-forced over
`calibration_ids`. With the same prompt and greedy decoding the run then routes round(q * n) tokens, as long
as the large model's tokens do not change what the small model sees next (exactly so when they agree).

Both caches stay in sync with the one sequence: each model sees every token, whichever model chose it.
The small model reads each new token as it comes; the large model is consulted only now and then, and
then first reads, in one batched pass, every token it has not seen (`feed`, generation/drafting.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch

from cache import DynamicCache

from .two_models import AssistedOutput, append_until_stop, prepare_one_prompt, process_positions
from .drafting import feed
from .loop import reason_names
from .steps import choose_token
from .stopping import RUNNING
from .entropy import entropy_bits
from .uncertainty import TokenUncertainty, logu_uncertainty, routing_metric_name, share_threshold, token_uncertainty

SMALL, LARGE = "slm", "llm"


@dataclass
class RoutedToken:
    """One generated token and how it was chosen."""

    token_id: int
    position: int  # 0 = the first generated token
    uncertainty: TokenUncertainty  # the small model's, at this position
    model_used: str  # "slm" or "llm"
    top_probs: list[tuple[int, float]]  # the best (token id, probability) of the distribution it was drawn from


@dataclass
class HybridStats:
    routing_metric: str
    threshold: float
    share: float | None = None  # asked share of large-model tokens, when the threshold was calibrated from it
    new_tokens: int = 0
    small_tokens: int = 0
    large_tokens: int = 0
    small_forward_passes: int = 0
    large_forward_passes: int = 0  # each one reads every token the large model had not seen yet
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}

    def summary(self) -> str:
        asked = f", calibrated for a share of {self.share:g}" if self.share is not None else ""
        return (f"Strategy: {self.routing_metric} routing (threshold {self.threshold:.4g}{asked})\nTime taken: "
                f"{self.seconds:.2f}s\nTotal tokens generated: {self.new_tokens}\nSpeed: {self.tokens_per_second:.2f} "
                f"tok/s\nSLM tokens: {self.small_tokens}, LLM tokens: {self.large_tokens}\nForward passes: SLM "
                f"{self.small_forward_passes}, LLM {self.large_forward_passes}")


def check_routing_arguments(large, routing_metric: Any, threshold: Any, share: Any, top_probs: Any) -> None:
    routing_metric_name(routing_metric)
    if large is not None and share is None and (isinstance(threshold, bool)
                                                or not isinstance(threshold, (int, float)) or math.isnan(threshold)):
        raise ValueError(f"threshold must be a number (the {routing_metric} above which the large model chooses "
                         f"the token), or give share=q instead; got threshold={threshold!r}")
    if share is not None and threshold is not None:
        raise ValueError("give either threshold (a raw value of the metric) or share (the fraction of tokens for the "
                         "large model, calibrated), not both")
    if share is not None:
        share_threshold(torch.zeros(1), share)  # checks the value
    if isinstance(top_probs, bool) or not isinstance(top_probs, int) or top_probs < 1:
        raise ValueError(f"top_probs must be an integer >= 1, got {top_probs!r}")


def route_tokens(small, large, input_ids: torch.Tensor, steps: list, sampling: bool, stop, generator,
                 routing_metric: str, threshold: float, logu_top_k: int, top_probs: int,
                 caches: dict) -> Iterator[tuple[RoutedToken, torch.Tensor, int]]:
    """The routing loop; yields (RoutedToken, sequence so far (1, n), stop reason code) per token."""
    sequence, prompt_length, reason = input_ids, input_ids.shape[1], RUNNING
    while reason == RUNNING:
        small_logits = feed(small, caches[SMALL], sequence)[-1]  # (V,)
        measures = token_uncertainty(small_logits, logu_top_k)
        use_large = large is not None and getattr(measures, routing_metric) > threshold
        model = large if use_large else small
        logits = feed(large, caches[LARGE], sequence)[-1] if use_large else small_logits
        scores = process_positions(steps, logits[None], sequence, sequence.shape[1], prompt_length, model, generator)
        token = int(choose_token(scores, sampling, generator)[0])
        best = scores[0].softmax(-1).topk(min(top_probs, scores.shape[-1]))
        record = RoutedToken(token, sequence.shape[1] - prompt_length, measures, LARGE if use_large else SMALL,
                             [(int(i), float(p)) for p, i in zip(best.values, best.indices)])
        sequence, reason = append_until_stop(sequence, [token], stop)
        yield record, sequence, reason


def metric_values(logits: torch.Tensor, routing_metric: str, logu_top_k: int) -> torch.Tensor:
    """(T, V) raw logits -> (T,) float64: the routing metric at every position (teacher-forced calibration)."""
    if routing_metric == "entropy":
        return entropy_bits(logits).double()
    aleatoric, epistemic = logu_uncertainty(logits, logu_top_k)
    return (aleatoric if routing_metric == "aleatoric" else epistemic).double()


def calibrate_share(small, input_ids: torch.Tensor, routing_metric: str, share: float, logu_top_k: int,
                    calibration_ids: torch.Tensor | None, options: dict[str, Any]) -> float:
    """The threshold that sends the most uncertain `share` of tokens to the large model (module docstring):
    from the small model alone on the prompt (same options, the generator copied so the run's draws are
    untouched), or teacher-forced over calibration_ids (1, T)."""
    if calibration_ids is not None:
        if calibration_ids.dim() != 2 or calibration_ids.shape[0] != 1 or calibration_ids.shape[1] < 2:
            raise ValueError(f"calibration_ids must be one text of at least 2 tokens, shape (1, T); got "
                             f"{tuple(calibration_ids.shape)}")
        with torch.no_grad():
            logits = small(calibration_ids).logits[0, :-1].float()  # (T - 1, V): each predicts a next token
        return share_threshold(metric_values(logits, routing_metric, logu_top_k), share)
    options = dict(options)
    if options.get("generator") is not None:
        copy = torch.Generator(options["generator"].device)
        copy.set_state(options["generator"].get_state())
        options["generator"] = copy
    _, records = run_routing(small, None, input_ids, None, routing_metric, None, logu_top_k, 1, options)
    values = torch.tensor([getattr(r.uncertainty, routing_metric) for r in records], dtype=torch.float64)
    return share_threshold(values, share)


@torch.no_grad()
def run_routing(small, large, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, routing_metric: str,
                threshold: float | None, logu_top_k: int, top_probs: int, options: dict[str, Any],
                share: float | None = None,
                calibration_ids: torch.Tensor | None = None) -> tuple[AssistedOutput, list[RoutedToken]]:
    """Check everything, calibrate a share, run the loop to the end; the output and the per-token records."""
    check_routing_arguments(large, routing_metric, threshold, share, top_probs)
    routing_metric = routing_metric_name(routing_metric)
    others = {"large": large} if large is not None else {}
    opts, steps, stop, generator = prepare_one_prompt(small, others, input_ids, attention_mask, options)
    if large is not None and share is not None:
        threshold = calibrate_share(small, input_ids, routing_metric, share, logu_top_k, calibration_ids, options)
    caches = {SMALL: DynamicCache()}
    if large is not None:
        caches[LARGE] = DynamicCache()
    stats, records = HybridStats(routing_metric, threshold if large is not None else math.inf, share), []
    sequence, reason, start = input_ids, RUNNING, time.perf_counter()
    for record, sequence, reason in route_tokens(small, large, input_ids, steps, opts.sampling, stop, generator,
                                                 routing_metric, stats.threshold, logu_top_k, top_probs, caches):
        records.append(record)
    stats.seconds = time.perf_counter() - start
    stats.new_tokens = len(records)
    stats.large_tokens = sum(r.model_used == LARGE for r in records)
    stats.small_tokens = stats.new_tokens - stats.large_tokens
    stats.small_forward_passes, stats.large_forward_passes = stats.new_tokens, stats.large_tokens
    out = AssistedOutput(sequence, input_ids.shape[1], reason_names(torch.tensor([reason])), stats=stats,
                         caches=caches)
    return out, records


def hybrid_generate(small, large, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                    routing_metric: str = "entropy", threshold: float | None = None, share: float | None = None,
                    calibration_ids: torch.Tensor | None = None, logu_top_k: int = 10,
                    **options: Any) -> AssistedOutput:
    """Decode one prompt (1, T), token by token from `small` or `large` (module docstring).

    routing_metric: "entropy" (bits), "aleatoric" (alias "uncertainty") or "epistemic" (LogU, with the top
    logu_top_k logits); threshold: above it the large model chooses; or share in [0, 1]: the threshold is
    calibrated so that this fraction of tokens goes to the large model (on the prompt, or on calibration_ids).
    options: generate()'s (max_new_tokens, do_sample, temperature, top_k, top_p, min_p, penalties,
    eos_token_id, stop_strings, tokenizer, generator, ...).
    Returns AssistedOutput: .sequences, .stop_reasons, .stats (HybridStats), .caches {"slm", "llm"}.
    """
    out, _ = run_routing(small, large, input_ids, attention_mask, routing_metric, threshold, logu_top_k, 1, options,
                         share, calibration_ids)
    return out
