"""The model: config, layers, the causal LM and checkpoint loading (the plain math; speed lives in accel/)."""

from .causal_lm import CausalLM, CausalLMOutput
from .config import ConfigError, ModelConfig
from .loading import CheckpointError, load_pretrained

__all__ = ["CausalLM", "CausalLMOutput", "ConfigError", "ModelConfig", "CheckpointError", "load_pretrained"]
