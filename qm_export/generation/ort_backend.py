"""Generation in ONNX Runtime over a generation folder's two graphs, with I/O binding.

The cache never goes back to numpy between steps: the prefill's ``present.*`` outputs are
bound as ``OrtValue`` s that ONNX Runtime allocates on the provider's device, and each decode
step binds the previous step's ``OrtValue`` s as its ``past_key_values.*`` inputs. Only the
logits ``(B, vocab)`` are copied out, to choose the next token.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .contract import CACHE_FIELDS, CacheSpec, past_names, present_names
from .folder import GenerationFolder, GenerationFolderError, dtype_name

__all__ = ["OrtGeneration", "check_graphs"]

_ITEMSIZE = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(bfloat16)": 2, "tensor(int64)": 8}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
              "tensor(int64)": "int64"}


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) else None


def check_graphs(spec: CacheSpec, prefill_io: tuple[Sequence[Any], Sequence[Any]],
                 decode_io: tuple[Sequence[Any], Sequence[Any]], where: str = "") -> None:
    """Check that two graphs' inputs/outputs (ORT ``NodeArg`` s: ``.name .shape .type``) form
    one model with ``spec``: the cache names per layer, the heads, head size and dtype of every
    cached key/value, the vocabulary. A decode graph from another model or layer count fails.

    Raises:
        GenerationFolderError: naming the graph, the tensor and both values.
    """
    depth = spec.depth
    dtype = dtype_name(spec.dtype)
    want = {"prefill": (["input_ids", "attention_mask"], ["logits", *present_names(depth)]),
            "decode": (["input_ids", "position_ids", *past_names(depth)], ["logits", *present_names(depth)])}
    for graph, (inputs, outputs) in (("prefill", prefill_io), ("decode", decode_io)):
        names = ([i.name for i in inputs], [o.name for o in outputs])
        for kind, got, expect in (("inputs", names[0], want[graph][0]), ("outputs", names[1], want[graph][1])):
            if got != expect:
                missing = [n for n in expect if n not in got][:3]
                extra = [n for n in got if n not in expect][:3]
                raise GenerationFolderError(
                    f"{where}{graph}.onnx: its {kind} do not match a {depth}-layer generation model "
                    f"(missing {missing}, unexpected {extra}): a graph from another model or layer count?")
        for arg in [*inputs, *outputs]:
            name, shape = arg.name, list(arg.shape)
            field = name.rsplit(".", 1)[-1]
            if name == "logits" and _static(shape[-1]) not in (None, spec.vocab_size):
                raise GenerationFolderError(f"{where}{graph}.onnx: logits have {shape[-1]} entries, the manifest says "
                                            f"vocab_size={spec.vocab_size}")
            if "." in name and field in ("key", "value"):
                heads, dh = _static(shape[1]), _static(shape[3])
                if (heads, dh) != (spec.kv_heads, spec.head_dim) or _ORT_TYPES.get(arg.type) != dtype:
                    raise GenerationFolderError(
                        f"{where}{graph}.onnx: {name} is {_ORT_TYPES.get(arg.type, arg.type)} with {heads} heads of "
                        f"{dh}, the manifest says {dtype} with {spec.kv_heads} heads of {spec.head_dim}: a cache from "
                        "another model")


class OrtGeneration:
    """The prefill and decode sessions of a generation folder (a :class:`~.loop.GenerationBackend`).

    Args:
        folder: a read :class:`~.folder.GenerationFolder`.
        providers: execution providers (default CPU); the cache stays on the first one's device.
        threads: intra-op threads per session.
        io_binding: keep the cache in ``OrtValue`` s between steps (default); False copies it
            through numpy every step (for comparison only).
    """

    name = "ort"

    def __init__(self, folder: GenerationFolder, providers: Sequence[str] | None = None, threads: int | None = None,
                 io_binding: bool = True) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads is not None:
            opts.intra_op_num_threads = threads
        providers = list(providers or ["CPUExecutionProvider"])
        self.prefill_session = ort.InferenceSession(os.fspath(folder.prefill), sess_options=opts, providers=providers)
        self.decode_session = ort.InferenceSession(os.fspath(folder.decode), sess_options=opts, providers=providers)
        self.spec = folder.spec
        check_graphs(self.spec, (self.prefill_session.get_inputs(), self.prefill_session.get_outputs()),
                     (self.decode_session.get_inputs(), self.decode_session.get_outputs()), f"{folder.path}/")
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        self.io_binding = io_binding
        self._present = present_names(self.spec.depth)
        self._past = past_names(self.spec.depth)

    def _run(self, session: Any, feeds: dict[str, Any]) -> tuple[np.ndarray, list[Any]]:
        """Run with I/O binding: numpy feeds are copied in, ``OrtValue`` feeds bound as they
        are; the cache outputs stay ``OrtValue`` s."""
        if not self.io_binding:
            feeds = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in feeds.items()}
            outs = session.run(None, feeds)
            return outs[0], outs[1:]
        import onnxruntime as ort

        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        binding.bind_output("logits", "cpu")
        for name in self._present:
            binding.bind_output(name, self.device)
        session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return outs[0].numpy(), list(outs[1:])

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        logits, cache = self._run(self.prefill_session, {"input_ids": input_ids, "attention_mask": attention_mask})
        return logits.astype(np.float32, copy=False), cache

    def decode(self, input_ids: np.ndarray, position_ids: np.ndarray, cache: list[Any]) -> tuple[np.ndarray, list[Any]]:
        if len(cache) != len(self._past):
            raise ValueError(f"the cache has {len(cache)} tensors; this {self.spec.depth}-layer model's decode graph "
                             f"takes {len(self._past)} ({len(CACHE_FIELDS)} per layer)")
        if int(np.max(position_ids)) >= self.spec.max_positions:
            raise ValueError(f"position {int(np.max(position_ids))} is past the model's context "
                             f"(max_positions={self.spec.max_positions})")
        feeds: dict[str, Any] = {"input_ids": input_ids, "position_ids": position_ids, **dict(zip(self._past, cache))}
        logits, new = self._run(self.decode_session, feeds)
        return logits.astype(np.float32, copy=False), new

    def cache_bytes(self, cache: list[Any]) -> int:
        """Bytes of the cache tensors (``OrtValue`` s, or numpy arrays without I/O binding)."""
        if not self.io_binding:
            return int(sum(v.nbytes for v in cache))
        return int(sum(np.prod(v.shape()) * _ITEMSIZE[v.data_type()] for v in cache))
