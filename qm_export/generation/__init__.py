"""Generation over a merged KV cache: the two-graph contract (prefill + decode), its export,
and generation runners for torch, ONNX Runtime and TensorRT."""

from .contract import CACHE_FIELDS, CacheSpec, GenerationModel, flatten_cache, past_names, present_names, unflatten_cache

__all__ = ["CACHE_FIELDS", "CacheSpec", "GenerationModel", "flatten_cache", "past_names", "present_names", "unflatten_cache"]
