"""Generation over TensorRT engines of a generation folder (``prefill.engine``,
``decode.engine``, built by ``qm-export build FOLDER``), with the cache kept on the GPU.

Each step binds the previous step's ``present.*`` device buffers (torch CUDA tensors) as the
decode engine's ``past_key_values.*`` addresses and allocates the new ``present.*`` from the
shapes TensorRT infers once the input shapes are set; only the logits are copied to the host.
TensorRT and torch's CUDA are imported lazily; :func:`trt_unavailable` says why this cannot
run here. The profiles of the two builds are pure functions (:func:`generation_build_shapes`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .contract import CACHE_FIELDS, CacheSpec, past_names
from .folder import GenerationFolder

__all__ = ["ENGINES", "TrtGeneration", "trt_unavailable", "generation_build_shapes", "engine_paths"]

ENGINES = {"prefill": "prefill.engine", "decode": "decode.engine"}


def engine_paths(folder: GenerationFolder) -> dict[str, Path]:
    return {k: folder.path / v for k, v in ENGINES.items()}


def trt_unavailable(folder: GenerationFolder) -> str | None:
    """Why TensorRT generation cannot run on ``folder`` here (None when it can)."""
    try:
        from ..trt.builder import import_tensorrt

        import_tensorrt()
    except Exception as err:  # TensorRTUnavailable and what a broken install raises
        return str(err).splitlines()[0]
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device visible to torch (TensorRT generation keeps the cache in CUDA tensors)"
    missing = [p.name for p in engine_paths(folder).values() if not p.is_file()]
    if missing:
        return f"{', '.join(missing)} missing in {folder.path}: build them with 'qm-export build {folder.path}'"
    return None


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def generation_build_shapes(spec: CacheSpec, prompt: dict[str, tuple[tuple[int, ...], ...]]
                            ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``--shapes`` strings of the prefill and decode builds.

    Args:
        spec: the folder's cache spec.
        prompt: ``{"input_ids": (min, opt, max)}`` shapes ``(batch, tokens)`` of the prefill
            (the recipe's build profile, recorded in the prefill's metadata).

    The decode profile takes the prefill's batches; every layer's cache length runs from 1 to
    ``max_positions`` with the prefill's ``opt`` prompt length as ``opt`` (a merged layer
    holds fewer; TensorRT takes any length inside the range).
    """
    if "input_ids" not in prompt or len(prompt["input_ids"]) != 3:
        raise ValueError(f"the prefill profile needs input_ids (min, opt, max), got {sorted(prompt)}")
    lo, opt, hi = prompt["input_ids"]
    if not (len(lo) == len(opt) == len(hi) == 2):
        raise ValueError(f"input_ids shapes must be (batch, tokens), got {lo}, {opt}, {hi}")
    if not (lo[0] <= opt[0] <= hi[0] and lo[1] <= opt[1] <= hi[1]) or hi[1] > spec.max_positions:
        raise ValueError(f"input_ids profile {lo}, {opt}, {hi} is not min <= opt <= max within max_positions="
                         f"{spec.max_positions}")
    prefill = tuple(f"{name}:{_dims(lo)},{_dims(opt)},{_dims(hi)}" for name in ("input_ids", "attention_mask"))
    batches = (lo[0], opt[0], hi[0])
    decode = [f"{name}:{batches[0]}x1,{batches[1]}x1,{batches[2]}x1" for name in ("input_ids", "position_ids")]
    lengths = (1, min(opt[1], spec.max_positions), spec.max_positions)
    for name in past_names(spec.depth):
        field = name.rsplit(".", 1)[-1]
        if field in ("key", "value"):
            dims = [(b, spec.kv_heads, n, spec.head_dim) for b, n in zip(batches, lengths)]
        else:
            dims = [(b, n) for b, n in zip(batches, lengths)]
        decode.append(f"{name}:{','.join(_dims(d) for d in dims)}")
    return prefill, tuple(decode)


def prefill_profile_of(onnx_path: Path) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The prefill's build profile recorded by ``convert`` (``qm_export.profile`` metadata)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "qm_export.profile" not in meta:
        raise ValueError(f"{onnx_path.name} records no build profile (qm_export.profile); pass --shapes")
    profile = json.loads(meta["qm_export.profile"])
    return {name: tuple(tuple(v[k]) for k in ("min", "opt", "max")) for name, v in profile.items()}


class TrtGeneration:
    """Prefill and decode engines as a :class:`~.loop.GenerationBackend` (CUDA, lazily imported)."""

    name = "trt"

    def __init__(self, folder: GenerationFolder) -> None:
        import torch

        from ..trt.builder import import_tensorrt, register_qm_plugins

        trt, _ = import_tensorrt()
        register_qm_plugins()
        self._trt, self._torch = trt, torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.spec = folder.spec
        self._engines, self._contexts = {}, {}
        for key, path in engine_paths(folder).items():
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise ValueError(f"{path}: TensorRT could not deserialize the engine (another TensorRT version or GPU?)")
            self._engines[key], self._contexts[key] = engine, engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self._past = past_names(self.spec.depth)

    def _torch_dtype(self, trt_dtype: Any) -> Any:
        t, torch = self._trt, self._torch
        return {t.float32: torch.float32, t.float16: torch.float16, t.bfloat16: torch.bfloat16,
                t.int64: torch.int64, t.int32: torch.int32}[trt_dtype]

    def _run(self, key: str, feeds: dict[str, Any]) -> tuple[np.ndarray, list[Any]]:
        torch, trt = self._torch, self._trt
        engine, ctx = self._engines[key], self._contexts[key]
        for name, value in feeds.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value)).cuda()
            feeds[name] = tensor
            ctx.set_input_shape(name, tuple(tensor.shape))
            ctx.set_tensor_address(name, tensor.data_ptr())
        outs: dict[str, Any] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                continue
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"{key}.engine: output {name} has an undetermined shape {shape}")
            outs[name] = torch.empty(shape, dtype=self._torch_dtype(engine.get_tensor_dtype(name)), device="cuda")
            ctx.set_tensor_address(name, outs[name].data_ptr())
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"{key}.engine: execute_async_v3 failed")
        self._stream.synchronize()
        logits = outs.pop("logits").float().cpu().numpy()
        return logits, [outs[n] for n in sorted(outs, key=_cache_order)]

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        return self._run("prefill", {"input_ids": input_ids, "attention_mask": attention_mask})

    def decode(self, input_ids: np.ndarray, position_ids: np.ndarray, cache: list[Any]) -> tuple[np.ndarray, list[Any]]:
        if int(np.max(position_ids)) >= self.spec.max_positions:
            raise ValueError(f"position {int(np.max(position_ids))} is past the model's context "
                             f"(max_positions={self.spec.max_positions})")
        return self._run("decode", {"input_ids": input_ids, "position_ids": position_ids, **dict(zip(self._past, cache))})

    def cache_bytes(self, cache: list[Any]) -> int:
        return int(sum(t.numel() * t.element_size() for t in cache))


def _cache_order(name: str) -> tuple[int, int]:
    """``present.{i}.{field}`` in graph order (layer, then key/value/positions/sizes)."""
    _, layer, field = name.split(".")
    return int(layer), CACHE_FIELDS.index(field)
