"""Benchmark: scratch-lm against transformers 4.55.2 on the default model, in one run, same settings.

    .venv/bin/python scripts/bench.py                      # everything (about 20-30 minutes on 2 cores)
    .venv/bin/python scripts/bench.py --dtypes float32 --cases greedy beam4 --repeats 3

Our model runs accelerated (accel/: this CPU's kernels, stacked projections, the case's weight layout), as
scripts/generate.py runs it by default; --plain times the plain model instead. Each case alternates ours and
transformers' run on the same chat prompt and prints the median tokens/s of
`--repeats` runs, the ratio ours / transformers, and the peak resident memory of the process during the case.
"floor" is the time to stream every weight once through a matrix-vector product on this machine, as
tokens/s: no decoder that reads all its weights per token can beat it. The dtype "int8" is weight-only int8
(accel/quantize.py) with bfloat16 activations, next to transformers in bfloat16. When `llama-cpp-python` is
installed, llama.cpp is timed on the GGUF files given with --gguf (the package's Q4_1 file by default;
scripts/gguf_requantize.py writes F32, F16 and Q8_0 files of the same weights).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generation import generate  # noqa: E402
from accel import WEIGHT_LAYOUTS, Int8Linear, accelerate, choose_weight_layout  # noqa: E402
from accel.matvec import matvec_available  # noqa: E402
from model import load_pretrained  # noqa: E402
from model.fast_loading import release_file_pages  # noqa: E402
from model.zoo import default_model_path  # noqa: E402

PROMPT = "Write a long story about a robot who learns to paint, with many details."
BATCH_PROMPTS = ["Hi", "What is the capital of France?", "Tell me about the moon and the sun and the stars.",
                 "List three fruits.", "Explain gravity to a child in simple words, please.", "Why is the sky blue?",
                 "Write a haiku about autumn leaves falling gently.", "2+2="]

# name -> (our generate() options, transformers' generate() options or None when it has no equivalent)
CASES = {
    "greedy": ({}, {}),
    # Our one-token step compiled (generation/compiled.py) against transformers' usual generate(); the compile
    # itself happens in an untimed first call, whose time the table shows next to the case.
    "greedy_compiled": ({"compile": True}, {}),
    "sampling": ({"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.9},
                 {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.9}),
    "repetition_penalty": ({"repetition_penalty": 1.2}, {"repetition_penalty": 1.2}),
    "beam4": ({"num_beams": 4}, {"num_beams": 4}),
    "beam4_compiled": ({"num_beams": 4, "compile": True}, {"num_beams": 4}),
    # Same algorithm on both sides: our "transformers" variant reproduces transformers' DoLa token for token.
    "dola_high": ({"dola_layers": "high", "dola_variant": "transformers"}, {"dola_layers": "high"}),
    "dola_high_paper": ({"dola_layers": "high"}, None),
    "entropy_trough": ({"entropy_decoding": "trough"}, None),
    "batch8": ({}, {}),
    "prefill512": (None, None),
}
# Our weight layout per case, as generate.py's --weight-layout auto picks it (accel/linear.py,
# choose_weight_layout): by whether the blocks and the head multiply one row per step.
ONE_ROW_CASES = {"greedy", "greedy_compiled", "sampling", "repetition_penalty"}
EARLY_EXIT_CASES = {"dola_high", "dola_high_paper", "entropy_trough"}
DECODE_ONLY_CASES = {"greedy", "greedy_compiled"}  # also print the rate of the one-token steps alone


def layout_for(case: str, forced: str) -> str:
    if forced != "auto":
        return forced
    return choose_weight_layout(one_row_blocks=case in ONE_ROW_CASES | EARLY_EXIT_CASES,
                                one_row_head=case in ONE_ROW_CASES)


def peak_rss_reset() -> None:
    """Reset the kernel's high-water mark of this process's resident memory (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def weight_floor_tokens_per_s(model: torch.nn.Module, repeats: int = 5, pytorch_product: bool = False) -> float:
    """1 / (time to multiply one vector by every weight matrix once), each through its module's own product
    (the one-row kernel where it runs), or through PyTorch's F.linear; the best of `repeats` after a warm-up."""
    mats = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, Int8Linear))]
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            for module in mats:
                x = torch.ones(1, module.in_features, dtype=model.dtype)
                torch.nn.functional.linear(x, module.weight) if pytorch_product else module(x)
            times.append(time.perf_counter() - start)
    return 1.0 / min(times[1:])  # the first pass also maps the weights' pages in


def inputs(tokenizer, case: str, dtype_device: str = "cpu"):
    texts = BATCH_PROMPTS if case == "batch8" else [PROMPT]
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)
             for t in texts]
    return tokenizer.batch_encode(chats)  # left padded: (input_ids, attention_mask)


