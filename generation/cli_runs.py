"""The command line's runs (scripts/generate.py): call the generation function the mode names, print the text
(streamed, or at the end), the --show-logprobs table, the --profile / --plot files, and the summary line."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from .cli import ROUTING_METRIC, UsageError
from .options import OptionError


@dataclass
class RunSummary:
    prompt_tokens: int
    new_tokens: int
    seconds: float
    stop: str
    seed: int | None = None  # shown when the run drew random numbers, to repeat it with --seed
    detail: str = ""  # e.g. ", accepted 40 of 52 drafts, wrote profile.json"

    def line(self) -> str:
        rate = self.new_tokens / self.seconds if self.seconds > 0 else 0.0
        seed = f", seed {self.seed}" if self.seed is not None else ""
        return (f"[prompt {self.prompt_tokens} tokens, {self.new_tokens} new tokens in {self.seconds:.2f} s "
                f"({rate:.1f} tokens/s), stop: {self.stop}{seed}{self.detail}]")


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def usage_error(err: ValueError) -> UsageError:
    return UsageError(err.for_command_line() if isinstance(err, OptionError) else str(err))


def stream_to_stdout(model, tokenizer, input_ids, options: dict) -> RunSummary:
    """Print each piece of text as soon as its characters are complete; Ctrl-C stops with what was printed."""
    from .loop import decode_loop, prepare_call
    from .stopping import STOP_REASONS

    start = time.perf_counter()
    try:
        call = prepare_call(model, input_ids, None, options, mode="stream")  # every option checked here
    except ValueError as err:
        raise usage_error(err) from None
    decoder, new_ids, stop = tokenizer.decode_stream(skip_special_tokens=True), [], "interrupted"
    try:
        for decoded in decode_loop(model, call, {}):
            new_ids.append(int(decoded.tokens[0]))
            write(decoder.push(new_ids[-1]))
            reason = int(decoded.reasons[0])
        write(decoder.flush())
        stop = STOP_REASONS[reason]
    except KeyboardInterrupt:
        stop = "interrupted"  # keep what was printed; the summary says so
    write("\n")
    return RunSummary(input_ids.shape[1], len(new_ids), time.perf_counter() - start, stop)


def run_to_the_end(call, tokenizer, input_ids, options: dict) -> tuple[RunSummary, object]:
    """Run call() (generate, speculative, routing...), whose text is known only at the end, and print it."""
    from .guards import NonFiniteLogitsError

    start = time.perf_counter()
    try:
        out = call()
    except NonFiniteLogitsError:
        raise  # broken weights (or an unusable temperature): found while generating, exit 1
    except ValueError as err:
        raise usage_error(err) from None
    except KeyboardInterrupt:
        return RunSummary(input_ids.shape[1], 0, time.perf_counter() - start, "interrupted"), None
    seconds = time.perf_counter() - start
    sequences = out.sequences[:, input_ids.shape[1]:].tolist()  # (N, new)
    scores = getattr(out, "sequences_scores", None)
    for i, row in enumerate(sequences):
        if len(sequences) > 1:
            score = f", score {float(scores[i]):.3f}" if scores is not None else ""
            write(("\n" if i else "") + f"--- sequence {i + 1} of {len(sequences)}{score} ---\n")
        write(tokenizer.decode(row, skip_special_tokens=True) + "\n")
    eos = options["eos_token_id"] if isinstance(options["eos_token_id"], list) else [options["eos_token_id"]]
    num_new = sum(generated_length(row, eos, options["pad_token_id"]) for row in sequences)
    return RunSummary(input_ids.shape[1], num_new, seconds, ", ".join(out.stop_reasons)), out


def generated_length(row: list[int], eos: list[int], pad: int | None) -> int:
    """Tokens a sequence really generated: up to its first EOS, without the padding that fills it after."""
    for i, token in enumerate(row):
        if token in eos:
            return i + 1
    while row and row[-1] == pad:
        row = row[:-1]
    return len(row)


def write_logprobs(out, tokenizer, options: dict) -> None:
    """--show-logprobs: one line per generated token of the first sequence, tab-separated: its log-probability,
    the token, and (with --top-logprobs N) the N most likely alternatives as token=log-probability."""
    eos = options["eos_token_id"] if isinstance(options["eos_token_id"], list) else [options["eos_token_id"]]
    row = out.new_tokens[0].tolist()
    write("--- log-probabilities ---\n")
    for i in range(generated_length(list(row), eos, options["pad_token_id"])):
        line = f"{float(out.logprobs[0, i]):.4f}\t{tokenizer.decode([row[i]])!r}"
        if out.top_logprobs is not None:
            line += "\t" + "  ".join(f"{tokenizer.decode([int(t)])!r}={float(v):.4f}"
                                      for v, t in zip(out.top_logprobs[0, i], out.top_logprob_ids[0, i]))
        write(line + "\n")


def generate_in_mode(mode: str, args, model, draft, tokenizer, input_ids, options: dict) -> RunSummary:
    """Call the generation function of `mode`; write the --plot / --profile files it asks for."""
    if mode == "stream":
        return stream_to_stdout(model, tokenizer, input_ids, options)
    if mode == "at_end":
        from generation import generate

        if args.plot is not None and args.entropy_decoding is not None:
            options["entropy_record_tokens"] = True  # the entropy heat map needs every layer's entropy
        call = lambda: generate(model, input_ids, **options)  # noqa: E731
    elif mode == "speculative":
        from generation.speculative import speculative_generate

        spec = {k: v for k, v in (("num_draft_tokens", args.num_draft_tokens),
                                  ("num_draft_tokens_schedule", args.num_draft_tokens_schedule)) if v is not None}
        drafter = draft if draft is not None else args.self_speculative
        call = lambda: speculative_generate(model, drafter, input_ids, **spec, **options)  # noqa: E731
    else:  # routing, profile: the small model writes, the large one (if any) takes the uncertain tokens
        from generation.hybrid import hybrid_generate
        from generation.profiling import generate_with_profile

        metric = ROUTING_METRIC.get(args.strategy, "aleatoric")
        small, large = (draft, model) if draft is not None else (model, None)
        function = generate_with_profile if mode == "profile" or large is not None else hybrid_generate
        call = lambda: function(small, large, input_ids, routing_metric=metric,  # noqa: E731
                                threshold=args.threshold, share=args.route_share, **options)
    summary, out = run_to_the_end(call, tokenizer, input_ids, options)
    if out is not None and args.show_logprobs:
        write_logprobs(out, tokenizer, options)
    if out is not None:
        summary.detail += write_extras(mode, args, out, tokenizer)
    return summary


def write_extras(mode: str, args, out, tokenizer) -> str:
    """Write --profile / --plot files; the summary's words on the two-model statistics."""
    stats = getattr(out, "stats", None)
    if mode == "speculative":
        return f", accepted {stats.accepted} of {stats.drafted} drafts"
    if mode in ("routing", "profile") and hasattr(out, "flat_metric_warning") and args.strategy is not None:
        warning = out.flat_metric_warning(ROUTING_METRIC[args.strategy])
        if warning is not None:
            print(f"warning: {warning}", file=sys.stderr)
    if mode == "profile":
        out.save_to_file(args.profile)
        if args.plot is not None:
            out.plot_distributions(args.plot)
    elif args.plot is not None:
        from generation.analysis import plot_layer_analysis

        plot_layer_analysis(out.records, tokenizer, args.plot)
    written = ", ".join(str(p) for p in (args.profile, args.plot) if p is not None)
    routed = f", large model chose {stats.large_tokens} of {stats.new_tokens} tokens" \
        if stats is not None and mode in ("routing", "profile") and large_model_ran(args) else ""
    return routed + (f", wrote {written}" if written else "")


def large_model_ran(args) -> bool:
    return args.draft_model is not None or args.draft is not None
