"""Generate text from the command line, streamed as it is produced.

    python scripts/generate.py --prompt "What is the capital of France?"
    python scripts/generate.py --help          # every option, with examples

The script is thin: every generate() option has a flag of the same name, made from the option declarations
(generation/options.py, through generation/cli.py, which also chooses the function to call and prints the
runs). Here: the model, prompt and device flags, loading, and the exit codes. Bad input gets one line on
stderr and exit code 2 (1 for broken model files); Ctrl-C keeps what was printed and exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# torch is imported inside the functions that need it; the flags come from the option declarations, which
# import the generation package (and torch with it): --help takes a second or two.
from generation.cli import (UsageError, add_option_flags, add_two_model_arguments, api_only_help,  # noqa: E402
                            check_prompt_length, choose_mode, choose_weight_layout, options_from_args, prompt_ids,
                            resolve_device)
from generation.cli_runs import generate_in_mode  # noqa: E402
from generation.options import OptionError  # noqa: E402

EXAMPLES = """\
examples:
  %(prog)s --prompt "What is the capital of France?"
  %(prog)s --prompt "Write a haiku about rain." --do-sample --temperature 0.7 --top-p 0.9 --seed 0
  %(prog)s --prompt "Once upon a time" --no-chat --max-new-tokens 100 --repetition-penalty 1.2
  %(prog)s --prompt "Name three rivers." --num-beams 4 --num-return-sequences 2
  %(prog)s --prompt "List two colours." --stop "." --stop $'\\n'
  %(prog)s --prompt "Give a JSON object with a name." --stop-on-json --show-logprobs --top-logprobs 3
  %(prog)s --prompt "Describe Paris." --penalty-alpha 0.6 --top-k 4          # contrastive search
  %(prog)s --prompt "Write a poem." --do-sample --typical-p 0.9 --frequency-penalty 0.5 --seed 1
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
stop is eos (the model ended its answer), max_new_tokens, stop_string, stop_regex, json_complete,
max_time, or interrupted (Ctrl-C).
tokens/s counts the whole call, prompt processing included.
Exit codes: 0 done, 1 unreadable model files, 2 bad arguments or prompt, 130 interrupted.
"""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ("error: ...") instead of the usage block and the error."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def build_parser() -> Parser:
    parser = Parser(prog="python scripts/generate.py", description="Generate text with a scratch-lm model; "
                    "the text is streamed to stdout, a summary line goes to stderr.",
                    epilog=api_only_help() + "\n" + EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    add("--plain", action="store_true", help="run the plain model (model/) as the lessons show it; by default the "
        "model is accelerated (accel/: this CPU's one-row kernels, q/k/v and gate/up stacked, the fused RMSNorm "
        "and entropy kernels, the weight layout below): faster, the same tokens up to float rounding")
    add("--weight-layout", choices=("auto", "row_major", "column_major", "column_major_blocks", "packed_head"),
        default="auto", help="how the accelerated model stores float32 CPU weights (accel/linear.py); auto picks "
        "by the options, the kernel and the CPU")
    add("--int8", action="store_true", help="weight-only int8 matrices, activations in --dtype (bfloat16 unless "
        "given; accel/quantize.py); fastest with --compile")
    add("--tensor-parallel", action="store_true", help="split the model across the processes torchrun starts: "
        "torchrun --nproc-per-node N scripts/generate.py --tensor-parallel ...; process 0 prints")
    add = parser.add_argument_group("randomness and output").add_argument
    add("--seed", metavar="N", type=int, help="seed of the random generator (sampling, entropy random_after); "
        "default: a fresh one, printed in the summary")
    add("--show-logprobs", action="store_true", help="after the text, each token's log-probability (with "
        "--top-logprobs N, the N most likely alternatives too)")
    add("--plot", metavar="PNG", type=Path, help="draw the run's layer records (with --dola-layers or "
        "--entropy-decoding) or the --profile to this file (prints the text at the end)")
    add_option_flags(parser)
    add_two_model_arguments(parser.add_argument_group("two models (speculative decoding, hybrid routing)"))
    return parser


def check_folder(flag: str, path: Path | None) -> None:
    if path is not None and not path.is_dir():
        what = "is a file, not a folder" if path.is_file() else "does not exist"
        raise UsageError(f"{flag} folder {path} {what}: give a Hugging Face style folder (config.json, "
                         "*.safetensors, tokenizer files)" + (" or leave out --model for the default model"
                                                              if flag == "--model" else ""))


def load(args, options: dict):
    """Tokenizer, prompt and length checks first (cheap); then the weights. -> (model, draft, tokenizer, ids)."""
    import torch

    from accel import accelerate
    from model import ModelConfig, load_pretrained
    from model.fast_loading import release_file_pages
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
    if args.int8 and args.plain:
        raise UsageError("--int8 is an accelerator option (accel/quantize.py): leave --plain off")
    if args.int8 and config.model_type == "gpt_oss":
        raise UsageError("--int8 supports LLaMA-style models; GPT-OSS keeps its MXFP4 experts: leave --int8 off")
    tokenizer = load_tokenizer(folder)
    ids = prompt_ids(tokenizer, args)
    check_prompt_length(len(ids), args.max_new_tokens, config.max_position_embeddings)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.int8 else None)
    if args.tensor_parallel:
        model = load_split(args, folder, dtype, device)
    else:
        model = load_pretrained(folder, dtype=dtype, device=device)
        if not args.plain:
            accelerate(model, layout=choose_weight_layout(args), int8=args.int8, on_copied=release_file_pages)
    draft = load_pretrained(args.draft_model, dtype=dtype, device=device) if args.draft_model else None
    if draft is not None and not args.plain:
        accelerate(draft, on_copied=release_file_pages)  # a draft makes one row at a time: row-major
    if args.draft == "int8":
        from generation.int8_draft import int8_draft

        draft = int8_draft(model)
    # The chat template ends a turn with the tokenizer's EOS, which a config may not list (Llama-3).
    eos = list(dict.fromkeys(config.eos_token_ids + [t for t in [tokenizer.eos_token_id] if t is not None]))
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else None)
    options.setdefault("eos_token_id", eos)  # --eos-token-id / --pad-token-id, when given, win
    options.setdefault("pad_token_id", pad)
    options.update(max_new_tokens=args.max_new_tokens, tokenizer=tokenizer)
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
    options = options_from_args(args)
    mode = choose_mode(args, options)
    check_folder("--model", args.model)
    check_folder("--draft-model", args.draft_model)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    for flag, path in (("--plot", args.plot), ("--profile", args.profile)):
        check_output_path(flag, path)
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be in 0 .. 2**64 - 1 = {2**64 - 1}, got {args.seed}")
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
            raise UsageError(OptionError(str(err), "compile").for_command_line()) from None
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
            from model.tensor_parallel import close_tensor_parallel

            close_tensor_parallel()


if __name__ == "__main__":
    sys.exit(main())
