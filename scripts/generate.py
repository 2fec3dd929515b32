"""Generate text from the command line, streamed as it is produced.

    python scripts/generate.py --prompt "What is the capital of France?"
    python scripts/generate.py --help          # every option, with examples

The script is thin: it parses and checks the arguments, loads the tokenizer and the model
(tokenizer/, model/), and calls generation.stream() -- or, when the text is only known at the end,
generate() (beam search, several sequences, --plot), speculative_generate(), hybrid_generate() or
generate_with_profile(). The last line, on stderr, sums up the run. Bad input gets one line on stderr
and exit code 2 (1 for broken model files); Ctrl-C keeps what was printed and exits with 130.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# torch and the packages are imported inside the functions that need them, so that --help and
# usage errors answer at once instead of after the seconds torch takes to import.

EXAMPLES = """\
examples:
  %(prog)s --prompt "What is the capital of France?"
  %(prog)s --prompt "Write a haiku about rain." --do-sample --temperature 0.7 --top-p 0.9 --seed 0
  %(prog)s --prompt "Once upon a time" --no-chat --max-new-tokens 100 --repetition-penalty 1.2
  %(prog)s --prompt "Name three rivers." --num-beams 4 --num-return-sequences 2
  %(prog)s --prompt "List two colours." --stop "." --stop $'\\n'
  %(prog)s --prompt "Who wrote Hamlet?" --dola-layers high --plot dola.png
  %(prog)s --prompt "Who wrote Hamlet?" --entropy-decoding trough --plot layers.png
  %(prog)s --prompt "Explain gravity." --self-speculative 8 --num-draft-tokens 4
  %(prog)s --model big/ --draft-model small/ --prompt "Explain gravity."
  %(prog)s --model big/ --draft-model small/ --strategy entropy --threshold 2.0 --prompt "Hi"
  %(prog)s --prompt "Explain gravity." --profile profile.json --plot profile.png
  %(prog)s --model path/to/hf_folder --dtype bfloat16 --device cuda --prompt "Hello"
  torchrun --nproc-per-node 2 scripts/generate.py --tensor-parallel --prompt "Hello"

The last line, on stderr, sums up the run:
  [prompt 37 tokens, 8 new tokens in T s (R tokens/s), stop: eos]
