"""The logits-step protocol: what a step is, what it may ask the loop for, and where it runs.

A *logits step* reshapes the next-token scores: `step(scores, ctx) -> scores`, (B, V) float32 in and out.
A step class subclasses `LogitsStep` and declares two things, once:

    kind   where it runs, in this order:  raw_contrast -> penalty -> contrast -> custom -> warper
           ("layer_selection" is apart: it runs alone and gets the other steps, see below)
    needs  a `StepNeeds`: every layer's hidden states, which early-exit layers the loop should head
           together with the final position, with the final norm or not

The loop reads only these two declarations; a misspelt or contradictory one is an error when the class is
defined or the call is prepared, never silently ignored. A plain function `f(scores, ctx)` is a step of
kind "custom" with no needs.

penalties.py and warpers.py hold the built-in steps; dola.py (a contrast), entropy.py (a layer selection).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch

# Where a step runs, in transformers' order: its DoLa contrasts the raw logits before any processor
# ("raw_contrast"), the penalties look at the history, the paper's DoLa contrasts the penalised logits, then
# your own steps (where transformers runs a custom logits_processor), then the warpers that only shape the
# distribution a token is sampled from.
STEP_ORDER = ("raw_contrast", "penalty", "contrast", "custom", "warper")
# A layer-selection step (entropy.py) reads each layer's early exit through the other steps and returns the
# chosen layer's scores: the loop runs it alone, with the other steps in ctx.layer_steps.
LAYER_SELECTION = "layer_selection"
STEP_KINDS = (*STEP_ORDER, LAYER_SELECTION)
# Attribute names that once declared needs by duck typing; a step that still sets one is told what to write.
OLD_DECLARATIONS = ("needs_hidden_states", "early_exit_layers", "early_exit_norm")


@dataclass(frozen=True)
class StepNeeds:
    """What a step needs from the forward pass besides the final logits.

    hidden_states: ctx.hidden_states, every layer's (B, 1, H) output (embeddings first, before the final norm).
    early_exit_layers: the loop has the model head these layers in the same matmul as the final position and
        hands them over as ctx.early_exit_logits (L, B, V) (DoLa, entropy); needs hidden_states.
    early_exit_norm: whether those layers go through the final norm first (False: transformers' DoLa).
    """

    hidden_states: bool = False
    early_exit_layers: tuple[int, ...] = ()
    early_exit_norm: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.hidden_states, bool) or not isinstance(self.early_exit_norm, bool):
            raise TypeError(f"StepNeeds: hidden_states and early_exit_norm must be True or False, got {self}")
        layers = self.early_exit_layers
        if not isinstance(layers, tuple) or not all(isinstance(j, int) and not isinstance(j, bool) and j >= 0
                                                    for j in layers):
            raise TypeError(f"StepNeeds: early_exit_layers must be a tuple of layer numbers >= 0, got {layers!r}")
        if layers and not self.hidden_states:
            raise ValueError("StepNeeds: early_exit_layers are read from the hidden states; declare "
                             "StepNeeds(hidden_states=True, early_exit_layers=...)")
        if not layers and not self.early_exit_norm:
            raise ValueError("StepNeeds: early_exit_norm=False says how early-exit layers are headed, and no "
                             "early_exit_layers are declared")


NO_NEEDS = StepNeeds()


@dataclass
class StepContext:
    """What the loop knows when it chooses token number `position` (read-only, except `records`)."""

    input_ids: torch.Tensor  # (B, T) every token so far: left padding + prompt + generated (+ pads after end)
    prompt_length: int  # T of the (padded) prompt: input_ids[:, prompt_length:] are the generated tokens
    logits: torch.Tensor  # (B, V) float32: the model's raw logits at the last position, before any step
    hidden_states: tuple[torch.Tensor, ...] | None  # (B, 1, H) per layer, only if a step's needs say so
    model: Any  # the CausalLM, e.g. for model.early_exit_logits(ctx.hidden_states, layers)
    generator: torch.Generator | None  # the only source of randomness a step may use
    position: int  # index of the token being chosen: 0 for the first new token
    records: dict[str, list] = field(default_factory=dict)  # becomes GenerateOutput.records
    # (L, B, V): the head on the layers the steps' needs named, computed with `logits`; None when the loop did
    # not (beam search, scoring): then the step computes them from hidden_states.
    early_exit_logits: torch.Tensor | None = None
    # For a layer-selection step: the steps to run on each layer's scores (the loop's other steps, in order).
    layer_steps: tuple = ()

    def record(self, name: str, value: Any) -> None:
        """Append this position's `value` to output.records[name] (one entry per generated token)."""
        self.records.setdefault(name, []).append(value)


class LogitsStep:
    """Base class of a logits step. Set `kind` (one of STEP_KINDS) and `needs` (a StepNeeds) on the class, or
    as properties when they depend on the instance, and write `__call__(scores, ctx) -> scores`."""

    kind: ClassVar[str] = "custom"
    needs: ClassVar[StepNeeds] = NO_NEEDS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in vars(cls):
            if name.startswith("_") or name in ("kind", "needs"):
                continue
            close = difflib.get_close_matches(name, ["kind", "needs"], n=1, cutoff=0.75)
            if name in OLD_DECLARATIONS or close:
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise TypeError(f"{cls.__name__}.{name}: {hint}a step declares where it runs with `kind` "
                                f"(one of {STEP_KINDS}) and what it needs with `needs = StepNeeds(...)`")
        if "kind" in vars(cls) and not isinstance(vars(cls)["kind"], property):
            check_kind(cls.__name__, cls.kind)

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define __call__(scores, ctx) -> scores")


def check_kind(name: str, kind: Any) -> None:
    if kind not in STEP_KINDS:
        close = difflib.get_close_matches(str(kind), STEP_KINDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{name}.kind must be one of {STEP_KINDS}, got {kind!r}{hint}")


@dataclass(frozen=True)
class FunctionStep(LogitsStep):
    """A plain function `f(scores, ctx) -> scores` as a step of kind "custom" with no needs."""

    function: Callable[[torch.Tensor, StepContext], torch.Tensor]

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return self.function(scores, ctx)


def as_step(step: Any) -> LogitsStep:
    """A LogitsStep as it is, a plain callable wrapped; an object that declares needs without the protocol is
    refused (its declaration would otherwise be ignored)."""
    if isinstance(step, LogitsStep):
        if not isinstance(step.needs, StepNeeds):
            raise TypeError(f"{type(step).__name__}.needs must be a StepNeeds, got {step.needs!r}")
        check_kind(type(step).__name__, step.kind)
        return step
    if not callable(step):
        raise ValueError(f"a logits step must be callable as step(scores, ctx) -> scores, got {step!r}")
    declared = [name for name in ("kind", "needs", *OLD_DECLARATIONS) if hasattr(step, name)]
    if declared:
        raise TypeError(f"{step!r} declares {', '.join(declared)} but is not a generation.LogitsStep: subclass "
                        "LogitsStep and set kind / needs = StepNeeds(...) so the loop reads them")
    return FunctionStep(step)


def order_steps(steps: Sequence[Any]) -> list[LogitsStep]:
    """The steps sorted by kind (STEP_ORDER; steps of one kind keep the order given). A layer-selection step
    comes alone, first; the others then run inside it on every layer (ctx.layer_steps)."""
    steps = [as_step(step) for step in steps]
    selections = [step for step in steps if step.kind == LAYER_SELECTION]
    others = sorted((step for step in steps if step.kind != LAYER_SELECTION), key=lambda s: STEP_ORDER.index(s.kind))
    if len(selections) > 1:
        raise ValueError(f"two layer-selection steps ({selections[0]!r}, {selections[1]!r}): each replaces the "
                         "distribution by one layer's; use one")
    contrasts = [step for step in others if step.kind in ("raw_contrast", "contrast")]
    if selections and contrasts:
        raise ValueError(f"{contrasts[0]!r} contrasts layers and {selections[0]!r} chooses one: each replaces "
                         "the next-token distribution; use one of them")
    return selections + others


def combined_needs(steps: Sequence[LogitsStep]) -> StepNeeds:
    """One StepNeeds for the loop: hidden states if any step needs them; the early-exit layers of the step that
    names some (two steps naming different layers or norms contradict each other: the loop heads one set)."""
    hidden = any(step.needs.hidden_states for step in steps)
    named = [step for step in steps if step.needs.early_exit_layers]
    for other in named[1:]:
        if (other.needs.early_exit_layers, other.needs.early_exit_norm) != \
                (named[0].needs.early_exit_layers, named[0].needs.early_exit_norm):
            raise ValueError(f"{named[0]!r} and {other!r} ask for different early-exit layers; the loop heads "
                             "one set with the final position")
    if not named:
        return StepNeeds(hidden_states=hidden)
    return named[0].needs


def apply_logits_steps(steps: Sequence[LogitsStep], scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """Run the steps in order; each gets the previous one's output. Checks the shape each one returns."""
    for step in steps:
        new_scores = step(scores, ctx)
        if not isinstance(new_scores, torch.Tensor) or new_scores.shape != scores.shape:
            raise TypeError(f"logits step {step!r} must return a tensor of shape {tuple(scores.shape)}, "
                            f"got {getattr(new_scores, 'shape', type(new_scores))}")
        scores = new_scores
    return scores


def run_steps(steps: Sequence[LogitsStep], scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """What the loop calls at each position: the ordered steps (order_steps), a layer selection with the
    others as its ctx.layer_steps."""
    if steps and steps[0].kind == LAYER_SELECTION:
        ctx.layer_steps = tuple(steps[1:])
        return apply_logits_steps(steps[:1], scores, ctx)
    return apply_logits_steps(steps, scores, ctx)


# --------------------------------------------------------------------------- choosing the token
def select_greedy(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) -> (B,): the highest score (the first one on a tie, like torch.argmax)."""
    return torch.argmax(scores, dim=-1)


def select_sample(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) -> (B,): one draw from softmax(scores); -inf scores have probability 0."""
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def choose_token(scores: torch.Tensor, sampling: bool, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) -> (B,): a draw from softmax(scores) with `generator` when sampling, else the argmax."""
    return select_sample(scores, generator) if sampling else select_greedy(scores)
