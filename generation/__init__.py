"""Text generation: one decode loop, every strategy a step that plugs into it.

    from generation import generate, stream
    out = generate(model, input_ids, attention_mask, max_new_tokens=30, do_sample=True, top_p=0.9,
                   generator=torch.Generator().manual_seed(0))
    out.sequences       # (B, prompt + new): prompt (with its left padding) then the new tokens
    out.stop_reasons    # per row: "eos", "stop_string" or "max_new_tokens"
    out.scores          # with output_scores=True: per step, the (B, V) processed scores

Files: steps.py (the step protocol: StepContext, StepNeeds, LogitsStep, the order of kinds, choosing a
token), penalties.py and warpers.py (the built-in steps), loop.py (prepare_call, forward_tokens, the sampling
loop, GenerateOutput), beam.py (beam search), contrastive.py (contrastive search), stopping.py (EOS, length,
stop strings, regex, JSON, max_time, your criteria), options.py (every option declared once and checked),
checks.py (the options against the model and the prompt, and every refusal), api.py (generate, stream),
compiled.py (`compile=True`: the one-token forward through torch.compile over a fixed-slot cache), cli.py and
cli_runs.py (what scripts/generate.py needs). Layer selection: dola.py (DoLa), entropy.py (entropy-based layer
choice), layer_selection.py (their options), scoring.py (teacher-forced log-probabilities).

The step protocol
-----------------
At every position the loop does

    logits = model(...).logits[:, -1].float()            # (B, V) float32
    scores = run_steps(steps, logits, ctx)               # each step: (B, V) -> (B, V), in the order of kinds
    token = choose_token(scores, sampling, ctx.generator)

A *logits step* subclasses `LogitsStep` (or is a plain function `f(scores, ctx)`, kind "custom") and declares

    kind    where it runs: "raw_contrast" -> "penalty" -> "contrast" -> "custom" -> "warper"; a
            "layer_selection" step runs alone and gets the other steps as ctx.layer_steps
    needs   StepNeeds(hidden_states=..., early_exit_layers=..., early_exit_norm=...)

A misspelt or contradictory declaration is an error. It must not draw random numbers except from
`ctx.generator`. `ctx` is a `StepContext`:

    ctx.input_ids      (B, T) every token so far (left pads + prompt + generated), as transformers'
                       processors see them: penalties look here
    ctx.prompt_length  T of the padded prompt; ctx.input_ids[:, ctx.prompt_length:] = generated so far
    ctx.logits         (B, V) the raw last-position logits, before any step
    ctx.hidden_states  tuple of num_hidden_layers + 1 tensors (B, 1, H) (embeddings, block 1..N, all before the
                       final norm) -- only if some step's needs.hidden_states; otherwise None
    ctx.model          the CausalLM: ctx.model.early_exit_logits(ctx.hidden_states, layers) -> (len, B, V),
                       or ctx.model.logits_from_hidden(states) for any (..., H) states
    ctx.early_exit_logits  (L, B, V) of needs.early_exit_layers: the loop has the model head those layers in the
                       same matmul as the final position; None elsewhere (beam search, scoring)
    ctx.generator      the torch.Generator; ctx.position the index of the token being chosen (0 = first)
    ctx.record(name, value)   append per-position data; it comes back as out.records[name]

The options build penalties and warpers in transformers' order (generation/options.py); your
`logits_steps=[...]` are placed by their kind; giving a built-in step both ways is an error.

Your own step, e.g. banning a token and recording its probability:

    def ban_token_13(scores, ctx):
        ctx.record("p13", scores.softmax(-1)[:, 13])
        return scores.index_fill(-1, torch.tensor([13]), float("-inf"))

    out = generate(model, ids, logits_steps=[ban_token_13])
    out.records["p13"]   # one (B,) tensor per position

A step class that needs the hidden states says so in its declaration:

    class PenultimateLayerLogits(LogitsStep):   # the "logit lens": decode from block N-1 instead of block N
        kind = "contrast"
        needs = StepNeeds(hidden_states=True)
        def __call__(self, scores, ctx):
            return ctx.model.early_exit_logits(ctx.hidden_states, [len(ctx.hidden_states) - 2])[0].float()

A new search strategy is one file over the skeleton of loop.py (`prepare_call`, `forward_tokens`,
`run_steps`, `choose_token`, `StopConditions`, `output_from_tokens`): contrastive.py is the example.

Two models (one prompt at a time; same options as generate(), output with .sequences and .stats):
speculative.py + drafting.py (`speculative_generate(target, draft_model_or_k, ids)`: a draft model or the
target's first k layers propose, the target verifies), hybrid.py + uncertainty.py (`hybrid_generate(small,
large, ids, routing_metric=..., threshold=...)`: per-token routing by entropy or LogU uncertainty),
profiling.py (`generate_with_profile`: per-token records, percentiles, plots, JSON), two_models.py (what the
two-model decoders share).

Decisions: temperature=0 with do_sample=True means greedy (the T -> 0 limit); top_k defaults to off (not
transformers' 50); temperature/top_k/top_p/min_p are ignored with a warning when do_sample=False, as in
transformers; prompt + max_new_tokens beyond max_position_embeddings is an error; eos_token_id=None takes
model.config's, [] means no end token; stop strings are matched on the generated text only.
"""

