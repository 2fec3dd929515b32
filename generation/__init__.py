"""Text generation: one decode loop, every strategy a step that plugs into it.

    from generation import generate, stream
    out = generate(model, input_ids, attention_mask, max_new_tokens=30, do_sample=True, top_p=0.9,
                   generator=torch.Generator().manual_seed(0))
    out.sequences       # (B, prompt + new): prompt (with its left padding) then the new tokens
    out.stop_reasons    # per row: "eos", "stop_string" or "max_new_tokens"
    out.scores          # with output_scores=True: per step, the (B, V) processed scores

Files: steps.py (the logits steps and token selectors), loop.py (prefill, decode_one_token, the loop),
beam.py (beam search), stopping.py (EOS / stop strings / length), options.py (checks every argument),
api.py (generate, stream), compiled.py (`compile=True`: the one-token step through torch.compile, over a
fixed-slot cache; slow to compile, then faster tokens: see its docstring). Layer selection: dola.py (DoLa), entropy.py (entropy-based layer choice),
layer_selection.py (their generate() options), scoring.py (teacher-forced log-probabilities).

The step protocol
-----------------
At every position the loop does

    logits = model(...).logits[:, -1].float()            # (B, V) float32
    scores = logits
    for step in steps:                                   # in list order
        scores = step(scores, ctx)                       # (B, V) -> (B, V)
    token = argmax(scores) or a draw from softmax(scores) with ctx.generator

A *logits step* is any callable `step(scores, ctx) -> scores`: (B, V) float32 in, a new (B, V) tensor out.
It may return a completely different distribution (DoLa replaces the final layer's scores by a contrast
of layers). It must not draw random numbers except from `ctx.generator`. `ctx` is a `StepContext`:

    ctx.input_ids      (B, T) every token so far (left pads + prompt + generated), as transformers'
                       processors see them: penalties look here
    ctx.prompt_length  T of the padded prompt; ctx.input_ids[:, ctx.prompt_length:] = generated so far
    ctx.logits         (B, V) the raw last-position logits, before any step
    ctx.hidden_states  tuple of num_hidden_layers + 1 tensors (B, 1, H) (embeddings, block 1..N, all
                       before the final norm) -- only if some step has `needs_hidden_states = True`;
                       otherwise None and the model is run without them
    ctx.model          the CausalLM: ctx.model.early_exit_logits(ctx.hidden_states, layers) -> (len, B, V),
                       or ctx.model.logits_from_hidden(states) for any (..., H) states
    ctx.early_exit_logits  (L, B, V) for a step with `early_exit_layers` (and `early_exit_norm`): the decode
                       loop has the model head those layers in the same matmul as the final position
                       (DoLa does); None elsewhere (beam search, scoring), where the step computes them
    ctx.generator      the torch.Generator, ctx.step the index of the token being chosen (0 = first)
    ctx.record(name, value)   append per-step data; it comes back as out.records[name] (a list, one
                              entry per step)

Order. The options build the list in transformers' order: repetition_penalty, no_repeat_ngram_size,
then your `logits_steps=[...]` (where transformers runs a custom `logits_processor`), then, only when
sampling, temperature, top_k, top_p, min_p. To put a built-in step elsewhere, leave its option unset and
put the step object yourself where you want it; giving it both ways is an error:

    generate(model, ids, do_sample=True, logits_steps=[my_contrast, RepetitionPenalty(1.2), Temperature(0.7)])

A step that needs the steps of others (e.g. applying the penalties to each layer's logits) takes them as
a constructor argument and calls `apply_logits_steps(its_steps, layer_scores, ctx)` on each (B, V) slice.
Beam search runs the same steps on log_softmax(logits) of every beam (B * num_beams rows), as
transformers does. `build_logits_steps(options, num_eos)` shows the list an option set produces.

Your own step, e.g. banning a token and recording its probability:

    def ban_token_13(scores, ctx):
        ctx.record("p13", scores.softmax(-1)[:, 13])
        return scores.index_fill(-1, torch.tensor([13]), float("-inf"))

    out = generate(model, ids, logits_steps=[ban_token_13])
    out.records["p13"]   # one (B,) tensor per step

A step class that needs the hidden states says so with an attribute:

    class PenultimateLayerLogits:   # the "logit lens": decode from block N-1 instead of block N
        needs_hidden_states = True
        def __call__(self, scores, ctx):
            return ctx.model.early_exit_logits(ctx.hidden_states, [len(ctx.hidden_states) - 2])[0].float()

Building blocks for other decoders (speculative decoding, ...): `prefill`, `decode_one_token`,
`apply_logits_steps`, `select_greedy`, `select_sample`, `StopConditions`.

Two models (one prompt at a time; same options as generate(), output with .sequences and .stats):
speculative.py + drafting.py (`speculative_generate(target, draft_model_or_k, ids)`: a draft model or the
target's first k layers propose, the target verifies), hybrid.py + uncertainty.py (`hybrid_generate(small,
large, ids, routing_metric=..., threshold=...)`: per-token routing by entropy or LogU uncertainty),
profiling.py (`generate_with_profile`: per-token records, percentiles, plots, JSON), assisted.py (shared).

Decisions: temperature=0 with do_sample=True means greedy (the T -> 0 limit); top_k defaults to off (not
transformers' 50); temperature/top_k/top_p/min_p are ignored with a warning when do_sample=False, as in
transformers; prompt + max_new_tokens beyond max_position_embeddings is an error; eos_token_id=None takes
model.config's, [] means no end token; stop strings are matched on the generated text only.
"""

from .api import generate, stream
from .beam import beam_search
from .compiled import CompiledDecoder
from .dola import DoLa
from .entropy import EntropyLayerChoice
from .layer_selection import LayerSelectionOptions, stack_records
from .loop import DecodeStep, GenerateOutput, decode_loop, decode_one_token, prefill
from .options import GenerationOptions, build_logits_steps, check_inputs
from .hybrid import hybrid_generate
from .profiling import ProfileResult, generate_with_profile
from .speculative import speculative_generate
from .steps import (MinP, NoRepeatNGram, RepetitionPenalty, StepContext, Temperature, TopK, TopP,
                    apply_logits_steps, min_p_filter, needs_hidden_states, no_repeat_ngram, repetition_penalty,
                    select_greedy, select_sample, temperature_scale, top_k_filter, top_p_filter)
from .stopping import STOP_REASONS, StopConditions

__all__ = [
    "speculative_generate", "hybrid_generate", "generate_with_profile", "ProfileResult",
    "generate", "stream", "beam_search", "DecodeStep", "GenerateOutput", "decode_loop", "decode_one_token",
    "prefill", "GenerationOptions", "build_logits_steps", "check_inputs", "MinP", "NoRepeatNGram",
    "RepetitionPenalty", "StepContext", "Temperature", "TopK", "TopP", "apply_logits_steps", "min_p_filter",
    "needs_hidden_states", "no_repeat_ngram", "repetition_penalty", "select_greedy", "select_sample",
    "temperature_scale", "top_k_filter", "top_p_filter", "STOP_REASONS", "StopConditions",
    "DoLa", "EntropyLayerChoice", "LayerSelectionOptions", "stack_records", "CompiledDecoder",
]
