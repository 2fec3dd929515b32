"""DoLa's layer choice as a file: scripts/select_dola_bucket.py writes it, generate() and the CLI read it back.

    generate(model, ids, dola_layers="dola_choice.json")     # the chosen bucket's layers, or plain decoding
    scripts/generate.py --dola-layers dola_choice.json ...

The file (JSON) holds "dola_layers": a list of layer indices, or null when no bucket beat plain decoding on
the validation set (DoLa off), plus what the choice rests on (accuracies, model, data, rule) for the reader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def is_choice_file(value: Any) -> bool:
    return isinstance(value, (str, Path)) and str(value).endswith(".json")


def save_dola_choice(path: str | Path, dola_layers: list[int] | None, **details: Any) -> Path:
    """Write the choice (layers, or None for DoLa off) and its details as JSON; returns the path."""
    Path(path).write_text(json.dumps({"dola_layers": dola_layers, **details}, indent=1) + "\n")
    return Path(path)


def read_dola_choice(path: str | Path) -> list[int] | None:
    """The layers a choice file names, or None (the validation recommended plain decoding)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"dola_layers={str(path)!r}: no such choice file (write one with "
                         "scripts/select_dola_bucket.py --output PATH)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"dola_layers={str(path)!r} is not valid JSON ({err.msg})") from None
    layers = data.get("dola_layers", "missing") if isinstance(data, dict) else "missing"
    if layers is not None and (not isinstance(layers, list) or not layers
                               or not all(isinstance(j, int) and not isinstance(j, bool) for j in layers)):
        raise ValueError(f"{path}: \"dola_layers\" must be a list of layer indices or null (DoLa off), got "
                         f"{layers!r}")
    return layers


def resolve_dola_layers(value: Any) -> Any:
    """generate()'s dola_layers with a choice file replaced by what it holds; other values pass unchanged."""
    return read_dola_choice(value) if is_choice_file(value) else value
