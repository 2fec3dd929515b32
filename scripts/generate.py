"""Generate text from the command line, streamed as it is produced.

    python scripts/generate.py --prompt "What is the capital of France?"
    python scripts/generate.py --help          # every option, with examples

The script is thin: it parses and checks the arguments, loads the tokenizer and the model
(tokenizer/, model/), and calls generation.stream() (or generate() for beam search and several
sequences). The last line, on stderr, sums up the run. Bad input gets one line on stderr and exit
code 2 (1 for broken model files); Ctrl-C keeps what was printed and exits with 130.
"""

from __future__ import annotations

import argparse
import os
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
  %(prog)s --prompt "Who wrote Hamlet?" --dola-layers high
  %(prog)s --prompt "Who wrote Hamlet?" --entropy-decoding trough
  %(prog)s --prompt "List two colours." --stop "." --stop $'\\n'
  %(prog)s --model path/to/hf_folder --dtype bfloat16 --device cuda --prompt "Hello"

The last line, on stderr, sums up the run:
  [prompt 35 tokens, 12 new tokens in 0.85 s (14.1 tokens/s), stop: eos]
stop is eos (the model ended its answer), stop_string, max_new_tokens, or interrupted (Ctrl-C).
tokens/s counts the whole call, prompt processing included.
Exit codes: 0 done, 1 unreadable model files, 2 bad arguments or prompt, 130 interrupted.
"""

SAMPLING_ONLY = ("temperature", "top_k", "top_p", "min_p")  # shape the distribution sampled from


class UsageError(Exception):
    """Bad arguments or prompt: one line on stderr, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ("error: ...") instead of the usage block and the error."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def dola_layers_type(text: str) -> str | list[int]:
    """--dola-layers: "low", "high", "bucket0".."bucket2", or layer numbers such as "2,4,6"."""
    if text in ("low", "high") or text.startswith("bucket"):
        return text
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
    add("--model", metavar="PATH", type=Path, help="a Hugging Face style folder (config.json, *.safetensors, tokenizer files); "
        "default: SmolLM2-135M-Instruct from the model zoo, prepared on first use")
    add("--no-chat", action="store_true", help="encode the prompt as plain text instead of formatting it with "
        "the model's chat template (chat is on by default when the tokenizer has a template)")
    add("--system", metavar="TEXT", help="a system message put before the prompt (chat formatting only)")
    add("--dtype", choices=("float32", "bfloat16", "float16"), help="weights and activations dtype "
        "(default: the checkpoint's)")
    add("--device", default="auto", help="cpu, cuda, cuda:1, mps... (default: cuda if available, else cpu)")
    add = parser.add_argument_group("length and randomness").add_argument
    add("--max-new-tokens", metavar="N", type=int, default=256, help="at most this many new tokens (default: 256)")
    add("--seed", metavar="N", type=int, help="seed of the random generator (sampling, entropy random_after); "
        "default: a fresh one, printed in the summary")
    add("--stop", action="append", dest="stop_strings", metavar="TEXT",
        help="end when the generated text contains TEXT (repeatable)")
    add = parser.add_argument_group("decoding (generate()'s options; greedy by default)").add_argument
    add("--do-sample", action="store_true", help="sample tokens instead of taking the most likely one")
    add("--temperature", metavar="T", type=float, help="divide the logits by this (sampling; 0 = greedy)")
    add("--top-k", metavar="K", type=int, help="keep the k most likely tokens (sampling)")
    add("--top-p", metavar="P", type=float, help="keep the smallest set of tokens with probability >= p (sampling)")
    add("--min-p", metavar="P", type=float, help="drop tokens below min_p x the top probability (sampling)")
    add("--repetition-penalty", metavar="X", type=float, help="> 1 discourages tokens already in the text (CTRL paper)")
    add("--no-repeat-ngram-size", metavar="N", type=int, help="never repeat an n-gram of this size")
    add("--num-beams", metavar="N", type=int, help="beam search with this many beams (prints at the end)")
    add("--length-penalty", metavar="X", type=float, help="beam score = log-prob sum / length ** length_penalty")
    add("--early-stopping", type=early_stopping_type, nargs="?", const=True, metavar="{true,false,never}",
        help="beam search: stop once num_beams hypotheses are finished (alone: true)")
    add("--num-return-sequences", metavar="N", type=int, help="print this many sequences (beam search or sampling)")
    add = parser.add_argument_group("layer selection (DoLa, entropy-based layer choice)").add_argument
    add("--dola-layers", metavar="LAYERS", type=dola_layers_type, help="DoLa contrast with these premature layers: low, high, "
        "bucket0..bucket2, or numbers like 2,4,6")
    add("--dola-variant", choices=("paper", "transformers"), help="the paper's formulas (default) or "
        "transformers 4.55.2's implementation, exactly")
    add("--dola-alpha", metavar="A", type=float, help="DoLa's plausibility constraint alpha (default 0.1)")
    add("--entropy-decoding", choices=("trough", "random_after"), help="decode from the layer chosen by "
        "the entropy of its early-exit distribution")
    add("--entropy-normalize", action="store_true", help="entropy / log2(vocab_size)")
    add("--entropy-consistency-alpha", metavar="A", type=float, help="rank layers by -entropy + alpha x cos(h_j, h_N)")
    return parser


