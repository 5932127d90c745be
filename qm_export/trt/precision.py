"""Engine precision: what the ONNX says, what was asked for, and which flags that takes.

TensorRT 10 can build weakly typed (``BuilderFlag.FP16``/``BF16`` let it lower float32
layers) or strongly typed (every tensor keeps its ONNX type). TensorRT 11 is strongly typed
only, so the requested precision must already be the ONNX's. Pure functions: the TensorRT
objects are touched only by :mod:`qm_export.trt.builder`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from .versions import TrtVersion, has_weak_precision_flags, is_strongly_typed_only

__all__ = ["PRECISIONS", "PrecisionPlan", "onnx_precision", "plan_precision"]

PRECISIONS = ("fp32", "fp16", "bf16")

# onnx.TensorProto data types (numbers are part of the ONNX standard).
_FLOAT, _FLOAT16, _DOUBLE, _BFLOAT16 = 1, 10, 11, 16
_ONNX_TO_PRECISION = {_FLOAT: "fp32", _DOUBLE: "fp32", _FLOAT16: "fp16", _BFLOAT16: "bf16"}


@dataclass(frozen=True)
class PrecisionPlan:
    """How to build for one precision.

    ``network_flags``/``builder_flags`` are member names of ``NetworkDefinitionCreationFlag``
    and ``BuilderFlag``; ``clear_flags`` are builder flags to clear (TF32, for float32 parity).
    """

    precision: str
    strongly_typed: bool
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    clear_flags: tuple[str, ...]
    notes: tuple[str, ...] = ()


def onnx_precision(model: Any) -> str | None:
    """The float precision of an ``onnx.ModelProto``: that of its float graph inputs, else the
    type holding most initializer elements; ``None`` when neither has a float type.

    Raises ``ValueError`` when the float graph inputs disagree (say fp32 and fp16).
    """
    initializer_names = {t.name for t in model.graph.initializer}
    input_types = {
        _ONNX_TO_PRECISION[vi.type.tensor_type.elem_type]
        for vi in model.graph.input
        if vi.name not in initializer_names and vi.type.tensor_type.elem_type in _ONNX_TO_PRECISION
    }
    if len(input_types) > 1:
        raise ValueError(
            f"the ONNX's float inputs mix precisions {sorted(input_types)}; cast them to one type at export"
        )
    if input_types:
        return input_types.pop()
    counts: Counter[str] = Counter()
    for t in model.graph.initializer:
        if t.data_type in _ONNX_TO_PRECISION:
            n = 1
            for d in t.dims:
                n *= d
            counts[_ONNX_TO_PRECISION[t.data_type]] += max(n, 1)
    return counts.most_common(1)[0][0] if counts else None


def plan_precision(version: TrtVersion, requested: str | None, onnx_prec: str | None) -> PrecisionPlan:
    """Decide typing mode and flags for ``requested`` (``None``: the ONNX's own precision).

    - The ONNX already has the requested precision (or has no float tensors): strongly
      typed on both 10 and 11 (same behaviour on both; ``STRONGLY_TYPED`` is set on 10 only,
      since 11 deprecates and ignores it).
    - TensorRT 10, float32 ONNX, fp16/bf16 requested: weakly typed with ``BuilderFlag.FP16``
      or ``BF16`` (deprecated since 10.12).
    - Anything else (TensorRT 11 with a different ONNX precision; an fp16/bf16 ONNX asked
      to build at another precision): ``ValueError`` saying what to export instead.

    The network flags always include ``PREFER_AOT_PYTHON_PLUGINS``; TF32 is always cleared.
    """
    if requested is not None and requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    target = requested or onnx_prec or "fp32"
    aot = ("PREFER_AOT_PYTHON_PLUGINS",)
    clear = ("TF32",)
    if onnx_prec is None or onnx_prec == target:
        typed = () if is_strongly_typed_only(version) else ("STRONGLY_TYPED",)
        return PrecisionPlan(target, True, typed + aot, (), clear)
    if is_strongly_typed_only(version):
        raise ValueError(
            f"TensorRT {version} builds strongly typed only: the ONNX is {onnx_prec} but --precision is {target}. "
            f"Export the ONNX in {target} (cast the model before export), or build with --precision {onnx_prec}."
        )
    if onnx_prec == "fp32" and has_weak_precision_flags(version):
        note = (
            f"weakly typed {target} build (BuilderFlag.{target.upper()}): "
            "deprecated since TensorRT 10.12 and gone in 11; "
            f"export the ONNX in {target} for a strongly typed build"
        )
        return PrecisionPlan(target, False, aot, (target.upper(),), clear, (note,))
    raise ValueError(
        f"the ONNX is {onnx_prec} but --precision is {target}: TensorRT cannot raise or switch the precision of a "
        f"{onnx_prec} model; export it in {target}, or build with --precision {onnx_prec}"
    )
