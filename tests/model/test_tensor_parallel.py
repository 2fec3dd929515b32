"""Tensor parallelism on the CPU: 2 processes with gloo against one process (model/tensor_parallel.py).

One torchrun launch (tests/model/tensor_parallel_worker.py) runs every check on tiny checkpoints and saves what each
process computed; the tests compare it with the same checkpoint loaded by one process (itself held to
transformers elsewhere, and here to transformers on an unpadded row). Every launch has a timeout: a set-up that
hangs fails the test instead of the suite.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import numpy as np
from safetensors import safe_open

from helpers import copy_default_tokenizer, read_until_printed, save_tiny_gpt_oss, save_tiny_llama
from model import load_pretrained
from model.tensor_parallel import split_range
from tensor_parallel_worker import DECODING, MASK, PROMPTS, decode_all
from test_mxfp4 import save_mxfp4_checkpoint

pytestmark = pytest.mark.slow  # every test starts two gloo processes with torchrun (about 10 s a launch)

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().with_name("tensor_parallel_worker.py")
SCRIPT = ROOT / "scripts" / "generate.py"
LAUNCH_TIMEOUT_S = 300  # two busy cores; a launch takes about 10 s, a hang is cut here
LAST_SHARD = "model-00006-of-00006.safetensors"  # the tiny LLaMA in 20 KB shards: 6 files
MODELS = ("llama", "gpt_oss", "gpt_oss_mxfp4", "llama_uneven", "gpt_oss_uneven")
UNEVEN = {"llama_uneven": 67, "gpt_oss_uneven": 25}  # 6 query / 3 key-value heads; intermediate features
SPLIT = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate_proj.weight", "up_proj.weight",
         "down_proj.weight", "q_proj.bias", "k_proj.bias", "v_proj.bias", "gate_proj.bias", "up_proj.bias", "sinks",
         "experts.gate_up_proj", "experts.gate_up_proj_bias", "experts.down_proj", "_blocks", "_scales")  # split


def torchrun(*args: str, timeout: float = LAUNCH_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tensor_parallel")
    # LLaMA: GQA (4 query, 2 key-value heads), tied head, written in two files (an index and shards).
    hf = save_tiny_llama(root / "llama", tie_word_embeddings=True)
    (root / "llama" / "model.safetensors").unlink()
    hf.save_pretrained(root / "llama", max_shard_size="20KB")
    save_tiny_gpt_oss(root / "gpt_oss")  # sinks, sliding window 4 (the prompts are longer), 4 experts top-2
    # MXFP4 experts, I = 96: each process's half of down_proj's inputs (48) straddles a 32-value block.
    hf = save_tiny_gpt_oss(root / "gpt_oss_mxfp4", intermediate_size=96, num_local_experts=5)
    save_mxfp4_checkpoint(root / "gpt_oss_mxfp4", hf, torch.Generator().manual_seed(2))
    # Counts that do not divide by 2: 3 key-value heads (2 + 1, so 6 query heads go 4 + 2) and odd MLP widths;
    # biases on every LLaMA projection (o_proj's and down_proj's are added once, after the sum).
    hf = save_tiny_llama(root / "llama_uneven", hidden_size=48, num_attention_heads=6, num_key_value_heads=3,
                         intermediate_size=UNEVEN["llama_uneven"], attention_bias=True, mlp_bias=True)
    with torch.no_grad():  # transformers starts biases at zero, where a bias added twice would not show
        for name, param in hf.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))))
    hf.save_pretrained(root / "llama_uneven")
    save_tiny_gpt_oss(root / "gpt_oss_uneven", num_attention_heads=6, num_key_value_heads=3,
                      intermediate_size=UNEVEN["gpt_oss_uneven"])
    save_tiny_llama(root / "one_kv_head", num_key_value_heads=1)  # 1 key-value head cannot split over 2
    # Process 1 reads a copy that lacks one shard; process 0 reads the whole checkpoint.
    shutil.copytree(root / "llama", root / "llama_missing_1")
    (root / "llama_missing_1" / LAST_SHARD).unlink()
    shutil.copytree(root / "llama", root / "llama_missing_0")
    return {path.name: path for path in root.iterdir()}


@pytest.fixture(scope="module")
def results(folders, tmp_path_factory) -> list[dict]:
    """What each of the 2 processes computed, from one launch."""
    out = tmp_path_factory.mktemp("tensor_parallel_out")
    args = [str(WORKER), str(out)]
    for name in MODELS:
        args += ["--model", f"{name}={folders[name]}"]
    args += ["--bad", f"heads={folders['one_kv_head']}",
             "--bad", f"missing_shard={folders['llama'].parent / 'llama_missing_{rank}'}"]
    finished = torchrun(*args)
    if finished.returncode != 0 and KILLED_BY_A_SIGNAL.search(finished.stderr):
        # A process died in native code (gloo's "terminate called without an active exception" at shutdown, which
        # close_tensor_parallel now prevents). Launch once more and say so; a failing check repeats and fails below.
        warnings.warn(f"the tensor-parallel worker was killed by a signal, launched again:\n{report(finished)}")
        finished = torchrun(*args)
    assert finished.returncode == 0, report(finished)
    return [torch.load(out / f"rank{rank}.pt") for rank in range(2)]


KILLED_BY_A_SIGNAL = re.compile(r"exitcode\s*:\s*-\d+")  # torchrun's summary of a child that died by a signal


def report(finished: subprocess.CompletedProcess) -> str:
    """The worker's progress lines (how far each process got) and the end of what it printed on stderr."""
    progress = [line for line in finished.stderr.splitlines() if line.startswith("process ")]
    return "\n".join(progress + ["...", finished.stderr[-3000:]])


