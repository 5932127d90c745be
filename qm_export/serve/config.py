"""Triton ``config.pbtxt`` from a model's own inputs and outputs (pure functions, no server).

A model's tensors are read from the file itself: an ONNX graph's inputs and outputs (names,
element types, dims; a named or unknown dim is dynamic, ``-1``), or for a TensorRT engine the
``io_tensors`` that ``qm-export build`` records in its ``.json`` sidecar. With
``max_batch_size > 0`` the first dim of every tensor is the batch axis Triton manages itself, so
it is left out of ``dims`` (Triton's rule); with ``max_batch_size == 0`` dims are the full shape.

The text is written in protobuf text format for ``inference.ModelConfig`` (Triton's
``model_config.proto``); the tests parse every config with ``tritonclient``'s copy of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ENGINE_SUFFIXES",
    "ServeOptions",
    "TensorSpec",
    "model_kind",
    "read_engine_io",
    "read_onnx_io",
    "render_config",
]

#: File suffixes served with ``platform: "tensorrt_plan"``.
ENGINE_SUFFIXES = (".engine", ".plan")

# ONNX TensorProto element type -> Triton data type.
_ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                   6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
                   11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}
# TensorRT DataType name (as the sidecar records it) -> Triton data type.
_TRT_TO_TRITON = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "BF16": "TYPE_BF16", "INT8": "TYPE_INT8",
                  "INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: ``dims`` is the full shape, ``-1`` for a dynamic axis."""

    name: str
    data_type: str  # Triton's, e.g. "TYPE_FP32"
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ServeOptions:
    """What the flags of ``serve-repo`` set in every model's config.

    Attributes:
        max_batch_size: 0 turns Triton's batching off (dims are the full shapes); N > 0 lets
            Triton batch requests up to N along the first axis.
        python_backend: a ``backend: "python"`` model running the ONNX file in ONNX Runtime.
        instances: model instances (``instance_group.count``).
        kind: ``"cpu"`` or ``"gpu"`` (``KIND_CPU`` / ``KIND_GPU``).
        preferred_batch: ``dynamic_batching.preferred_batch_size`` (empty: none).
        queue_delay_us: ``dynamic_batching.max_queue_delay_microseconds`` (microseconds).
        version: the version folder's name (a positive integer).
        gpu_accelerator: ``"tensorrt"`` or ``"cuda"``: the ONNX Runtime backend's
            ``gpu_execution_accelerator`` (``None``: not written).
        threads: ONNX Runtime intra-op threads in the Python backend (0: ONNX Runtime's choice).
        ort_config: ONNX Runtime session config entries for the Python backend
            (``parameters { key: "ort_config:KEY" }``), e.g. ``session.intra_op.allow_spinning=0``.
    """

    max_batch_size: int = 8
    python_backend: bool = False
    instances: int = 1
    kind: str = "cpu"
    preferred_batch: tuple[int, ...] = ()
    queue_delay_us: int = 0
    version: int = 1
    gpu_accelerator: str | None = None
    threads: int = 0
    ort_config: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_batch_size < 0:
            raise ValueError(f"--max-batch-size must be >= 0, not {self.max_batch_size}")
        if self.instances < 1:
            raise ValueError(f"--instances must be >= 1, not {self.instances}")
        if self.kind not in ("cpu", "gpu"):
            raise ValueError(f"--kind must be cpu or gpu, not {self.kind!r}")
        if self.version < 1:
            raise ValueError(f"--version must be a positive integer, not {self.version}")
        if self.queue_delay_us < 0:
            raise ValueError(f"--queue-delay-us must be >= 0, not {self.queue_delay_us}")
        if self.preferred_batch and self.max_batch_size == 0:
            raise ValueError("--preferred-batch needs --max-batch-size > 0 (Triton batches nothing at 0)")
        over = [b for b in self.preferred_batch if b < 1 or b > self.max_batch_size]
        if over:
            raise ValueError(f"--preferred-batch {over[0]} is outside 1..--max-batch-size ({self.max_batch_size})")
        if self.gpu_accelerator not in (None, "tensorrt", "cuda"):
            raise ValueError(f"--gpu-accelerator must be tensorrt or cuda, not {self.gpu_accelerator!r}")
        if self.ort_config and not self.python_backend:
            raise ValueError("--ort-config sets the Python backend's ONNX Runtime session; pass --python-backend")
        if self.gpu_accelerator and (self.python_backend or self.kind != "gpu"):
            raise ValueError("--gpu-accelerator needs --kind gpu and the onnxruntime backend (not --python-backend)")


def model_kind(path: Path) -> str:
    """``"onnx"`` or ``"engine"`` by suffix.

    Raises:
        ValueError: any other suffix (names the file).
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    raise ValueError(f"MODEL {str(path)!r} is neither an ONNX file (.onnx) nor a TensorRT engine (.engine, .plan)")


def read_onnx_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs (initializers excluded) and outputs, without loading external data.

    Raises:
        ValueError: the file is not an ONNX model, or a tensor has a type Triton cannot carry.
    """
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # a DecodeError or a truncated file
        raise ValueError(f"MODEL {str(path)!r} is not a readable ONNX model ({type(exc).__name__})") from None
    initializers = {t.name for t in proto.graph.initializer}

    def spec(value: Any) -> TensorSpec:
        tensor = value.type.tensor_type
        dtype = _ONNX_TO_TRITON.get(tensor.elem_type)
        if dtype is None or not value.type.HasField("tensor_type"):
            raise ValueError(f"MODEL {str(path)!r}: tensor {value.name!r} has a type Triton cannot serve "
                             f"(ONNX elem_type {tensor.elem_type})")
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSpec(value.name, dtype, dims)

    inputs = [spec(v) for v in proto.graph.input if v.name not in initializers]
    outputs = [spec(v) for v in proto.graph.output]
    if not inputs or not outputs:
        raise ValueError(f"MODEL {str(path)!r} has no graph inputs or no outputs")
    return inputs, outputs


