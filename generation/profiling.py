"""Profiling a generation token by token: how unsure the small model was, and which model wrote each token.

    profile = generate_with_profile(small, large, ids, routing_metric="aleatoric", threshold=0.5,
                                    tokenizer=tok, max_new_tokens=100)
    profile.print_summary()
    profile.analyze_distribution("uncertainty")["percentiles"]["top_10%"]   # 10% of tokens are at least this
    profile.get_high_uncertainty_tokens(10)
    profile.plot_distributions("profile.png")
    profile.save_to_file("profile.json")

    profile.separation()   # per metric: rank correlation with entropy / with the two models' disagreement
    profile.flat_metric_warning("aleatoric")   # a sentence when the metric barely varies, else None

With large=None every token comes from the one model: a profile of a single model's uncertainty.
The records come from the routing loop itself (generation/hybrid.py), so the profile shows exactly what
drove each routing decision.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .hybrid import LARGE, SMALL, HybridStats, run_routing

FLAT_SPREAD = 0.05  # (p90 - p10) / |median| below this: the metric "barely varies" (LogU aleatoric on SmolLM2)

# Names accepted by analyze_distribution; "uncertainty" is seed 003's name for the aleatoric one.
METRIC_FIELDS = {"uncertainty": "aleatoric_uncertainty", "aleatoric": "aleatoric_uncertainty",
                 "epistemic": "epistemic_uncertainty", "entropy": "entropy"}


@dataclass
class TokenRecord:
    token_id: int
    token_text: str
    position: int  # 0 = the first generated token
    entropy: float  # bits, of the small model's raw distribution
    aleatoric_uncertainty: float  # LogU, small model
    epistemic_uncertainty: float
    model_used: str  # "slm" or "llm"
    top_k_probs: list[tuple[int, float]]  # (token id, probability) of the distribution the token was drawn from
    models_disagree: bool | None = None  # the small and large model's argmax differ here (None: no large model)


def ranks(values: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n,) float64 ranks 1..n, tied values sharing their average rank (as Spearman's rho needs)."""
    values = values.double()
    below = (values[None, :] < values[:, None]).sum(1)  # how many are smaller
    equal = (values[None, :] == values[:, None]).sum(1)  # how many tie (itself included)
    return below + (equal + 1) / 2


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation of two (n,) series: Pearson's r of their ranks; nan when one is constant."""
    rx, ry = ranks(x) - ranks(x).mean(), ranks(y) - ranks(y).mean()
    norm = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / norm if norm > 0 else float("nan")