from .api import generate, stream
from .beam import beam_search
from .compiled import CompiledDecoder
from .contrastive import contrastive_search
from .dola import DoLa
from .entropy import EntropyLayerChoice
from .hybrid import hybrid_generate
from .layer_selection import LayerSelectionOptions, stack_records
from .loop import (DecodedToken, ForwardResult, GenerateOutput, PreparedCall, decode_loop, forward_tokens,
                   output_from_tokens, prepare_call)
from .checks import check_inputs, refuse_unsupported
from .options import GenerationOptions, OptionError, build_logits_steps
from .penalties import (FrequencyPresencePenalty, MinNewTokens, NoRepeatNGram, RepetitionPenalty, SequenceBias,
                        frequency_presence_penalty, no_repeat_ngram, repetition_penalty, sequence_bias)
from .profiling import ProfileResult, generate_with_profile
from .speculative import speculative_generate
from .steps import (STEP_KINDS, LogitsStep, StepContext, StepNeeds, apply_logits_steps, choose_token, order_steps,
                    run_steps, select_greedy, select_sample)
from .stopping import STOP_REASONS, StopConditions
from .warpers import (EpsilonCutoff, EtaCutoff, MinP, Temperature, TopK, TopP, TypicalP, epsilon_filter, eta_filter,
                      min_p_filter, temperature_scale, top_k_filter, top_p_filter, typical_filter)

__all__ = [
    "speculative_generate", "hybrid_generate", "generate_with_profile", "ProfileResult", "contrastive_search",
    "generate", "stream", "beam_search", "DecodedToken", "ForwardResult", "GenerateOutput", "PreparedCall",
    "decode_loop", "forward_tokens", "output_from_tokens", "prepare_call", "GenerationOptions", "OptionError",
    "build_logits_steps", "check_inputs", "refuse_unsupported", "FrequencyPresencePenalty", "MinNewTokens",
    "NoRepeatNGram",
    "RepetitionPenalty", "SequenceBias", "frequency_presence_penalty", "no_repeat_ngram", "repetition_penalty",
    "sequence_bias", "STEP_KINDS", "LogitsStep", "StepContext", "StepNeeds", "apply_logits_steps", "choose_token",
    "order_steps", "run_steps", "select_greedy", "select_sample", "STOP_REASONS", "StopConditions",
    "EpsilonCutoff", "EtaCutoff", "MinP", "Temperature", "TopK", "TopP", "TypicalP", "epsilon_filter",
    "eta_filter", "min_p_filter", "temperature_scale", "top_k_filter", "top_p_filter", "typical_filter",
    "DoLa", "EntropyLayerChoice", "LayerSelectionOptions", "stack_records", "CompiledDecoder",
]