def time_ours(model, ids, mask, options, new_tokens) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = generate(model, ids, mask, max_new_tokens=new_tokens, eos_token_id=[],
                   generator=torch.Generator().manual_seed(0), **options)
    elapsed = time.perf_counter() - start
    return elapsed, out.sequences


def time_hf(hf, ids, mask, options, new_tokens) -> tuple[float, torch.Tensor]:
    torch.manual_seed(0)
    start = time.perf_counter()
    seq = hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                      do_sample=options.get("do_sample", False), top_k=options.get("top_k", None),
                      **{k: v for k, v in options.items() if k not in ("do_sample", "top_k")})
    return time.perf_counter() - start, seq


def time_prefill(forward, ids) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        forward(ids)
    return time.perf_counter() - start


def run_case(case, model, hf, tokenizer, args):
    ours_opts, hf_opts = CASES[case]
    if case == "prefill512":
        ids = torch.randint(100, 40000, (1, 512), generator=torch.Generator().manual_seed(0))
        ours = [time_prefill(lambda x: model(x, logits_to_keep=1), ids) for _ in range(args.repeats)]
        theirs = [time_prefill(lambda x: hf(x, logits_to_keep=1), ids) for _ in range(args.repeats)] if hf else []
        tps = lambda ts: 512 / statistics.median(ts) if ts else float("nan")
        return tps(ours), tps(theirs), None
    ids, mask = inputs(tokenizer, case)
    new = args.new_tokens * ids.shape[0]
    ours, theirs, same = [], [], None
    if ours_opts.get("compile"):
        first_call, _ = time_ours(model, ids, mask, ours_opts, args.new_tokens)  # compiles the step
        print(f"# {case}: the first, untimed call (compiling included) took {first_call:.1f} s", flush=True)
    for _ in range(args.repeats):
        t, seq_ours = time_ours(model, ids, mask, ours_opts, args.new_tokens)
        ours.append(t)
        if hf is not None and hf_opts is not None:
            t, seq_hf = time_hf(hf, ids, mask, hf_opts, args.new_tokens)
            theirs.append(t)
            if not ours_opts.get("do_sample"):
                same = torch.equal(seq_ours[: seq_hf.shape[0]], seq_hf)
    tps = lambda ts: new / statistics.median(ts) if ts else float("nan")
    if case in DECODE_ONLY_CASES:
        print_decode_only_rate(case, model, ids, mask, ours_opts, args, statistics.median(ours))
    return tps(ours), tps(theirs), same