@dataclass
class ProfileResult:
    tokens: list[TokenRecord]
    generated_text: str
    stats: HybridStats
    sequences: torch.Tensor  # (1, prompt + new)
    strategy: str = ""
    stop_reasons: list[str] = field(default_factory=list)  # "eos", "stop_string" or "max_new_tokens"

    def values(self, metric: str) -> torch.Tensor:
        """(n,) float64: one measure over all generated tokens ("uncertainty", "aleatoric", "epistemic", "entropy")."""
        if metric not in METRIC_FIELDS:
            raise ValueError(f"metric must be one of {sorted(METRIC_FIELDS)}, got {metric!r}")
        return torch.tensor([getattr(t, METRIC_FIELDS[metric]) for t in self.tokens], dtype=torch.float64)

    def analyze_distribution(self, metric: str = "uncertainty",
                             percentiles: Sequence[int] = (10, 20, 30, 50)) -> dict[str, Any]:
        """Mean, std (population), min, max, median, and percentiles counted from the top: "top_10%" is the
        value that the highest 10% of tokens reach (the 90th percentile, linear interpolation), with the
        mean/min/max of the top-10% tokens under "top_10_percent"."""
        values = self.values(metric)
        if values.numel() == 0:
            raise ValueError("the profile has no tokens to analyse")
        top_cut = torch.quantile(values, 0.9)
        top = values[values >= top_cut]
        return {
            "metric": metric, "count": values.numel(), "mean": float(values.mean()),
            "std": float(values.std(unbiased=False)), "min": float(values.min()), "max": float(values.max()),
            "median": float(torch.quantile(values, 0.5)),
            "percentiles": {f"top_{p}%": float(torch.quantile(values, 1 - p / 100)) for p in percentiles},
            "top_10_percent": {"mean": float(top.mean()), "min": float(top.min()), "max": float(top.max()),
                               "count": top.numel()},
        }

    def get_high_uncertainty_tokens(self, top_n: int = 10, metric: str = "uncertainty") -> list[TokenRecord]:
        """The top_n tokens with the highest measure, highest first."""
        order = torch.argsort(self.values(metric), descending=True, stable=True)
        return [self.tokens[int(i)] for i in order[:top_n]]

    def relative_spread(self, metric: str) -> float:
        """(p90 - p10) / |median| of one measure: how much it varies, on its own scale."""
        values = self.values(metric)
        p10, p50, p90 = (float(torch.quantile(values, q)) for q in (0.1, 0.5, 0.9))
        return (p90 - p10) / abs(p50) if p50 != 0 else (math.inf if p90 > p10 else 0.0)

    def separation(self) -> dict[str, dict[str, float | None]]:
        """Per metric, how well it tells confident tokens from unsure ones: Spearman's rho with the small model's
        entropy, with the two models' disagreement (when a large model ran; 1 = disagree), and its spread."""
        disagree = [t.models_disagree for t in self.tokens]
        report = {}
        for metric in ("entropy", "aleatoric", "epistemic"):
            values = self.values(metric)
            report[metric] = {
                "spearman_with_entropy": spearman(values, self.values("entropy")),
                "spearman_with_disagreement": (spearman(values, torch.tensor(disagree, dtype=torch.float64))
                                               if disagree and None not in disagree else None),
                "relative_spread": self.relative_spread(metric)}
        return report

    def flat_metric_warning(self, metric: str) -> str | None:
        """A sentence for the user when `metric` barely varies over this run (a raw threshold then routes all
        tokens or none); None when it varies."""
        if not self.tokens or self.relative_spread(metric) >= FLAT_SPREAD:
            return None
        values = self.values(metric)
        return (f"{metric} barely varies on this text: 80% of tokens lie in [{float(torch.quantile(values, 0.1)):.4f}, "
                f"{float(torch.quantile(values, 0.9)):.4f}] (spread {100 * self.relative_spread(metric):.1f}% of "
                f"the median), so a raw threshold routes almost every token or none; give a share instead "
                f"(share=q, --route-share Q) or route by entropy")

    def summary(self, metric: str = "uncertainty", top_n: int = 10) -> str:
        n, large = len(self.tokens), sum(t.model_used == LARGE for t in self.tokens)
        a = self.analyze_distribution(metric)
        lines = ["=" * 70, f"Profile Summary - Strategy: {self.strategy}", "=" * 70,
                 f"Generated {n} tokens in {self.stats.seconds:.2f}s",
                 f"Speed: {self.stats.tokens_per_second:.2f} tok/s",
                 "Model Usage:", f"  SLM: {n - large} tokens ({100 * (n - large) / n:.1f}%)",
                 f"  LLM: {large} tokens ({100 * large / n:.1f}%)", "-" * 70, f"{metric.capitalize()} Distribution:",
                 f"  Count: {a['count']}", f"  Mean: {a['mean']:.4f} ± {a['std']:.4f} (std)",
                 f"  Range: [{a['min']:.4f}, {a['max']:.4f}]", f"  Median: {a['median']:.4f}",
                 f"  Top 10% tokens: mean {a['top_10_percent']['mean']:.4f}, range "
                 f"[{a['top_10_percent']['min']:.4f}, {a['top_10_percent']['max']:.4f}]",
                 "  Percentiles (from highest):"]
        lines += [f"    {name}: {value:.4f}" for name, value in a["percentiles"].items()]
        lines += ["-" * 70, f"Top {top_n} Most Uncertain Tokens:"]
        for rank, t in enumerate(self.get_high_uncertainty_tokens(top_n, metric), 1):
            value = getattr(t, METRIC_FIELDS[metric])
            lines.append(f"{rank:2d}. Pos {t.position:3d} | {json.dumps(t.token_text, ensure_ascii=False):20s} | "
                         f"{metric.capitalize()}: {value:.4f} | Model: {t.model_used.upper()}")
        return "\n".join(lines)

    def print_summary(self, metric: str = "uncertainty", top_n: int = 10) -> None:
        print(self.summary(metric, top_n))

    def plot_distributions(self, path: str | Path) -> Path:
        """Histograms of the three measures and their trace over positions (LLM tokens marked), to a PNG.

        Uses matplotlib's object interface (Figure + savefig), so no global backend state is touched."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(12, 7), layout="constrained")
        axes = fig.subplots(2, 3)
        large = torch.tensor([t.model_used == LARGE for t in self.tokens], dtype=torch.bool)
        positions = torch.tensor([t.position for t in self.tokens])
        for column, metric in enumerate(("entropy", "aleatoric", "epistemic")):
            values = self.values(metric)
            axes[0, column].hist(values.numpy(), bins=min(30, max(len(values), 1)), color="tab:blue")
            axes[0, column].set(title=f"{metric} distribution", xlabel=metric, ylabel="tokens")
            axes[1, column].plot(positions.numpy(), values.numpy(), color="0.6", linewidth=0.8)
            for used, colour in ((~large, "tab:green"), (large, "tab:red")):
                axes[1, column].scatter(positions[used].numpy(), values[used].numpy(), s=10, color=colour,
                                        label=SMALL.upper() if colour == "tab:green" else LARGE.upper())
            axes[1, column].set(title=f"{metric} per token", xlabel="generated position", ylabel=metric)
            axes[1, column].legend(loc="upper right", fontsize="small")
        fig.savefig(path, dpi=100)
        return Path(path)

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "generated_text": self.generated_text, "stop_reasons": self.stop_reasons,
                "stats": self.stats.as_dict(),
                "sequences": self.sequences.tolist(), "tokens": [asdict(t) for t in self.tokens]}

    def save_to_file(self, path: str | Path) -> Path:
        """The whole profile as JSON (tokens, text, stats, and the analysis of each measure)."""
        data = self.to_dict()
        if self.tokens:
            data["analysis"] = {m: self.analyze_distribution(m) for m in ("entropy", "aleatoric", "epistemic")}
            data["separation"] = self.separation()
        Path(path).write_text(json.dumps(finite_or_null(data), ensure_ascii=False, indent=1, allow_nan=False))
        return Path(path)


def finite_or_null(value: Any) -> Any:
    """JSON has no NaN or Infinity (Python writes them, other readers refuse them): such a number becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def disagreement(small, large, sequences: torch.Tensor, prompt_length: int) -> list[bool]:
    """Whether the two models' argmax differ at each generated position of sequences (1, T): teacher-forced."""
    with torch.no_grad():
        small_best = small(sequences).logits[0, prompt_length - 1:-1].argmax(-1)  # (new,)
        large_best = large(sequences).logits[0, prompt_length - 1:-1].argmax(-1)
    return (small_best != large_best).tolist()