stop is eos (the model ended its answer), stop_string, max_new_tokens, or interrupted (Ctrl-C).
tokens/s counts the whole call, prompt processing included.
Exit codes: 0 done, 1 unreadable model files, 2 bad arguments or prompt, 130 interrupted.
"""

SAMPLING_ONLY = ("temperature", "top_k", "top_p", "min_p")  # shape the distribution sampled from
OPTION_NAMES = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                "no_repeat_ngram_size", "num_beams", "length_penalty", "early_stopping", "num_return_sequences",
                "stop_strings", "dola_layers", "dola_variant", "dola_alpha", "entropy_decoding",
                "entropy_normalize", "entropy_consistency_alpha", "compile")  # generate()'s names
ROUTING_METRIC = {"entropy": "entropy", "uncertainty": "aleatoric"}  # --strategy -> hybrid's routing_metric


class UsageError(Exception):
    """Bad arguments or prompt: one line on stderr, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ("error: ...") instead of the usage block and the error."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def dola_layers_type(text: str) -> str | list[int] | None:
    """--dola-layers: "low", "high", "bucket0".."bucket2", layer numbers such as "2,4,6", or a choice file of
    scripts/select_dola_bucket.py (its layers, or None = no DoLa when no bucket beat plain decoding)."""
    if text in ("low", "high") or text.startswith("bucket"):
        return text
    if text.endswith(".json"):
        from generation.dola_choice import read_dola_choice

        try:
            return read_dola_choice(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not low, high, bucketN or a list like 2,4,6") from None


def early_stopping_type(text: str) -> bool | str:
    choices = {"true": True, "false": False, "never": "never"}
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError(f"{text!r} is not true, false or never")
    return choices[text.lower()]


def build_parser() -> Parser:
    parser = Parser(prog="python scripts/generate.py", description="Generate text with a scratch-lm model; "
                    "the text is streamed to stdout, a summary line goes to stderr.", epilog=EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument_group("model and prompt").add_argument
    add("--prompt", metavar="TEXT", required=True, help="the text to continue or the question to answer")
    add("--model", metavar="PATH", type=Path, help="a Hugging Face style folder (config.json, *.safetensors, "
        "tokenizer files); default: SmolLM2-135M-Instruct from the model zoo, prepared on first use")
    add("--no-chat", action="store_true", help="encode the prompt as plain text instead of formatting it with "
        "the model's chat template (chat is on by default when the tokenizer has a template)")
    add("--system", metavar="TEXT", help="a system message put before the prompt (chat formatting only)")
    add("--dtype", choices=("float32", "bfloat16", "float16"), help="weights dtype (default: the checkpoint's)")
    add("--device", default="auto", help="cpu, cuda, cuda:1, mps... (default: cuda if available, else cpu)")
    add("--threads", metavar="N", type=int, help="CPU threads for torch (default: torch's choice)")
    add("--weight-layout", choices=("auto", "row_major", "column_major", "column_major_blocks", "packed_head"),
        default="auto", help="how float32 CPU weights are stored (model/linear.py): row_major suits everything "
        "where the one-row kernel (model/matvec.cpp) beats MKL in float32 (not on Intel CPUs); elsewhere "
        "column_major makes one-sequence greedy/sampling faster and beam search slower; column_major_blocks / "
        "packed_head (the head packed for oneDNN) suit DoLa and entropy decoding; auto picks by the options, "
        "the kernel and the CPU")
    add("--int8", action="store_true", help="weight-only int8: every matrix as int8 with a scale per row, half the "
        "bytes of bf16 (model/quantize.py); activations in --dtype, bfloat16 unless given (the CPU int8 kernel "
        "is fast only with bfloat16); fastest with --compile")
    add("--tensor-parallel", action="store_true", help="split the model across the processes torchrun starts "
        "(model/tensor_parallel.py): torchrun --nproc-per-node N scripts/generate.py --tensor-parallel ...; "
        "process 0 prints; NCCL with --device cuda, gloo on the CPU")
    add = parser.add_argument_group("length and randomness").add_argument
    add("--max-new-tokens", metavar="N", type=int, default=256, help="at most this many new tokens (default: 256)")
    add("--seed", metavar="N", type=int, help="seed of the random generator (sampling, entropy random_after); "
        "default: a fresh one, printed in the summary")
    add("--stop", action="append", dest="stop_strings", metavar="TEXT",
        help="end when the generated text contains TEXT (repeatable)")
    add_decoding_arguments(parser.add_argument_group("decoding (generate()'s options; greedy by default)"))
    add_layer_arguments(parser.add_argument_group("layer selection (DoLa, entropy-based layer choice)"))
    add_two_model_arguments(parser.add_argument_group("two models (speculative decoding, hybrid routing)"))
    return parser


def add_decoding_arguments(group) -> None:
    add = group.add_argument
    add("--do-sample", action="store_true", help="sample tokens instead of taking the most likely one")
    add("--temperature", metavar="T", type=float, help="divide the logits by this (sampling; 0 = greedy)")
    add("--top-k", metavar="K", type=int, help="keep the k most likely tokens (sampling)")
    add("--top-p", metavar="P", type=float, help="keep the smallest set of tokens with probability >= p (sampling)")
    add("--min-p", metavar="P", type=float, help="drop tokens below min_p x the top probability (sampling)")
    add("--repetition-penalty", metavar="X", type=float, help="> 1 discourages tokens already in the text")
    add("--no-repeat-ngram-size", metavar="N", type=int, help="never repeat an n-gram of this size")
    add("--num-beams", metavar="N", type=int, help="beam search with this many beams (prints at the end)")
    add("--length-penalty", metavar="X", type=float, help="beam score = log-prob sum / length ** length_penalty")
    add("--early-stopping", type=early_stopping_type, nargs="?", const=True, metavar="{true,false,never}",
        help="beam search: stop once num_beams hypotheses are finished (alone: true)")
    add("--num-return-sequences", metavar="N", type=int, help="print this many sequences (beam search or sampling)")
    add("--compile", action="store_true", help="run the one-token step through torch.compile: tens of seconds to "
        "compile (docs/performance.md), then faster tokens (generation/compiled.py); pays off for long outputs")


def add_layer_arguments(group) -> None:
    add = group.add_argument
    add("--dola-layers", metavar="LAYERS", type=dola_layers_type, help="DoLa: contrast with these premature "
        "layers: low, high, bucket0..bucket2, numbers like 2,4,6, or a choice.json of select_dola_bucket.py")
    add("--dola-variant", choices=("paper", "transformers"), help="the paper's formulas (default) or "
        "transformers 4.55.2's implementation, exactly")
    add("--dola-alpha", metavar="A", type=float, help="DoLa's plausibility constraint alpha (default 0.1)")
    add("--entropy-decoding", choices=("trough", "random_after"), help="decode from the layer chosen by "
        "the entropy of its early-exit distribution")
    add("--entropy-normalize", action="store_true", help="entropy / log2(vocab_size)")
    add("--entropy-consistency-alpha", metavar="A", type=float, help="rank layers by -entropy + A x cos(h_j, h_N)")
    add("--plot", metavar="PNG", type=Path, help="draw the run's layer records (with --dola-layers or "
        "--entropy-decoding) or the --profile to this file (prints the text at the end)")


def add_two_model_arguments(group) -> None:
    add = group.add_argument
    add("--draft-model", metavar="PATH", type=Path, help="a small model with --model's tokenizer: it drafts "
        "tokens (speculative) or writes until unsure (entropy, uncertainty); --model is the large one")
    add("--self-speculative", metavar="K", type=int, help="speculative decoding drafted by --model's own first "
        "K layers (no second model)")
    add("--draft", choices=("int8",), help="int8: an int8 copy of --model (sharing its embedding) is the draft "
        "(speculative: the output stays --model's exactly) or the small model (entropy, uncertainty)")
    add("--strategy", choices=("speculative", "entropy", "uncertainty"), help="speculative decoding (the "
        "default with a draft), or routing each token to the large model when the small one's entropy "
        "(bits) or aleatoric uncertainty exceeds --threshold")
    add("--num-draft-tokens", metavar="N", type=int, help="speculative: tokens drafted per round (default 5)")
    add("--num-draft-tokens-schedule", choices=("constant", "heuristic"), help="speculative: keep N, or "
        "grow it after a fully accepted round and shrink it after a rejection")
    add("--threshold", metavar="X", type=float, help="entropy/uncertainty routing: above it the large "
        "model chooses the token")
    add("--route-share", metavar="Q", type=float, help="entropy/uncertainty routing instead of --threshold: send "
        "the most uncertain fraction Q of tokens to the large model (calibrated on a small-model run)")
    add("--profile", metavar="JSON", type=Path, help="record every token's entropy and LogU uncertainties "
        "(and which model chose it) and write them with their percentiles to this file")


# ----------------------------------------------------------------------------------- checking the arguments

def decoding_options(args: argparse.Namespace) -> dict:
    """generate()'s keyword arguments for the options given on the command line (left out: its defaults)."""
    given = {name: getattr(args, name) for name in OPTION_NAMES}
    options = {name: value for name, value in given.items() if value is not None and value is not False}
    unused = [name for name in SAMPLING_ONLY if name in options]
    if unused and not args.do_sample:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        verb = "shapes" if len(unused) == 1 else "shape"
        raise UsageError(f"{flags} only {verb} the distribution tokens are sampled from: add --do-sample "
                         "(decoding is greedy by default)")
    return options


def choose_mode(args: argparse.Namespace) -> str:
    """stream, at_end (generate()), speculative, routing or profile; refuses options that do not fit the mode."""
    small_models = [args.draft_model is not None, args.self_speculative is not None, args.draft is not None]
    drafting = any(small_models)
    strategy = args.strategy or ("speculative" if drafting else None)
    needs = {"--num-draft-tokens": (args.num_draft_tokens, "speculative"),
             "--num-draft-tokens-schedule": (args.num_draft_tokens_schedule, "speculative"),
             "--self-speculative": (args.self_speculative, "speculative"),
             "--threshold": (args.threshold, "entropy or uncertainty"),
             "--route-share": (args.route_share, "entropy or uncertainty")}
    for flag, (value, wanted) in needs.items():
        if value is not None and strategy not in wanted.split(" or "):
            raise UsageError(f"{flag} belongs to --strategy {wanted}")
    if args.compile:  # checked here too, so that the compile notice never precedes an error
        layer_flag = "--dola-layers" if args.dola_layers is not None else "--entropy-decoding"
        refusals = [(strategy is not None, f"--strategy {strategy or ''} runs its own loop"),
                    (args.dola_layers is not None or args.entropy_decoding is not None,
                     f"{layer_flag} reads every layer's hidden state, the compiled step returns only the logits")]
        for refused, why in refusals:
            if refused:
                raise UsageError(f"--compile compiles generate()'s one-token step, and {why}: leave --compile off")
    if strategy == "speculative":
        if sum(small_models) != 1:
            raise UsageError("speculative decoding needs one draft: --draft-model PATH or --self-speculative K "
                             "(or --draft int8)")
        if args.profile is not None:
            raise UsageError("--profile records a routing run or a single model; it cannot follow speculative decoding")
        return "speculative"
    if strategy is not None:
        if (args.draft_model is None) == (args.draft is None) or (args.threshold is None) == (args.route_share is None):
            raise UsageError(f"--strategy {strategy} needs --draft-model PATH or --draft int8 (the small model), and "
                             "--threshold X or --route-share Q (one of each)")
        return "profile" if args.profile is not None else "routing"
    layer_records = args.dola_layers is not None or args.entropy_decoding is not None
    if args.plot is not None and not (layer_records or args.profile is not None):
        raise UsageError("--plot draws layer records or a profile: add --dola-layers, --entropy-decoding or --profile")
    if args.profile is not None:
        return "profile"
    beams = (args.num_beams or 1) > 1 or (args.num_return_sequences or 1) > 1
    return "at_end" if beams or args.plot is not None else "stream"


def as_flags(message: str) -> str:
    """Name options as the command line does: "top_p must be ..." -> "--top-p must be ...".
    Whole words only: "compile" becomes "--compile", "compiled" stays."""
    for name in OPTION_NAMES:
        flag = "--" + name.replace("_", "-")
        message = re.sub(rf"(?<![-\w]){name}(=True)?\b", flag, message)
    return message


def check_options(options: dict) -> None:
    """Check every decoding option's range before anything is loaded (the package's own checks)."""
    from generation import GenerationOptions, LayerSelectionOptions

    options = dict(options)
    if any(not text for text in options.pop("stop_strings", [])):  # the others are checked with the tokenizer
        raise UsageError("--stop needs a non-empty text")
    try:
        LayerSelectionOptions.pop_from(options)
        GenerationOptions(**options)
    except ValueError as err:
        raise UsageError(as_flags(str(err))) from None


def check_folder(flag: str, path: Path | None) -> None:
    if path is not None and not path.is_dir():
        what = "is a file, not a folder" if path.is_file() else "does not exist"
        raise UsageError(f"{flag} folder {path} {what}: give a Hugging Face style folder (config.json, "
                         "*.safetensors, tokenizer files)" + (" or leave out --model for the default model"
                                                              if flag == "--model" else ""))


def choose_weight_layout(args: argparse.Namespace) -> str:
    """--weight-layout auto (float32 CPU only; elsewhere the layout changes nothing): model/linear.py's choice
    for one-row blocks (not beams or speculative verification) and a one-row head (not DoLa / entropy decoding,
    which head one row per early-exit layer)."""
    from model.linear import choose_weight_layout as fastest_layout

    if args.weight_layout != "auto":
        return args.weight_layout
    if args.int8:
        return "row_major"  # quantize_int8 replaces every matrix by int8 rows: re-laying them out first is wasted
    one_row_blocks = not ((args.num_beams or 1) > 1 or (args.num_return_sequences or 1) > 1
                          or args.draft_model is not None or args.self_speculative is not None
                          or args.draft is not None)
    early_exits = args.dola_layers is not None or args.entropy_decoding is not None
    return fastest_layout(one_row_blocks, one_row_head=not early_exits)


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device name such as cpu, cuda or cuda:1") from None
    if device.type == "meta":
        raise UsageError("--device meta holds shapes but no numbers, so it cannot generate: use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def prompt_ids(tokenizer, args: argparse.Namespace) -> list[int]:
    """The prompt's token ids: chat-formatted when the tokenizer has a template, unless --no-chat."""
    chat = tokenizer.chat_template is not None and not args.no_chat
    if args.system is not None and not chat:
        why = "--no-chat is given" if args.no_chat else "this model's tokenizer has no chat template"
        raise UsageError(f"--system needs chat formatting, but {why}")
    if not chat:
        return tokenizer.encode(args.prompt)
    messages = [{"role": "system", "content": args.system}] if args.system is not None else []
    messages.append({"role": "user", "content": args.prompt})
    from tokenizer import ChatTemplateRefusal

    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except ChatTemplateRefusal as err:  # e.g. no system message: bad input (exit 2); a broken template exits 1
        raise UsageError(f"{err} (change the messages, e.g. leave out --system, or use --no-chat)") from None


def check_prompt_length(num_prompt: int, max_new_tokens: int, context: int) -> None:
    """Refuse a prompt that cannot fit in the context window, before the weights are loaded."""
    if num_prompt >= context:
        raise UsageError(f"the prompt is {num_prompt} tokens but the model's context window "
                         f"(max_position_embeddings) is {context} tokens: shorten the prompt")
    if num_prompt + max_new_tokens > context:
        raise UsageError(f"the prompt ({num_prompt} tokens) + --max-new-tokens ({max_new_tokens}) exceeds the "
                         f"context window of {context} tokens: use --max-new-tokens {context - num_prompt} or less")


# -------------------------------------------------------------------------------------------- the runs

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


def stream_to_stdout(model, tokenizer, input_ids, options: dict) -> RunSummary:
    """Print each piece of text as soon as its characters are complete; Ctrl-C stops with what was printed."""
    from generation import stream

    start = time.perf_counter()
    try:
        tokens = stream(model, input_ids, **options)  # every option is checked here, before the prompt runs
    except ValueError as err:
        raise UsageError(as_flags(str(err))) from None
    decoder, new_ids, stop = tokenizer.decode_stream(skip_special_tokens=True), [], "interrupted"
    try:
        for token in tokens:
            new_ids.append(int(token[0]))
            write(decoder.push(new_ids[-1]))
        write(decoder.flush())
        stop = stop_reason(new_ids, options)
    except KeyboardInterrupt:
        pass  # keep what was printed; the summary says "interrupted"
    write("\n")
    return RunSummary(input_ids.shape[1], len(new_ids), time.perf_counter() - start, stop)


def stop_reason(new_ids: list[int], options: dict) -> str:
    """Why generation ended: the stop rules, asked again on the whole output, name the reason."""
    import torch

    from generation.stopping import STOP_REASONS, StopConditions, StopStrings

    strings = tuple(options.get("stop_strings") or ())
    rules = StopConditions(torch.tensor(options["eos_token_id"], dtype=torch.long), 0, options["max_new_tokens"],
                           (StopStrings(strings, options["tokenizer"]),) if strings else ())
    return STOP_REASONS[int(rules(torch.tensor([new_ids]))[0])]


def run_to_the_end(call, tokenizer, input_ids, options: dict) -> tuple[RunSummary, object]:
    """Run call() (generate, speculative, routing...), whose text is known only at the end, and print it."""
    start = time.perf_counter()
    from generation.guards import NonFiniteLogitsError

    try:
        out = call()
    except NonFiniteLogitsError:
        raise  # broken weights (or an unusable temperature): found while generating, exit 1
    except ValueError as err:
        raise UsageError(as_flags(str(err))) from None
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
    num_new = sum(generated_length(row, options["eos_token_id"], options["pad_token_id"]) for row in sequences)
    reasons = getattr(out, "stop_reasons", None) or [stop_reason(sequences[0], options)]  # a profile has none
    return RunSummary(input_ids.shape[1], num_new, seconds, ", ".join(reasons)), out


def generated_length(row: list[int], eos: list[int], pad: int | None) -> int:
    """Tokens a sequence really generated: up to its first EOS, without the padding that fills it after."""
    for i, token in enumerate(row):
        if token in eos:
            return i + 1
    while row and row[-1] == pad:
        row = row[:-1]
    return len(row)


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


# ----------------------------------------------------------------------------------------------- main

def load(args, options: dict):
    """Tokenizer, prompt and length checks first (cheap); then the weights. -> (model, draft, tokenizer, ids)."""
    import torch

    from model import ModelConfig, load_pretrained
    from model.quantize import quantize_int8
    from model.zoo import ensure_default_model
    from tokenizer import load_tokenizer

    device = resolve_device(args.device)
    folder = args.model or ensure_default_model()  # the default model is built on first use, with progress
    config = ModelConfig.from_json(folder)
    if args.self_speculative is not None and not 1 <= args.self_speculative < config.num_hidden_layers:
        raise UsageError(f"--self-speculative {args.self_speculative}: K must be in 1..{config.num_hidden_layers - 1}"
                         f" (the model has {config.num_hidden_layers} layers)")
    if args.draft is not None and (args.int8 or config.model_type == "gpt_oss"):
        raise UsageError("--draft int8 drafts with an int8 copy of a float LLaMA-style --model: leave --int8 off")
    if args.int8 and config.model_type == "gpt_oss":
        raise UsageError("--int8 supports LLaMA-style models; GPT-OSS keeps its MXFP4 experts: leave --int8 off")
    tokenizer = load_tokenizer(folder)
    ids = prompt_ids(tokenizer, args)
    check_prompt_length(len(ids), args.max_new_tokens, config.max_position_embeddings)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.int8 else None)
    if args.tensor_parallel:
        model = load_split(args, folder, dtype, device)
    else:
        model = load_pretrained(folder, dtype=dtype, device=device, weight_layout=choose_weight_layout(args))
    if args.int8:
        quantize_int8(model)
    draft = load_pretrained(args.draft_model, dtype=dtype, device=device) if args.draft_model else None
    if args.draft == "int8":
        from generation.int8_draft import int8_draft

        draft = int8_draft(model)
    # The chat template ends a turn with the tokenizer's EOS, which a config may not list (Llama-3).
    eos = list(dict.fromkeys(config.eos_token_ids + [t for t in [tokenizer.eos_token_id] if t is not None]))
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else None)
    options.update(max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=pad, tokenizer=tokenizer)
    return model, draft, tokenizer, torch.tensor([ids], device=device)  # (1, T)


def load_split(args, folder: Path, dtype, device):
    """This process's part of the model (torchrun started N of them); only process 0 prints from here on."""
    from model.shard_loading import load_tensor_parallel
    from model.tensor_parallel import TensorParallelError, first_process_prints, init_tensor_parallel

    refused = [flag for flag, given in (("--int8", args.int8), ("--compile", args.compile),
                                        ("--draft-model", args.draft_model is not None)) if given]
    if refused:
        raise UsageError(f"--tensor-parallel splits the plain model across processes; {', '.join(refused)} "
                         "cannot run split: leave them off")
    try:
        mesh = init_tensor_parallel(device.type)
    except TensorParallelError as err:  # not started by torchrun
        raise UsageError(str(err)) from None
    first_process_prints(mesh)
    return load_tensor_parallel(folder, mesh, dtype=dtype, device=device)


def run(args: argparse.Namespace) -> int:
    """Check everything cheap first, then load the weights and generate."""
    if not args.prompt.strip():
        raise UsageError("the prompt is empty: give some text with --prompt")
    for flag, text in [("--prompt", args.prompt), ("--system", args.system),
                       *(("--stop", text) for text in args.stop_strings or [])]:
        check_utf8(flag, text)
    options = decoding_options(args)
    mode = choose_mode(args)
    check_folder("--model", args.model)
    check_folder("--draft-model", args.draft_model)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    for flag, path in (("--plot", args.plot), ("--profile", args.profile)):
        check_output_path(flag, path)
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be in 0 .. 2**64 - 1 = {2**64 - 1}, got {args.seed}")
    check_options(options)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, draft, tokenizer, input_ids = load(args, options)
    generator = torch.Generator(device=model.device)
    seed = generator.manual_seed(args.seed).initial_seed() if args.seed is not None else generator.seed()
    if args.tensor_parallel:  # every process must draw the same tokens: process 0's seed for all
        from model.tensor_parallel import same_on_every_process

        seed = generator.manual_seed(same_on_every_process(seed)).initial_seed()
    options["generator"] = generator
    if args.compile:
        from generation.compiled import check_compilable

        try:
            check_compilable(model)  # the model and a C++ compiler; the options were checked in choose_mode
        except ValueError as err:
            raise UsageError(as_flags(str(err))) from None
        print("compiling the one-token step after the prompt (tens of seconds on a CPU; shorter when "
              "torch's on-disk cache has it)", file=sys.stderr)
    summary = generate_in_mode(mode, args, model, draft, tokenizer, input_ids, options)
    if args.do_sample or args.entropy_decoding == "random_after":
        summary.seed = seed
    print(summary.line(), file=sys.stderr)
    return 130 if summary.stop == "interrupted" else 0


def check_output_path(flag: str, path: Path | None) -> None:
    """--plot / --profile: a file we can write, checked before the model loads (not after generating)."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder: give a file name, e.g. {path / ('out' + (path.suffix or '.json'))}")
    if not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path} cannot be written (permission denied): choose another path")


def check_utf8(flag: str, text: str | None) -> None:
    """Text from the command line that was not valid UTF-8 reaches Python as lone surrogates: name the byte."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        byte = ord(text[err.start]) - 0xDC00 if 0xDC80 <= ord(text[err.start]) <= 0xDCFF else None
        what = f"byte 0x{byte:02x}" if byte is not None else f"character U+{ord(text[err.start]):04X}"
        raise UsageError(f"{flag} is not valid UTF-8 text ({what} at position {err.start}): "
                         "give the text in UTF-8") from None


def fail(message: str, code: int) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message holds
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (no traceback for bad input or Ctrl-C)."""
    if sys.stdout is None:  # started with stdout closed (>&-): nowhere to write the text
        return fail("stdout is closed: run with the output going to a terminal, a file or a pipe", 2)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show a character gets "?"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = lambda msg, *_: print(f"warning: {msg}", file=sys.stderr)
            return run(build_parser().parse_args(argv))
    except UsageError as err:
        return fail(str(err), 2)
    except KeyboardInterrupt:  # before generation started (loading); during it, the runs handle it
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, OSError, RuntimeError) as err:  # broken model files (CheckpointError, ConfigError, ...)
        return fail(str(err), 1)
    finally:
        if "torch" in sys.modules and sys.modules["torch"].distributed.is_initialized():  # --tensor-parallel
            sys.modules["torch"].distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