OPTION_NAMES = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                "no_repeat_ngram_size", "num_beams", "length_penalty", "early_stopping", "num_return_sequences",
                "stop_strings", "dola_layers", "dola_variant", "dola_alpha", "entropy_decoding",
                "entropy_normalize", "entropy_consistency_alpha")


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


def as_flags(message: str) -> str:
    """Name options as the command line does: "top_p must be ..." -> "--top-p must be ..."."""
    for name in OPTION_NAMES:
        flag = "--" + name.replace("_", "-")
        message = message.replace(f"{name}=True", flag).replace(name, flag)
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


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device name such as cpu, cuda or cuda:1") from None
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
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)


def check_prompt_length(num_prompt: int, max_new_tokens: int, context: int) -> None:
    """Refuse a prompt that cannot fit in the context window, before the weights are loaded."""
    if num_prompt >= context:
        raise UsageError(f"the prompt is {num_prompt} tokens but the model's context window "
                         f"(max_position_embeddings) is {context} tokens: shorten the prompt")
    if num_prompt + max_new_tokens > context:
        raise UsageError(f"the prompt ({num_prompt} tokens) + --max-new-tokens ({max_new_tokens}) exceeds the "
                         f"context window of {context} tokens: use --max-new-tokens {context - num_prompt} or less")


@dataclass
class RunSummary:
    prompt_tokens: int
    new_tokens: int
    seconds: float
    stop: str
    seed: int | None = None  # shown when the run drew random numbers, to repeat it with --seed

    def line(self) -> str:
        rate = self.new_tokens / self.seconds if self.seconds > 0 else 0.0
        seed = f", seed {self.seed}" if self.seed is not None else ""
        return (f"[prompt {self.prompt_tokens} tokens, {self.new_tokens} new tokens in {self.seconds:.2f} s "
                f"({rate:.1f} tokens/s), stop: {self.stop}{seed}]")


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def stream_to_stdout(model, tokenizer, input_ids, options: dict) -> RunSummary:
    """Print each piece of text as soon as its characters are complete; Ctrl-C stops with what was printed."""
    from generation import StopConditions, stream
    from generation.stopping import STOP_REASONS

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
        # The stream ends when the stop rules say so; asking them again on the whole output names the reason.
        stop_rules = StopConditions(input_ids.new_tensor(options["eos_token_id"]), 0, options["max_new_tokens"],
                                    tuple(options.get("stop_strings") or ()), tokenizer)
        stop = STOP_REASONS[int(stop_rules(input_ids.new_tensor([new_ids]))[0])]
    except KeyboardInterrupt:
        pass  # keep what was printed; the summary says "interrupted"
    write("\n")
    return RunSummary(input_ids.shape[1], len(new_ids), time.perf_counter() - start, stop)


