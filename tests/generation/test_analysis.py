"""The layer-analysis figure: a PNG of the documented size, with the panels the records allow."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest
import torch

from helpers import save_tiny_llama
from generation import generate
from generation.analysis import plot_layer_analysis
from model import load_pretrained

TOKENIZER = SimpleNamespace(decode=lambda ids: f"tok{ids[0]}\n")


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny4")
    save_tiny_llama(folder, num_hidden_layers=4)
    return load_pretrained(folder)


def test_entropy_records_give_heat_map_and_logit_lens(tiny, tmp_path):
    out = generate(tiny, torch.tensor([[5, 6, 7], [8, 9, 10]]), max_new_tokens=6, eos_token_id=[],
                   entropy_decoding="trough", entropy_record_tokens=True)
    path = plot_layer_analysis(out.records, TOKENIZER, tmp_path / "entropy.png", row=1)
    assert png_size(path) == (1200, 1200)  # 12 x 4 inches per unit at 100 dpi: heat map 1 unit, table 2


def test_dola_records_give_jsd_heat_map(tiny, tmp_path):
    out = generate(tiny, torch.tensor([[5, 6, 7]]), max_new_tokens=5, eos_token_id=[], dola_layers=[0, 1, 2])
    path = plot_layer_analysis(out.records, TOKENIZER, tmp_path / "dola.png", dpi=50)
    assert png_size(path) == (600, 200)


def test_nothing_to_plot_or_a_bad_row_is_refused(tiny, tmp_path):
    out = generate(tiny, torch.tensor([[5, 6, 7]]), max_new_tokens=2, eos_token_id=[], entropy_decoding="trough")
    with pytest.raises(ValueError, match="entropy_record_tokens=True"):
        plot_layer_analysis(out.records, TOKENIZER, tmp_path / "none.png")  # the lazy walk records no table
    out = generate(tiny, torch.tensor([[5, 6, 7]]), max_new_tokens=2, eos_token_id=[], dola_layers="high")
    with pytest.raises(ValueError, match="row 3 is outside the batch of 1"):
        plot_layer_analysis(out.records, TOKENIZER, tmp_path / "row.png", row=3)
    assert not (tmp_path / "none.png").exists()