def generate_with_profile(small, large, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                          routing_metric: str = "aleatoric", threshold: float | None = None, share: float | None = None,
                          calibration_ids: torch.Tensor | None = None, logu_top_k: int = 10,
                          top_probs: int = 5, **options: Any) -> ProfileResult:
    """hybrid_generate with a record of every token (large=None: the small model alone). The `tokenizer`
    option, when given, supplies token_text and generated_text; otherwise they show the ids. With a large
    model each record also says whether the two models' greedy choices differ there (one extra pass each)."""
    out, routed = run_routing(small, large, input_ids, attention_mask, routing_metric, threshold, logu_top_k,
                              top_probs, options, share, calibration_ids)
    tokenizer = options.get("tokenizer")
    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids) if tokenizer is not None else " ".join(f"<{i}>" for i in ids)

    differ = (disagreement(small, large, out.sequences, input_ids.shape[1]) if large is not None and routed
              else [None] * len(routed))
    tokens = [TokenRecord(r.token_id, text([r.token_id]), r.position, r.uncertainty.entropy, r.uncertainty.aleatoric,
                          r.uncertainty.epistemic, r.model_used, r.top_probs, d) for r, d in zip(routed, differ)]
    strategy = f"profiled_{out.stats.routing_metric}" if large is not None else "profiled_single_model"
    return ProfileResult(tokens, text(out.new_tokens[0].tolist()), out.stats, out.sequences, strategy,
                         out.stop_reasons)