@pytest.fixture(scope="module")
def one_process(folders) -> dict[str, dict]:
    """The same checks on the whole model in this process."""
    expected = {}
    for name in MODELS:
        model = load_pretrained(folders[name], dtype=torch.float32)
        with torch.inference_mode():
            expected[name] = {"logits": model(PROMPTS, attention_mask=MASK).logits, "tokens": decode_all(model)}
    return expected


@pytest.mark.parametrize("name", MODELS)
def test_logits_equal_one_process(results, one_process, name):
    for rank in range(2):
        torch.testing.assert_close(results[rank][name]["logits"], one_process[name]["logits"], rtol=1e-5, atol=1e-5)
    assert torch.equal(results[0][name]["logits"], results[1][name]["logits"])  # bitwise: same tokens everywhere


@pytest.mark.parametrize("name", MODELS)
def test_the_plan_applied_to_a_loaded_model_gives_the_same_logits(results, one_process, name):
    for rank in range(2):
        torch.testing.assert_close(results[rank][name]["logits_split_after_loading"], one_process[name]["logits"],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "llama_uneven"])
def test_llama_logits_equal_transformers(results, folders, name):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(folders[name], torch_dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(PROMPTS[1:]).logits  # the unpadded row
    for rank in range(2):
        torch.testing.assert_close(results[rank][name]["logits"][1:], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", list(DECODING))
@pytest.mark.parametrize("name", MODELS)
def test_decoded_tokens_equal_one_process(results, one_process, name, strategy):
    """Greedy, sampling (seed 0 on every process), beam search, DoLa and entropy decoding."""
    for rank in range(2):
        assert torch.equal(results[rank][name]["tokens"][strategy], one_process[name]["tokens"][strategy])


def split_bytes(folder: Path) -> int:
    """Bytes of the tensors the plan splits, from the files' headers (independent of the loader's counting)."""
    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                if name.endswith(SPLIT):
                    piece = handle.get_slice(name)
                    numel = torch.Size(piece.get_shape()).numel()
                    total += numel * {"F32": 4, "U8": 1}[piece.get_dtype()]
    return total


@pytest.mark.parametrize("name", ["llama", "gpt_oss", "gpt_oss_mxfp4"])
def test_each_process_reads_half_of_the_split_tensors(results, folders, name):
    total = split_bytes(folders[name])
    for rank in range(2):
        counted = results[rank][name]
        assert counted["sharded_total"] == total
        # Exactly half; MXFP4's down_proj reads the one 32-value block its half straddles as well.
        assert total / 2 <= counted["sharded_read"] <= total / 2 * (1.1 if "mxfp4" in name else 1.0)
        assert counted["local_heads"] == (2, 1)  # of 4 query and 2 key-value heads


def uneven_share(folder: Path, rank: int, features: int) -> int:
    """Bytes process `rank` of 2 should read: numpy's array_split of the 3 key-value heads (the query heads of
    those groups with them) and of the MLP features, applied to each split tensor's size in the files."""
    kv = len(np.array_split(np.arange(3), 2)[rank])  # 2, then 1 of 3
    own = {"q_proj": kv / 3, "o_proj": kv / 3, "sinks": kv / 3, "k_proj": kv / 3, "v_proj": kv / 3,
           "mlp": len(np.array_split(np.arange(features), 2)[rank]) / features}  # a share of every unit
    total = 0
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        for name in handle.keys():
            if name.endswith(SPLIT):
                nbytes = torch.Size(handle.get_slice(name).get_shape()).numel() * 4
                key = next(key for key in own if key in name)
                assert (nbytes * own[key]).is_integer()
                total += int(nbytes * own[key])
    return total


@pytest.mark.parametrize("name", list(UNEVEN))
def test_uneven_counts_split_by_whole_groups_and_each_process_reads_its_share(results, folders, name):
    shares = [uneven_share(folders[name], rank, UNEVEN[name]) for rank in range(2)]
    assert shares[0] > shares[1] and sum(shares) == split_bytes(folders[name])
    for rank in range(2):
        assert results[rank][name]["sharded_read"] == shares[rank]
        assert results[rank][name]["sharded_total"] == sum(shares)
    assert [results[rank][name]["local_heads"] for rank in range(2)] == [(4, 2), (2, 1)]  # GQA groups of 2
    # The KV cache holds only the local key-value heads: (B, n_kv local, T, head_dim 8).
    assert [results[rank][name]["cached_keys_shape"] for rank in range(2)] == [(2, 2, 8, 8), (2, 1, 8, 8)]


def test_split_range_gives_torch_tensor_split_pieces():
    for count in range(1, 12):
        for world in range(1, count + 1):
            pieces = torch.arange(count).tensor_split(world)
            assert [range(*split_range(count, world, rank)) for rank in range(world)] == \
                [range(int(p[0]), int(p[-1]) + 1) for p in pieces]


def test_fewer_key_value_heads_than_processes_fail_on_every_process_with_the_counts(results):
    for rank in range(2):
        message = results[rank]["heads"]
        assert message.startswith("TensorParallelError") and "num_key_value_heads=1 is fewer than 2" in message


def test_a_shard_missing_on_one_process_fails_on_every_process(results):
    for rank in range(2):
        message = results[rank]["missing_shard"]
        assert "1 of 2 processes failed" in message and "process 1:" in message, message
        assert LAST_SHARD in message and "missing" in message


# ------------------------------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """A tiny random LLaMA with the default model's tokenizer (6 query, 3 key-value heads: split 4 + 2, 2 + 1)."""
    folder = tmp_path_factory.mktemp("tp_chat")
    save_tiny_llama(folder, vocab_size=49152, hidden_size=48, num_attention_heads=6, num_key_value_heads=3,
                    max_position_embeddings=512, initializer_range=0.2, eos_token_id=2)
    return copy_default_tokenizer(folder)


def test_generate_script_prints_once_what_one_process_prints(chat_model, tmp_path):
    args = ["--model", str(chat_model), "--prompt", "Name a colour.", "--max-new-tokens", "12", "--device", "cpu"]
    alone = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    split = torchrun(str(SCRIPT), "--tensor-parallel", *args)
    assert alone.returncode == 0 and split.returncode == 0, split.stderr[-3000:]
    assert alone.stdout.strip() and split.stdout == alone.stdout  # printed once, by process 0
    assert split.stderr.count("[prompt ") == 1


def test_generate_script_without_torchrun_says_how_to_start_it(chat_model):
    result = subprocess.run([sys.executable, str(SCRIPT), "--tensor-parallel", "--model", str(chat_model),
                             "--prompt", "Hi", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.startswith("error:") and "torchrun --nproc-per-node" in result.stderr


def test_generate_script_stops_every_process_on_a_bad_set_up(tmp_path, chat_model):
    folder = tmp_path / "one_kv_head"
    shutil.copytree(chat_model, folder)
    save_tiny_llama(folder, vocab_size=49152, hidden_size=48, num_attention_heads=3, num_key_value_heads=1,
                    max_position_embeddings=512)
    split = torchrun(str(SCRIPT), "--tensor-parallel", "--model", str(folder), "--prompt", "Hi", "--device", "cpu")
    assert split.returncode != 0
    errors = [line for line in split.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "num_key_value_heads=1 is fewer than 2" in errors[0], errors


def test_ctrl_c_ends_every_process_with_the_text_so_far(chat_model):
    """SIGINT to the whole group, as a terminal's Ctrl-C: process 0 keeps what it printed and all processes end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                str(SCRIPT), "--tensor-parallel", "--model", str(chat_model), "--device", "cpu",
                                "--prompt", "Tell me a long story.", "--max-new-tokens", "400"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    printed, reader = read_until_printed(process)
    assert printed, "nothing was printed"
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)  # torchrun and both workers; a hang fails here
    reader.join(timeout=10)
    err = process.stderr.read().decode()
    assert err.count("stop: interrupted]") == 1, err[-3000:]
