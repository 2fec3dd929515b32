"""Find and read a model's tokenizer files; ``load_tokenizer(path)`` is the one entry point.

``path`` may be:

- a Hugging Face style folder with ``tokenizer.json`` (byte-level BPE: SmolLM2, Llama-3, Qwen2, GPT-2);
- a folder with ``tokenizer.model`` (SentencePiece: LLaMA-2 family);
- a ``.gguf`` file, or a folder holding exactly one, whose vocabulary and merges are read with ``gguf``.

Next to the vocabulary, ``tokenizer_config.json`` (and ``special_tokens_map.json``, ``chat_template.jinja``)
names the special tokens and carries the chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .base import AddedToken, Tokenizer, TokenizerFileError
from .bpe import BPETokenizer, BytePairModel
from .gguf_vocab import bpe_from_gguf
from .pretokenize import steps_from_json
from .spm import SentencePieceTokenizer

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


def read_json(path: Path) -> Any:
    """Parse a JSON file; a broken file gets an error that names it and the place of the problem."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise TokenizerFileError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}). "
            "Re-download or re-export the tokenizer files."
        ) from None
    except RecursionError:
        raise TokenizerFileError(f"{path} is nested too deeply to be a tokenizer file. Re-download or re-export the "
                         "tokenizer files.") from None
    if not isinstance(data, dict):  # every tokenizer file read here is one JSON object {...}
        raise TokenizerFileError(f"{path} holds a JSON {type(data).__name__}, not an object {{...}}: it is not a "
                         "tokenizer file. Re-download or re-export the tokenizer files.")
    return data