def read_engine_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """An engine's tensors from its ``.json`` sidecar (``qm-export build``), no TensorRT needed.

    Raises:
        ValueError: the sidecar is missing, unreadable or lists no tensors.
    """
    sidecar = Path(f"{path}.json")
    if not sidecar.is_file():
        raise ValueError(f"MODEL {str(path)!r}: its sidecar {sidecar.name!r} (written by qm-export build) is missing; "
                         "it names the engine's inputs and outputs")
    try:
        tensors = json.loads(sidecar.read_text())["io_tensors"]
        specs = {"INPUT": [], "OUTPUT": []}
        for t in tensors:
            dtype = _TRT_TO_TRITON.get(str(t["dtype"]).upper())
            if dtype is None:
                raise ValueError(f"MODEL {str(path)!r}: tensor {t['name']!r} has dtype {t['dtype']!r}, "
                                 "which Triton cannot serve")
            specs[str(t["mode"]).upper()].append(TensorSpec(str(t["name"]), dtype, tuple(int(d) for d in t["shape"])))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"MODEL {str(path)!r}: sidecar {sidecar.name!r} is unreadable ({exc})") from None
    if not specs["INPUT"] or not specs["OUTPUT"]:
        raise ValueError(f"MODEL {str(path)!r}: sidecar {sidecar.name!r} lists no inputs or no outputs")
    return specs["INPUT"], specs["OUTPUT"]


def _q(text: str) -> str:
    """A protobuf text-format string literal."""
    return json.dumps(text, ensure_ascii=False)


def _dims(spec: TensorSpec, max_batch_size: int, model: str) -> tuple[int, ...]:
    if max_batch_size == 0:
        return spec.dims or (1,)
    if not spec.dims or spec.dims[0] not in (-1,):
        raise ValueError(f"--max-batch-size {max_batch_size}: {model}'s tensor {spec.name!r} has no dynamic batch "
                         f"axis (shape {list(spec.dims)}); pass --max-batch-size 0")
    return spec.dims[1:] or (1,)


def _tensors(kind: str, specs: list[TensorSpec], max_batch_size: int, model: str) -> list[str]:
    out = []
    for s in specs:
        dims = ", ".join(str(d) for d in _dims(s, max_batch_size, model))
        out.append(f"  {{\n    name: {_q(s.name)}\n    data_type: {s.data_type}\n    dims: [ {dims} ]\n  }}")
    return [f"{kind} [\n" + ",\n".join(out) + "\n]"]


def render_config(name: str, file_name: str, kind: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                  options: ServeOptions) -> str:
    """The ``config.pbtxt`` text of one model.

    Args:
        name: the model's name in the repository (its folder's name).
        file_name: the model file's name inside the version folder (``model.onnx``, ``model.plan``).
        kind: ``"onnx"`` or ``"engine"`` (:func:`model_kind`).
        inputs, outputs: the tensors, full shapes (:func:`read_onnx_io`, :func:`read_engine_io`).
        options: the flags.

    Raises:
        ValueError: ``max_batch_size > 0`` but a tensor has no dynamic first axis (names the flag).
    """
    lines = [f"name: {_q(name)}"]
    if options.python_backend:
        lines.append('backend: "python"')
    elif kind == "onnx":
        lines.append('platform: "onnxruntime_onnx"')
    else:
        lines.append('platform: "tensorrt_plan"')
    if not options.python_backend:  # the Python backend's default file is model.py
        lines.append(f"default_model_filename: {_q(file_name)}")
    lines.append(f"max_batch_size: {options.max_batch_size}")
    lines += _tensors("input", inputs, options.max_batch_size, name)
    lines += _tensors("output", outputs, options.max_batch_size, name)
    gpu = options.kind == "gpu"
    lines.append(f"instance_group [\n  {{\n    count: {options.instances}\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}"
                 "\n  }\n]")
    if options.max_batch_size > 0:
        body = []
        if options.preferred_batch:
            body.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in options.preferred_batch)} ]")
        body.append(f"  max_queue_delay_microseconds: {options.queue_delay_us}")
        lines.append("dynamic_batching {\n" + "\n".join(body) + "\n}")
    lines.append(f"version_policy: {{ specific {{ versions: [ {options.version} ] }} }}")
    if options.gpu_accelerator:
        lines.append("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n"
                     f"      name : {_q(options.gpu_accelerator)}\n    }} ]\n  }}\n}}")
    params: dict[str, str] = {}
    if options.python_backend:
        params = {"onnx_file": file_name, "intra_op_threads": str(options.threads)}
        params.update({f"ort_config:{k}": v for k, v in options.ort_config.items()})
    for key, value in params.items():
        lines.append(f"parameters {{\n  key: {_q(key)}\n  value: {{ string_value: {_q(value)} }}\n}}")
    return "\n".join(lines) + "\n"
