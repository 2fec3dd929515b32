"""Key/value caches for incremental decoding."""

from .dynamic import DynamicCache, DynamicLayer, kv_cache_bytes

__all__ = ["DynamicCache", "DynamicLayer", "kv_cache_bytes"]
