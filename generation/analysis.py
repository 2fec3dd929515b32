"""Figures of what the layers did during generation: entropy and JSD heat maps, a logit-lens table.

    out = generate(model, ids, entropy_decoding="trough", entropy_record_tokens=True, max_new_tokens=20)
    plot_layer_analysis(out.records, tokenizer, "layers.png")

Panels (each drawn when its records are there, for one row of the batch):
  * entropy heat map, step x layer, the chosen layer of each step marked (entropy_per_layer and
    entropy_selected_layer_indices; needs entropy_record_tokens=True);
  * JSD(q_N || q_j) heat map, step x candidate layer, the premature layer marked (any DoLa run);
  * logit lens (nostalgebraist 2020): each layer's top token at the first steps (entropy_per_layer_token_ids).

Matplotlib is used through its object API with the Agg canvas: no pyplot, no global backend switch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .layer_selection import stack_records

PANEL_SIZE = (12.0, 4.0)  # inches per panel unit; the logit-lens table takes two units
TABLE_STEPS = 12  # the logit-lens table shows this many steps at most, so the text stays legible


def plot_layer_analysis(records: dict[str, Any], tokenizer, path: str | Path, row: int = 0, dpi: int = 100) -> Path:
    """Write the panels that `records` allow (out.records of generate()) to a PNG at `path`; return the path.

    records: per-step lists (out.records) or already stacked tensors; tokenizer: anything with .decode(ids).
    """
    stacked = {k: v for k, v in records.items() if isinstance(v, torch.Tensor)}
    stacked.update(stack_records({k: v for k, v in records.items() if not isinstance(v, torch.Tensor)}))
    panels = []  # (draw function, height in panel units)
    if "entropy_per_layer" in stacked:
        panels.append((_entropy_panel, 1))
    if "dola_jsd" in stacked or "dola_layer_score" in stacked:
        panels.append((_jsd_panel, 1))
    if "entropy_per_layer_token_ids" in stacked:
        panels.append((_logit_lens_panel, 2))  # one table row per layer needs the room
    if not panels:
        raise ValueError("no layer records to plot: generate with entropy_decoding=... and entropy_record_tokens=True, "
                         "or with dola_layers=..., and pass out.records")
    rows = next(stacked[k].shape[1] for k in ("entropy_per_layer", "dola_jsd", "dola_layer_score") if k in stacked)
    if not 0 <= row < rows:
        raise ValueError(f"row {row} is outside the batch of {rows} rows recorded")
    heights = [units for _, units in panels]
    figure = Figure(figsize=(PANEL_SIZE[0], PANEL_SIZE[1] * sum(heights)), dpi=dpi, layout="constrained")
    axes = figure.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (panel, _) in zip(axes, panels):
        panel(ax, stacked, tokenizer, row)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    FigureCanvasAgg(figure).print_png(str(path))
    return Path(path)


def _entropy_panel(ax, stacked: dict, tokenizer, row: int) -> None:
    entropy = stacked["entropy_per_layer"][:, row].float()  # (steps, N)
    image = ax.imshow(entropy.T.numpy(), aspect="auto", origin="lower", cmap="viridis",
                      extent=(-0.5, entropy.shape[0] - 0.5, 0.5, entropy.shape[1] + 0.5))
    chosen = stacked["entropy_selected_layer_indices"][:, row]  # (steps,) layers 1..N
    ax.scatter(range(len(chosen)), chosen.tolist(), marker="x", color="red", s=25, label="chosen layer")
    ax.set(title="entropy of each layer's next-token distribution", xlabel="decode step", ylabel="layer")
    ax.legend(loc="upper right", fontsize=8)
    ax.figure.colorbar(image, ax=ax, label="entropy")


def _jsd_panel(ax, stacked: dict, tokenizer, row: int) -> None:
    paper = "dola_jsd" in stacked
    jsd = stacked["dola_jsd" if paper else "dola_layer_score"][:, row].float()  # (steps, L)
    layers = stacked["dola_candidate_layers"][0].tolist()
    image = ax.imshow(jsd.T.numpy(), aspect="auto", origin="lower", cmap="magma")
    premature = stacked["dola_premature_layer"][:, row].tolist()
    ax.scatter(range(len(premature)), [layers.index(j) for j in premature], marker="x", color="cyan", s=25,
               label="premature layer M")
    ax.set_yticks(range(len(layers)), [str(j) for j in layers])
    title = "JSD(q_N || q_j) per candidate layer (DoLa eq. 3)" if paper else \
        "transformers' DoLa score per candidate layer (averaged KL)"
    ax.set(title=title, xlabel="decode step", ylabel="layer")
    ax.legend(loc="upper right", fontsize=8)
    ax.figure.colorbar(image, ax=ax, label="divergence")


def _logit_lens_panel(ax, stacked: dict, tokenizer, row: int) -> None:
    ids = stacked["entropy_per_layer_token_ids"][:TABLE_STEPS, row]  # (steps, N)
    steps, layers = ids.shape
    cells = [[_short(tokenizer.decode([int(ids[s, j])])) for s in range(steps)] for j in reversed(range(layers))]
    table = ax.table(cellText=cells, rowLabels=[str(j + 1) for j in reversed(range(layers))],
                     colLabels=[str(s) for s in range(steps)], cellLoc="center", bbox=[0.0, 0.0, 1.0, 1.0])
    table.auto_set_font_size(False)
    table.set_fontsize(6)
    ax.axis("off")
    ax.set_title("logit lens: each layer's top token (rows: layers, columns: decode steps)")


def _short(text: str, width: int = 8) -> str:
    """A token for a table cell: whitespace made visible, cut to `width` characters."""
    text = text.replace("\n", "\\n").replace(" ", "·")
    return text if len(text) <= width else text[:width - 1] + "…"