def print_decode_only_rate(case, model, ids, mask, options, args, full_run: float) -> None:
    """Tokens/s of the one-token steps alone (llama.cpp's "eval" rate): the time of a run that makes one token
    (the prompt's prefill and one step) subtracted. It matters in half precision, whose prefill of a few dozen
    tokens is slow on a CPU without bf16/fp16 matrix instructions (docs/performance.md)."""
    one_token = statistics.median(time_ours(model, ids, mask, options, 1)[0] for _ in range(args.repeats))
    rate = (args.new_tokens - 1) / (full_run - one_token)
    print(f"# {case}: decode only {rate:.1f} tok/s (prefill + first token {one_token:.2f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16", "float16", "int8"],
                        choices=["float32", "bfloat16", "float16", "int8"],
                        help="int8: weight-only int8 with bfloat16 activations (transformers runs bfloat16); "
                        "none: only llama.cpp")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-transformers", action="store_true", help="time only scratch-lm")
    parser.add_argument("--weight-layout", choices=("auto", *WEIGHT_LAYOUTS), default="auto",
                        help="our weight layout (default: per case, as generate.py's auto)")
    parser.add_argument("--plain", action="store_true", help="time the plain model (model/), not accelerated")
    parser.add_argument("--gguf", nargs="*", type=Path, default=None, help="GGUF files for llama.cpp")
    args = parser.parse_args()
    for gguf in args.gguf or []:
        if not gguf.is_file():
            parser.error(f"--gguf {gguf}: no such file (scripts/gguf_requantize.py writes F32/F16/Q8_0 ones)")
    torch.set_num_threads(args.threads)
    from tokenizer import load_tokenizer

    path = args.model or default_model_path()
    tokenizer = load_tokenizer(path)
    kernel = "with" if matvec_available() else "without"
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, {args.new_tokens} new tokens, median of {args.repeats}, {kernel} the one-row "
          f"kernel (accel/matvec.cpp), {'plain' if args.plain else 'accelerated'} model\n")
    print("| dtype | case | our layout | scratch-lm tok/s | transformers tok/s | ratio | same tokens | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for dtype_name in args.dtypes:
        dtype = torch.bfloat16 if dtype_name == "int8" else getattr(torch, dtype_name)
        int8 = dtype_name == "int8"
        if args.plain and int8:
            print("| int8 | (int8 is an accelerator option: not timed with --plain) | | | | | | |")
            continue

        def load(layout: str):
            model = load_pretrained(path, dtype=dtype)
            if args.plain:
                return model
            return accelerate(model, layout=layout, int8=int8, on_copied=release_file_pages)

        hf = None
        if not args.no_transformers:
            from transformers import LlamaForCausalLM

            hf = LlamaForCausalLM.from_pretrained(path, torch_dtype=dtype).eval()
            hf.generation_config.eos_token_id = None  # every run makes exactly --new-tokens tokens
        for layout in ("row_major", "column_major") if dtype == torch.float32 and not args.plain else ("row_major",):
            model = load(layout)
            print(f"| {dtype_name} | floor (weights once) | {layout} | {weight_floor_tokens_per_s(model):.1f} "
                  "| | | | |")
        if not int8:
            model = load("row_major")
            print(f"| {dtype_name} | floor, PyTorch's F.linear | row_major | "
                  f"{weight_floor_tokens_per_s(model, pytorch_product=True):.1f} | | | | |")
        for case in args.cases:
            layout = layout_for(case, args.weight_layout) if dtype == torch.float32 else "row_major"
            del model
            model = load(layout)  # not timed: mapping the file, and (accelerated) re-laying out the matrices
            peak_rss_reset()
            ours, theirs, same = run_case(case, model, hf, tokenizer, args)
            ratio = ours / theirs if theirs == theirs else float("nan")
            shown = "plain" if args.plain else layout
            print(f"| {dtype_name} | {case} | {shown} | {ours:.1f} | {theirs:.1f} | {ratio:.2f} | "
                  f"{'' if same is None else same} | {peak_rss_mib():.0f} |", flush=True)
        del model, hf
    if args.gguf is not None or _has_llama_cpp():
        bench_llama_cpp(args)


def _has_llama_cpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def bench_llama_cpp(args) -> None:
    """llama.cpp on GGUF files of the same weights (optional: pip install llama-cpp-python). Each file runs in a
    process of its own, so that a crash inside llama.cpp (its AMX build segfaulted on Q8_0 and Q4_1 files on a
    Xeon) is reported as a line and the other files are still timed."""
    if not _has_llama_cpp():
        print("\nllama.cpp: not installed (pip install llama-cpp-python, ~12 minutes to compile)")
        return
    import multiprocessing

    from model.zoo import DEFAULT_MODEL, get_model, locate_gguf
    from tokenizer import load_tokenizer

    ids = inputs(load_tokenizer(args.model or default_model_path()), "greedy")[0][0].tolist()  # the same chat prompt
    context = multiprocessing.get_context("spawn")
    for gguf in args.gguf or [locate_gguf(get_model(DEFAULT_MODEL))]:
        reader, writer = context.Pipe(duplex=False)
        worker = context.Process(target=time_llama_cpp, args=(str(gguf), ids, args.new_tokens, args.repeats,
                                                               torch.get_num_threads(), writer))
        worker.start()
        writer.close()  # the worker holds the only writing end now: its death ends the pipe
        try:
            full, one = reader.recv()
        except EOFError:  # it died without sending a result
            full = one = None
        worker.join()
        if worker.exitcode != 0 or full is None:
            print(f"| llama.cpp | {Path(gguf).name} greedy | | crashed (exit code {worker.exitcode}) | | | | |")
            continue
        print(f"| llama.cpp | {Path(gguf).name} greedy | | {args.new_tokens / full:.1f} | | | | |")
        print(f"# llama.cpp {Path(gguf).name}: decode only {(args.new_tokens - 1) / (full - one):.1f} tok/s "
              f"(prefill + first token {one:.2f} s)", flush=True)


def time_llama_cpp(gguf: str, ids: list[int], new_tokens: int, repeats: int, threads: int, results) -> None:
    """Median seconds for the prompt plus `new_tokens` greedy tokens (EOS ignored, like the other cases), and for
    the prompt plus one token; sent through the pipe end `results`."""
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=1024, n_threads=threads, verbose=False)

    def greedy(count: int) -> float:
        llm.reset()
        start = time.perf_counter()
        for made, _ in enumerate(llm.generate(ids, temp=0.0, reset=True), start=1):
            if made == count:
                break
        return time.perf_counter() - start

    greedy(2)  # warm-up
    results.send((statistics.median(greedy(new_tokens) for _ in range(repeats)),
                  statistics.median(greedy(1) for _ in range(repeats))))


if __name__ == "__main__":
    main()