def generate_to_stdout(model, tokenizer, input_ids, options: dict) -> RunSummary:
    """Beam search or several sequences: they are known only at the end, so print them then."""
    from generation import generate

    start = time.perf_counter()
    try:
        out = generate(model, input_ids, **options)
    except ValueError as err:
        raise UsageError(as_flags(str(err))) from None
    except KeyboardInterrupt:
        return RunSummary(input_ids.shape[1], 0, time.perf_counter() - start, "interrupted")
    for i, row in enumerate(out.new_tokens.tolist()):
        if len(out.new_tokens) > 1:
            score = f", score {float(out.sequences_scores[i]):.3f}" if out.sequences_scores is not None else ""
            write(f"{'' if i == 0 else chr(10)}--- sequence {i + 1} of {len(out.new_tokens)}{score} ---\n")
        write(tokenizer.decode(row, skip_special_tokens=True) + "\n")
    num_new = sum(generated_length(row, options["eos_token_id"], options["pad_token_id"])
                  for row in out.new_tokens.tolist())
    return RunSummary(input_ids.shape[1], num_new, time.perf_counter() - start, ", ".join(out.stop_reasons))


def generated_length(row: list[int], eos: list[int], pad: int | None) -> int:
    """Tokens a sequence really generated: up to its first EOS, without the padding that fills it after."""
    for i, token in enumerate(row):
        if token in eos:
            return i + 1
    while row and row[-1] == pad:
        row = row[:-1]
    return len(row)


def run(args: argparse.Namespace) -> int:
    """Check everything cheap first, then load the weights and generate."""
    if not args.prompt.strip():
        raise UsageError("the prompt is empty: give some text with --prompt")
    options = decoding_options(args)
    if args.model is not None and not args.model.is_dir():
        raise UsageError(f"model folder {args.model} does not exist: give a Hugging Face style folder "
                         "(config.json, *.safetensors, tokenizer files) or leave out --model for the default model")
    check_options(options)
    import torch

    from model import ModelConfig, load_pretrained
    from model.zoo import ensure_default_model
    from tokenizer import load_tokenizer

    device = resolve_device(args.device)
    folder = args.model or ensure_default_model()  # the default model is built on first use, with progress
    config = ModelConfig.from_json(folder)
    tokenizer = load_tokenizer(folder)
    ids = prompt_ids(tokenizer, args)
    check_prompt_length(len(ids), args.max_new_tokens, config.max_position_embeddings)

    model = load_pretrained(folder, dtype=getattr(torch, args.dtype) if args.dtype else None, device=device)
    generator = torch.Generator(device=device)
    seed = generator.manual_seed(args.seed).initial_seed() if args.seed is not None else generator.seed()
    # The chat template ends a turn with the tokenizer's EOS, which a config may not list (Llama-3).
    eos = list(dict.fromkeys(config.eos_token_ids + [t for t in [tokenizer.eos_token_id] if t is not None]))
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else None)
    options.update(max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=pad, tokenizer=tokenizer,
                   generator=generator)
    input_ids = torch.tensor([ids], device=device)  # (1, T)
    if options.get("num_beams", 1) > 1 or options.get("num_return_sequences", 1) > 1:
        summary = generate_to_stdout(model, tokenizer, input_ids, options)
    else:
        summary = stream_to_stdout(model, tokenizer, input_ids, options)
    if args.do_sample or args.entropy_decoding == "random_after":
        summary.seed = seed
    print(summary.line(), file=sys.stderr)
    return 130 if summary.stop == "interrupted" else 0


def fail(message: str, code: int) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message holds
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (no traceback for bad input or Ctrl-C)."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show a character gets "?"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = lambda msg, *_: print(f"warning: {msg}", file=sys.stderr)
            return run(build_parser().parse_args(argv))
    except UsageError as err:
        return fail(str(err), 2)
    except KeyboardInterrupt:  # before generation started (loading); during it, stream_to_stdout handles it
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, OSError, RuntimeError) as err:  # broken model files (CheckpointError, ConfigError, ...)
        return fail(str(err), 1)


if __name__ == "__main__":
    sys.exit(main())
