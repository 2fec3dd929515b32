"""Key/value caches for incremental decoding."""

from .dynamic import DynamicCache, DynamicLayer, kv_cache_bytes
from .sliding import SlidingWindowLayer, cache_for_config
from .slot import SlotCache
from .static import StaticCache, StaticLayer

__all__ = ["DynamicCache", "DynamicLayer", "SlidingWindowLayer", "SlotCache", "StaticCache", "StaticLayer", "cache_for_config",
           "kv_cache_bytes"]
