"""What scripts/generate.py needs from the generation package: one flag per generate() option, made from the
option declarations (generation/options.py), the choice of the function to call, and the runs that print text.

Every option with a `cli` parser becomes `--name-with-dashes` (stop_strings also `--stop`); an OptionError is
shown with the flags' names (OptionError.for_command_line). The options without a flag are Python objects
(api_only in their declaration says what stands in for them).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from .layer_selection import LayerSelectionOptions
from .checks import refuse_unsupported
from .options import SWITCH, GenerationOptions, OptionError, option_fields
from .steps import StepNeeds

ROUTING_METRIC = {"entropy": "entropy", "uncertainty": "aleatoric"}  # --strategy -> hybrid's routing_metric
CLI_DEFAULTS = {"max_new_tokens": 256}  # the command line writes longer answers than generate()'s 20 by default


class UsageError(Exception):
    """Bad arguments or prompt: one line on stderr, exit code 2."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser_for(parse):
    """argparse's type= for a declared parser: int, float, str as they are ("invalid int value: 'many'"), the
    others' ValueError messages shown as they are written."""
    if parse in (int, float, str):
        return parse

    def parse_text(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse_text


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per declared option that has a `cli` parser, in two groups; the others are listed in --help."""
    groups = {GenerationOptions: parser.add_argument_group("decoding (generate()'s options, same names; greedy by "
                                                           "default)"),
              LayerSelectionOptions: parser.add_argument_group("layer selection (DoLa, entropy-based layer choice)")}
    layer_names = {f.name for f in fields(LayerSelectionOptions)}
    for f in option_fields():
        cli, group = f.metadata["cli"], groups[LayerSelectionOptions if f.name in layer_names else GenerationOptions]
        if cli is None:
            continue
        default = CLI_DEFAULTS.get(f.name, f.default)
        help_text = f"{f.metadata['help']} (default: {default})".replace("%", "%%")
        names = [flag(f.name), "--stop"] if f.name == "stop_strings" else [flag(f.name)]
        if cli == SWITCH:
            group.add_argument(*names, dest=f.name, action="store_true", default=None, help=help_text)
        elif f.name == "stop_strings":
            group.add_argument(*names, dest=f.name, action="append", metavar=f.metadata["metavar"],
                               help=f"{f.metadata['help']} (repeatable)")
        elif f.name == "early_stopping":
            group.add_argument(*names, dest=f.name, type=_parser_for(cli), nargs="?", const=True,
                               metavar=f.metadata["metavar"], help=f"{help_text}; alone: true")
        else:
            group.add_argument(*names, dest=f.name, type=_parser_for(cli), default=CLI_DEFAULTS.get(f.name),
                               metavar=f.metadata["metavar"], help=help_text)


def api_only_help() -> str:
    """The options without a flag, and what the command line does instead."""
    lines = [f"  {f.name}: {f.metadata['api_only']}" for f in option_fields() if f.metadata["api_only"]]
    return "generate() options without a flag:\n" + "\n".join(lines) + "\n"


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


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """generate()'s keyword arguments for the flags given (left out: its defaults), checked by the package."""
    options = {f.name: getattr(args, f.name) for f in option_fields()
               if f.metadata["cli"] is not None and getattr(args, f.name, None) is not None}
    sampling_only = [f.name for f in fields(GenerationOptions) if f.metadata["sampling_only"] and f.name in options
                     and not (f.name == "top_k" and "penalty_alpha" in options)]
    if sampling_only and not options.get("do_sample"):
        verb = "shapes" if len(sampling_only) == 1 else "shape"
        raise UsageError(f"{', '.join(map(flag, sampling_only))} only {verb} the distribution tokens are sampled "
                         "from: add --do-sample (decoding is greedy by default)")
    if getattr(args, "show_logprobs", False):
        options["logprobs"] = True
    if any(not text for text in options.get("stop_strings") or ()):
        raise UsageError("--stop needs a non-empty text")
    checked = dict(options)
    checked.pop("stop_strings", None)  # needs the tokenizer: checked by generate()
    if checked.get("stop_regex") is not None or checked.pop("stop_on_json", None):
        checked["tokenizer"] = _AnyTokenizer()
    try:
        LayerSelectionOptions(**{f.name: checked.pop(f.name) for f in fields(LayerSelectionOptions)
                                 if f.name in checked})
        GenerationOptions(**checked)
    except OptionError as err:
        raise UsageError(err.for_command_line()) from None
    return options


class _AnyTokenizer:
    """Stands in for the model's tokenizer while the flags are checked, before anything is loaded."""

    def decode(self, ids):
        return ""


def choose_mode(args: argparse.Namespace, options: dict[str, Any]) -> str:
    """stream, at_end (generate()), speculative, routing or profile; refuses options that do not fit the mode."""
    small_models = [args.draft_model is not None, args.self_speculative is not None, args.draft is not None]
    strategy = args.strategy or ("speculative" if any(small_models) else None)
    needs = {"--num-draft-tokens": (args.num_draft_tokens, "speculative"),
             "--num-draft-tokens-schedule": (args.num_draft_tokens_schedule, "speculative"),
             "--self-speculative": (args.self_speculative, "speculative"),
             "--threshold": (args.threshold, "entropy or uncertainty"),
             "--route-share": (args.route_share, "entropy or uncertainty")}
    for name, (value, wanted) in needs.items():
        if value is not None and strategy not in wanted.split(" or "):
            raise UsageError(f"{name} belongs to --strategy {wanted}")
    generation = {k: v for k, v in options.items() if k not in {f.name for f in fields(LayerSelectionOptions)}
                  and k not in ("stop_strings", "stop_regex", "stop_on_json")}
    needs = StepNeeds(hidden_states=args.dola_layers is not None or args.entropy_decoding is not None)
    try:  # the package's refusals, before anything is loaded (the compile notice never precedes an error)
        refuse_unsupported(GenerationOptions(**generation), needs, None, None, None,
                           "assisted" if strategy is not None else "generate")
    except OptionError as err:
        raise UsageError(err.for_command_line()) from None
    except ValueError as err:
        raise UsageError(str(err)) from None
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
    at_end = (args.num_beams or 1) > 1 or (args.num_return_sequences or 1) > 1 or args.penalty_alpha is not None
    return "at_end" if at_end or args.plot is not None or args.show_logprobs else "stream"


# -------------------------------------------------------------------------------------------- the inputs
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


def choose_weight_layout(args: argparse.Namespace) -> str:
    """--weight-layout auto (float32 CPU only; elsewhere the layout changes nothing): accel/linear.py's choice
    for one-row blocks (not beams or speculative verification) and a one-row head (not DoLa / entropy decoding,
    which head one row per early-exit layer)."""
    from accel import choose_weight_layout as fastest_layout

    if args.weight_layout != "auto":
        return args.weight_layout
    if args.int8:
        return "row_major"  # quantize_int8 replaces every matrix by int8 rows: re-laying them out first is wasted
    one_row_blocks = not ((args.num_beams or 1) > 1 or (args.num_return_sequences or 1) > 1
                          or args.draft_model is not None or args.self_speculative is not None
                          or args.draft is not None)
    early_exits = args.dola_layers is not None or args.entropy_decoding is not None
    return fastest_layout(one_row_blocks, one_row_head=not early_exits)