def read_text(path: Path) -> str:
    """A tokenizer file's text; a file we may not read or that is not UTF-8 gets an error naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except PermissionError:
        raise TokenizerFileError(f"{path} cannot be read (permission denied): fix its permissions") from None
    except UnicodeDecodeError as error:
        raise TokenizerFileError(f"{path} is not UTF-8 text (byte {error.start}). Re-download or re-export the tokenizer "
                         "files.") from None


def _token_content(value: Any) -> str | None:
    """A special token in tokenizer_config.json is a string or an AddedToken dict {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def read_tokenizer_config(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json merged with special_tokens_map.json; the chat template from either source."""
    config: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        if (folder / name).is_file():
            config.update(read_json(folder / name))
    for name in SPECIAL_TOKEN_NAMES:
        config[name] = _token_content(config.get(name))
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: [{"name": "default", "template": ...}, ...]
        template = {t["name"]: t["template"] for t in template}.get("default")
    if (folder / "chat_template.jinja").is_file():  # newer transformers save it on its own
        template = read_text(folder / "chat_template.jinja")
    config["chat_template"] = template
    return config


def _added_tokens(entries: list[dict]) -> list[AddedToken]:
    return [AddedToken(int(e["id"]), e["content"], bool(e.get("special", False)),
                       bool(e.get("lstrip", False)), bool(e.get("rstrip", False))) for e in entries]


def _post_processor_tokens(spec: dict | None) -> tuple[list[str], list[str]]:
    """Special tokens the post-processor puts before / after a single sequence ("$A")."""
    if spec is None or spec.get("type") == "ByteLevel":
        return [], []
    if spec.get("type") == "Sequence":
        parts = [_post_processor_tokens(sub) for sub in spec["processors"]]
        return [t for p in parts for t in p[0]], [t for p in parts for t in p[1]]
    if spec.get("type") == "TemplateProcessing":
        prefix, suffix, seen_sequence = [], [], False
        for item in spec["single"]:
            if "Sequence" in item:
                seen_sequence = True
            else:
                (suffix if seen_sequence else prefix).append(item["SpecialToken"]["id"])
        return prefix, suffix
    raise TokenizerFileError(f"post_processor type {spec.get('type')!r} is not supported (ByteLevel, TemplateProcessing).")


def _unicode_forms(spec: dict | None, source: Path) -> list[str]:
    """The Unicode normal forms a ``normalizer`` applies (Qwen2: ["NFC"]); other normalizers are refused."""
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        return [form for sub in spec["normalizers"] for form in _unicode_forms(sub, source)]
    if spec.get("type") in ("NFC", "NFD", "NFKC", "NFKD"):
        return [spec["type"]]
    raise TokenizerFileError(f"{source}: normalizer {spec.get('type')!r} is not supported (NFC, NFD, NFKC, NFKD only).")


def is_byte_level(spec: dict) -> bool:
    """A tokenizer.json describes byte-level BPE when its pre-tokenizer has a ByteLevel step."""
    return spec.get("model", {}).get("type") == "BPE" and "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))


def bpe_from_tokenizer_json(tokenizer_file: Path, spec: dict | None = None) -> BPETokenizer:
    """Build a :class:`BPETokenizer` from a Hugging Face tokenizer.json (``spec``: its parsed content)."""
    spec = read_json(tokenizer_file) if spec is None else spec
    model = spec.get("model", {})
    if not is_byte_level(spec):
        raise TokenizerFileError(
            f"{tokenizer_file} is not a byte-level BPE tokenizer (model {model.get('type')!r}). "
            "For a SentencePiece model, load the folder's tokenizer.model instead."
        )
    if "vocab" not in model or "merges" not in model:
        raise TokenizerFileError(f"{tokenizer_file}: the BPE model has no vocab or merges; the file is incomplete.")
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    config = read_tokenizer_config(tokenizer_file.parent)
    prefix, suffix = _post_processor_tokens(spec.get("post_processor"))
    return BPETokenizer(
        BytePairModel(model["vocab"], merges, model.get("ignore_merges", False), model.get("unk_token")),
        steps_from_json(spec.get("pre_tokenizer")),
        _added_tokens(spec.get("added_tokens", [])),
        unicode_forms=_unicode_forms(spec.get("normalizer"), tokenizer_file),
        prefix_tokens=prefix,
        suffix_tokens=suffix,
        clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        chat_template=config["chat_template"],
        **{name: config[name] for name in SPECIAL_TOKEN_NAMES},
    )


def sentencepiece_from_folder(model_file: Path) -> SentencePieceTokenizer:
    """Build a :class:`SentencePieceTokenizer` from tokenizer.model and the config next to it."""
    config = read_tokenizer_config(model_file.parent)
    decoder = config.get("added_tokens_decoder", {})
    added = _added_tokens([{"id": i, **entry} for i, entry in decoder.items()])
    return SentencePieceTokenizer(
        model_file,
        added,
        add_bos_token=bool(config.get("add_bos_token", True)),
        add_eos_token=bool(config.get("add_eos_token", False)),
        chat_template=config["chat_template"],
        **{name: config[name] for name in SPECIAL_TOKEN_NAMES},
    )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer for a model folder, a tokenizer file, or a GGUF file (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Tokenizer path {path} does not exist.")
    if path.is_file():
        if path.suffix == ".gguf":
            return name_template(bpe_from_gguf(path), path)
        if path.name in ("tokenizer.json", "tokenizer.model"):
            path = path.parent
        else:
            raise TokenizerFileError(f"{path} is not a tokenizer file (expected tokenizer.json, tokenizer.model or .gguf).")
    return _load_from_folder(path)


def check_special_tokens(tokenizer: Tokenizer, folder: Path) -> Tokenizer:
    """A special token named in the config files must be a token: else its id would silently be None."""
    for name in SPECIAL_TOKEN_NAMES:
        token = getattr(tokenizer, name)
        if token is not None and tokenizer.token_to_id(token) is None:
            raise TokenizerFileError(f"{folder}: the config files name {name} {token!r}, which is not in the vocabulary "
                             "or the added tokens; fix tokenizer_config.json / special_tokens_map.json.")
    return tokenizer


def name_template(tokenizer: Tokenizer, source: Path) -> Tokenizer:
    """Remember where the chat template came from, so that its errors name the file."""
    if source.is_dir():
        jinja = source / "chat_template.jinja"
        source = jinja if jinja.is_file() else source / "tokenizer_config.json"
    tokenizer.chat_template_name = f"the chat template of {source}"
    return tokenizer


def _load_from_folder(folder: Path) -> Tokenizer:
    tokenizer_json, sp_model = folder / "tokenizer.json", folder / "tokenizer.model"
    if tokenizer_json.is_file():
        spec = read_json(tokenizer_json)
        if is_byte_level(spec) or not sp_model.is_file():  # LLaMA-2 folders carry both; their json is not
            return name_template(check_special_tokens(bpe_from_tokenizer_json(tokenizer_json, spec), folder), folder)
    if sp_model.is_file():
        return name_template(check_special_tokens(sentencepiece_from_folder(sp_model), folder), folder)
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return name_template(bpe_from_gguf(ggufs[0]), ggufs[0])
    raise FileNotFoundError(
        f"No tokenizer found in {folder}: looked for tokenizer.json, tokenizer.model or a single .gguf file"
        f"{f' (found {len(ggufs)} .gguf files; pass one of them)' if ggufs else ''}. "
        "Point to a Hugging Face style model folder, e.g. the one `python -m model.zoo fetch "
        "smollm2-135m-instruct` writes."
    )
