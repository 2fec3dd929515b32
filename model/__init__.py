"""The model: config, layers, the causal LM and checkpoint loading."""

from .causal_lm import CausalLM, CausalLMOutput
from .config import ConfigError, ModelConfig
from .loading import CheckpointError, load_pretrained
from .quantize import quantize_int8

__all__ = ["CausalLM", "CausalLMOutput", "ConfigError", "ModelConfig", "CheckpointError", "load_pretrained", "quantize_int8"]
