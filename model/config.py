"""The model configuration: a dataclass whose fields are the keys of a Hugging Face `config.json`.

`ModelConfig.from_dict(json.load(f))` checks every value and raises `ConfigError` naming the bad key.
Nothing is rewritten silently: a derived value (e.g. `head_dim` when the file has none) is computed
once, in `__post_init__`, only where the file leaves it unset, exactly as Hugging Face does.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "gpt_oss", "qwen2", "qwen3")

# Required keys of each rope_scaling type (transformers' modeling_rope_utils).
ROPE_SCALING_KEYS: dict[str, set[str]] = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {"factor"},
}
# rope_scaling keys that hold a length or a ratio: when present (and not null) they must be positive numbers.
ROPE_SCALING_NUMBERS = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings",
                        "beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"}

# Keys that appear in real config.json files but do not change the computation.
IGNORED_KEYS = {
    "architectures", "transformers_version", "torch_dtype", "use_cache", "initializer_range",
    "pretraining_tp", "attention_dropout", "_name_or_path", "output_router_logits",
    "router_aux_loss_coef", "quantization_config", "_attn_implementation_autoset",
}

# transformers' GptOssConfig defaults for keys a gpt_oss config.json may leave out; they differ from LLaMA's.
# (GptOssConfig also forces attention_bias=True whatever the file says; we refuse an explicit false instead.)
GPT_OSS_DEFAULTS: dict[str, Any] = {
    "attention_bias": True, "rms_norm_eps": 1e-5, "rope_theta": 150000.0, "sliding_window": 128,
    "max_position_embeddings": 131072, "head_dim": 64, "num_key_value_heads": 8,
    "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False},
}

# transformers' Qwen2Config / Qwen3Config defaults for keys their config.json may leave out, where they differ from
# LLaMA's (Qwen3's head_dim is its own key: 128 unless given, whatever hidden_size / heads is).
QWEN2_DEFAULTS: dict[str, Any] = {
    "max_position_embeddings": 32768, "num_key_value_heads": 32, "sliding_window": 4096, "max_window_layers": 28,
}
QWEN3_DEFAULTS: dict[str, Any] = {**QWEN2_DEFAULTS, "head_dim": 128}
DEFAULTS_OF_MODEL_TYPE = {"gpt_oss": GPT_OSS_DEFAULTS, "qwen2": QWEN2_DEFAULTS, "qwen3": QWEN3_DEFAULTS}


class ConfigError(ValueError):
    """A config.json value is missing, of the wrong type, or impossible."""


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    model_type: str = "llama"
    torch_dtype: str | None = None
    initializer_range: float = 0.02
    # --- GPT-OSS only (model_type == "gpt_oss"); ignored by LLaMA blocks ---
    num_local_experts: int = 0  # experts per MoE layer
    num_experts_per_tok: int = 0  # top-k experts each token is routed to
    sliding_window: int | None = None  # keys a "sliding_attention" layer sees, the query's own included
    layer_types: list[str] | None = None  # per layer: "sliding_attention" or "full_attention"
    swiglu_limit: float = 7.0  # the experts' clamp on gate and up
    # --- Qwen2 / Qwen3: layers max_window_layers.. are sliding_attention when use_sliding_window is true ---
    use_sliding_window: bool = False
    max_window_layers: int | None = None
    # Keys the file had that this project does not use (kept so nothing is lost on save).
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._check_types()
        if self.num_key_value_heads is None:  # HF: absent means multi-head attention
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:  # HF: absent means hidden_size / heads
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                    f"({self.num_attention_heads}) when head_dim is not given"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.model_type == "gpt_oss" and self.layer_types is None:  # HF: sliding, full, sliding, full, ...
            self.layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention"
                                for i in range(self.num_hidden_layers)]
        if self.model_type in ("qwen2", "qwen3") and self.layer_types is None:  # HF: full below max_window_layers
            sliding = self.use_sliding_window and self.sliding_window is not None
            if sliding and self.max_window_layers is None:
                raise ConfigError("use_sliding_window is true but 'max_window_layers' is null: give the number of "
                                  "full-attention layers below the sliding ones")
            self.layer_types = ["sliding_attention" if sliding and i >= self.max_window_layers else "full_attention"
                                for i in range(self.num_hidden_layers)]
        self._check_values()

    # ------------------------------------------------------------------ checks
    def _check_types(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _POSITIVE_INTS or (f.name in _OPTIONAL_POSITIVE_INTS and value is not None):
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise ConfigError(f"config key '{f.name}' must be a positive integer, got {value!r}")
            if f.name in _NON_NEGATIVE_INTS and value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"config key '{f.name}' must be an integer >= 0, got {value!r}")
            if f.name in _POSITIVE_FLOATS:
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                    note = " (it must be finite)" if value == math.inf else ""
                    raise ConfigError(f"config key '{f.name}' must be a positive number, got {value!r}{note}")
            if f.name in _BOOLS and not isinstance(value, bool):
                raise ConfigError(f"config key '{f.name}' must be true or false, got {value!r}")

    def _check_values(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"config key 'model_type' is {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention"
            )
        if self.head_dim % 2:  # RoPE rotates dimension i with i + head_dim/2 (model/rope.py)
            raise ConfigError(f"head_dim ({self.head_dim}) must be even: rotary embeddings rotate pairs of "
                              "dimensions; check head_dim (or hidden_size / num_attention_heads if it is unset)")
        if self.hidden_act != "silu":
            raise ConfigError(f"config key 'hidden_act' is {self.hidden_act!r}; only 'silu' (SwiGLU) is supported")
        self._check_rope_scaling()
        self._check_token_ids()
        if self.model_type == "gpt_oss":
            self._check_gpt_oss()
        if self.model_type == "qwen2" and self.attention_bias:
            raise ConfigError("qwen2 attention has q/k/v biases and no o_proj bias whatever 'attention_bias' says "
                              "(transformers ignores the key); remove 'attention_bias' from the config")
        if self.layer_types is not None:
            self._check_layer_types()

    def _check_rope_scaling(self) -> None:
        if self.rope_scaling is None:
            return
        if not isinstance(self.rope_scaling, dict):
            raise ConfigError(f"config key 'rope_scaling' must be an object or null, got {self.rope_scaling!r}")
        rope_type = self.rope_type
        if rope_type not in ROPE_SCALING_KEYS:
            raise ConfigError(
                f"rope_scaling type {rope_type!r} is not supported; use one of {sorted(ROPE_SCALING_KEYS)}"
            )
        missing = ROPE_SCALING_KEYS[rope_type] - set(self.rope_scaling)
        if missing:
            raise ConfigError(f"rope_scaling of type {rope_type!r} is missing key(s): {sorted(missing)}")
        for key in sorted(ROPE_SCALING_NUMBERS & set(self.rope_scaling)):
            value = self.rope_scaling[key]
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                      or not 0 < value < math.inf):
                raise ConfigError(f"rope_scaling '{key}' must be a positive number, got {value!r}")
        factor = self.rope_scaling.get("factor", 1.0)
        if not isinstance(factor, (int, float)) or factor < 1.0:
            raise ConfigError(f"rope_scaling 'factor' must be a number >= 1, got {factor!r}")

    def _check_token_ids(self) -> None:
        for key in ("bos_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self, key)
            ids = value if isinstance(value, list) else [value]
            for token_id in ids:
                if token_id is None:
                    continue
                is_id = isinstance(token_id, int) and not isinstance(token_id, bool)
                if not is_id or not 0 <= token_id < self.vocab_size:
                    raise ConfigError(
                        f"config key '{key}' = {value!r} is not a token id in [0, vocab_size={self.vocab_size})"
                    )

    def _check_gpt_oss(self) -> None:
        for key in ("num_local_experts", "num_experts_per_tok"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"gpt_oss config key '{key}' must be a positive integer, got {value!r}")
        if self.num_experts_per_tok > self.num_local_experts:
            raise ConfigError(f"config key 'num_experts_per_tok' ({self.num_experts_per_tok}) cannot exceed "
                              f"'num_local_experts' ({self.num_local_experts})")
        if not self.attention_bias:
            raise ConfigError("gpt_oss attention always has q/k/v/o biases (transformers ignores "
                              "attention_bias=false); set 'attention_bias' to true or remove the key")
        if not isinstance(self.swiglu_limit, (int, float)) or isinstance(self.swiglu_limit, bool) \
                or not self.swiglu_limit > 0:
            raise ConfigError(f"config key 'swiglu_limit' must be a positive number, got {self.swiglu_limit!r}")

    def _check_layer_types(self) -> None:
        if not isinstance(self.layer_types, list) or len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(f"config key 'layer_types' must list one entry per layer "
                              f"(num_hidden_layers={self.num_hidden_layers}), got {self.layer_types!r}")
        bad = set(self.layer_types) - {"sliding_attention", "full_attention"}
        if bad:
            raise ConfigError(f"config key 'layer_types' has unknown entries {sorted(bad)}; "
                              f"use 'sliding_attention' or 'full_attention'")
        if "sliding_attention" in self.layer_types and self.sliding_window is None:
            raise ConfigError("config key 'layer_types' has sliding_attention layers but 'sliding_window' is null; "
                              "give the window length")

    # ------------------------------------------------------------------ helpers
    @property
    def rope_type(self) -> str:
        if not self.rope_scaling:
            return "default"
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, list) else [self.eos_token_id]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        if data.get("model_type") in DEFAULTS_OF_MODEL_TYPE:
            data = {**copy.deepcopy(DEFAULTS_OF_MODEL_TYPE[data["model_type"]]), **data}  # only keys the file leaves out
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if key not in known:
                raise ConfigError(f"config is missing the required key '{key}'")
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"no config.json at {path}: point to a Hugging Face style model folder")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except PermissionError:
            raise ConfigError(f"{path} cannot be read (permission denied): fix its permissions") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path} is not UTF-8 text (byte {err.start}): it is not a config.json") from None
        except RecursionError:
            raise ConfigError(f"{path} is nested too deeply to be a config.json") from None
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **data}


_POSITIVE_INTS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "max_position_embeddings"}
_OPTIONAL_POSITIVE_INTS = {"num_key_value_heads", "head_dim", "sliding_window"}
_NON_NEGATIVE_INTS = {"max_window_layers"}
_POSITIVE_FLOATS = {"rms_norm_eps", "rope_theta", "initializer_range"}
_BOOLS = {"attention_bias", "mlp_bias", "tie_word_embeddings", "use_sliding_window"}
