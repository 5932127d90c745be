"""Drive our ``register_plugins()`` through TensorRT's own Python plugin layer, without TensorRT.

TensorRT's plugin layer (``tensorrt_bindings/plugin/*.py`` in the ``tensorrt-cu12-bindings`` /
``tensorrt-cu13-bindings`` wheels: ``register``, ``autotune``, ``aot_impl``, the validation of
the decorated functions, ``AutoTuneCombination`` parsing, ``ShapeExpr`` arithmetic, the plugin
class whose methods TensorRT calls) is pure Python. This script loads the REAL files of one
wheel (fetched by ``scripts/fetch_trt_bindings.py``) as ``tensorrt.plugin`` on top of
:func:`standin_tensorrt`, a stand-in for the compiled ``tensorrt`` module, and calls every
plugin method in the order TensorRT does during parse and AOT build.

What the stand-in fakes, and nothing else:

- the enums the layer reads (``DataType``, ``TensorFormat``, ``DimensionOperation``,
  ``PluginFieldType``, ``QuickPluginCreationRequest``, ``TensorRTPhase``, ``PluginArgType``,
  ``PluginArgDataType``) as Python enums with TensorRT's member names;
- the C++ base classes the layer subclasses (``IPluginV3*``, ``IPluginCreatorV3Quick``,
  ``ISymExpr``) as empty classes, ``Logger`` as a no-op, ``ITensor`` as a marker;
- the value types it builds (``PluginField``, ``PluginFieldCollection``, ``Dims``, ``DimsExprs``,
  ``PluginTensorDesc``, ``DynamicPluginTensorDesc``) as plain containers;
- the plugin registry (``get_plugin_registry``: a dict of creators by (name, version, namespace));
- ``IDimensionExpr`` / ``IExprBuilder``: TensorRT's symbolic dimension expressions, as a small
  expression tree (constants folded, symbols such as the batch ``B`` kept symbolic) that this
  harness later evaluates with the real dims.

Outside ``tensorrt``, one thing is faked: the CUDA driver query of
``qm_export_plugins.aot`` (there is no GPU here) answers "cc 90, driver CUDA 12.4". Triton
really compiles every kernel, and the PTX that TensorRT would embed is what is returned.

Usage (a subprocess, so each wheel gets a fresh ``sys.modules`` and Triton no interpreter mode):

    python tests/trt_plugin_layer.py PLUGIN_ROOT CASES_JSON   # prints one JSON line

``PLUGIN_ROOT`` holds ``tensorrt_bindings/plugin/``; ``CASES_JSON`` is a list of
``{"op", "shapes", "dims"}``: shapes with ints or symbol names, ``dims`` the symbols' values.
"""

from __future__ import annotations

import enum
import importlib.machinery
import json
import operator
import re
import sys
import types
from pathlib import Path
from typing import Any, Callable, Mapping

# --- the stand-in for the compiled ``tensorrt`` module --------------------------------------------


class IDimensionExpr:
    """A symbolic dimension: a constant, a named symbol, or an operation on two expressions."""

    def __init__(self, evaluate: Callable[[Mapping[str, int]], int], constant: int | None, text: str) -> None:
        self._evaluate, self._constant, self.text = evaluate, constant, text

    @classmethod
    def symbol(cls, name: str) -> "IDimensionExpr":
        return cls(lambda dims: int(dims[name]), None, name)

    def is_constant(self) -> bool:
        return self._constant is not None

    def get_constant_value(self) -> int:
        if self._constant is None:
            raise RuntimeError(f"{self.text} is not a build-time constant")
        return self._constant

    def evaluate(self, dims: Mapping[str, int]) -> int:
        """The value with the symbols bound to ``dims``."""
        return self._evaluate(dims)

    def __repr__(self) -> str:
        return f"IDimensionExpr({self.text})"


class DimensionOperation(enum.Enum):
    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    SUB = 4
    EQUAL = 5
    LESS = 6
    FLOOR_DIV = 7
    CEIL_DIV = 8


_OPS: dict[DimensionOperation, Callable[[int, int], int]] = {
    DimensionOperation.SUM: operator.add,
    DimensionOperation.PROD: operator.mul,
    DimensionOperation.MAX: max,
    DimensionOperation.MIN: min,
    DimensionOperation.SUB: operator.sub,
    DimensionOperation.EQUAL: lambda a, b: int(a == b),
    DimensionOperation.LESS: lambda a, b: int(a < b),
    DimensionOperation.FLOOR_DIV: operator.floordiv,
    DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b),
}


class IExprBuilder:
    """``constant`` and ``operation``, folding constants as TensorRT does."""

    def constant(self, value: int) -> IDimensionExpr:
        return IDimensionExpr(lambda dims: value, int(value), str(value))

    def operation(self, op: DimensionOperation, a: IDimensionExpr, b: IDimensionExpr) -> IDimensionExpr:
        fn = _OPS[op]
        if a.is_constant() and b.is_constant():
            return self.constant(fn(a.get_constant_value(), b.get_constant_value()))
        return IDimensionExpr(lambda dims: fn(a.evaluate(dims), b.evaluate(dims)), None,
                              f"{op.name}({a.text}, {b.text})")


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10
    E8M0 = 11


class TensorFormat(enum.Enum):
    LINEAR = 0
    CHW2 = 1
    HWC8 = 2
    CHW4 = 3
    CHW16 = 4
    CHW32 = 5
    DHWC8 = 6
    CDHW32 = 7
    HWC = 8
    DLA_LINEAR = 9
    DLA_HWC4 = 10
    HWC16 = 11
    DHWC = 12


PluginFieldType = enum.Enum(
    "PluginFieldType", "FLOAT16 FLOAT32 FLOAT64 INT8 INT16 INT32 CHAR DIMS UNKNOWN BF16 INT64 FP8 INT4 FP4"
)
QuickPluginCreationRequest = enum.Enum(
    "QuickPluginCreationRequest", "UNKNOWN PREFER_JIT PREFER_AOT STRICT_JIT STRICT_AOT"
)
TensorRTPhase = enum.Enum("TensorRTPhase", "BUILD RUNTIME")
PluginArgType = enum.Enum("PluginArgType", "INT")
PluginArgDataType = enum.Enum("PluginArgDataType", "INT8 INT16 INT32")


class _Base:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


class Logger(_Base):
    WARNING, INFO, VERBOSE, ERROR = 2, 3, 4, 1

    def log(self, severity: int, message: str) -> None:
        pass


class Dims(tuple):
    MAX_DIMS = 8

    def __new__(cls, arg: Any = 0) -> "Dims":
        return super().__new__(cls, (0,) * arg if isinstance(arg, int) else tuple(arg))


class DimsExprs(list):
    def __init__(self, n: int) -> None:
        super().__init__([None] * n)


class PluginTensorDesc:
    def __init__(self) -> None:
        self.type, self.format, self.scale, self.dims = DataType.FLOAT, TensorFormat.LINEAR, 1.0, Dims()


class DynamicPluginTensorDesc:
    def __init__(self, desc: PluginTensorDesc, min: tuple, max: tuple, opt: tuple) -> None:  # noqa: A002
        self.desc, self.min, self.max, self.opt = desc, Dims(min), Dims(max), Dims(opt)


class PluginField:
    def __init__(self, name: str = "", data: Any = None, type: Any = None) -> None:  # noqa: A002
        self.name, self.data, self.type = name, data, type


class PluginFieldCollection(list):
    pass


class _Registry:
    def __init__(self) -> None:
        self.creators: dict[tuple[str, str, str], Any] = {}

    def register_creator(self, creator: Any, namespace: str) -> bool:
        self.creators[(creator.name, creator.plugin_version, namespace)] = creator
        return True

    def get_creator(self, name: str, version: str, namespace: str = "") -> Any:
        return self.creators.get((name, version, namespace))


def standin_tensorrt(plugin_root: Path, version: str) -> types.ModuleType:
    """A ``tensorrt`` module (see the module docstring) whose ``tensorrt.plugin`` subpackage is
    the real one under ``plugin_root/tensorrt_bindings/plugin``. Installed in ``sys.modules``."""
    import numpy as np

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.__path__ = [str(plugin_root / "tensorrt_bindings")]  # so `tensorrt.plugin` is the real layer
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None, is_package=True)
    trt.__spec__.submodule_search_locations = trt.__path__
    names = {
        "IDimensionExpr": IDimensionExpr, "IExprBuilder": IExprBuilder, "DimensionOperation": DimensionOperation,
        "DataType": DataType, "TensorFormat": TensorFormat, "PluginFieldType": PluginFieldType,
        "QuickPluginCreationRequest": QuickPluginCreationRequest, "TensorRTPhase": TensorRTPhase,
        "PluginArgType": PluginArgType, "PluginArgDataType": PluginArgDataType, "Logger": Logger, "Dims": Dims,
        "DimsExprs": DimsExprs, "PluginTensorDesc": PluginTensorDesc,
        "DynamicPluginTensorDesc": DynamicPluginTensorDesc, "PluginField": PluginField,
        "PluginFieldCollection": PluginFieldCollection,
    }
    for name, value in names.items():
        setattr(trt, name, value)
    for name in ("IPluginV3", "IPluginV3QuickCore", "IPluginV3QuickBuild", "IPluginV3QuickRuntime",
                 "IPluginV3QuickAOTBuild", "IPluginCreatorV3Quick", "ISymExpr", "ITensor"):
        setattr(trt, name, type(name, (_Base,), {}))
    registry = _Registry()
    trt.get_plugin_registry = lambda: registry
    trt.float32, trt.float16, trt.bfloat16 = DataType.FLOAT, DataType.HALF, DataType.BF16
    trt.int32, trt.int64, trt.int8, trt.bool = DataType.INT32, DataType.INT64, DataType.INT8, DataType.BOOL
    _np = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32,
           DataType.INT64: np.int64, DataType.INT8: np.int8, DataType.BOOL: np.bool_}
    trt.nptype = lambda dtype: _np[dtype]
    sys.modules["tensorrt"] = trt
    return trt


# --- the driver: TensorRT's calls, in its order -----------------------------------------------------


def _dims_exprs(shape: list, builder: IExprBuilder) -> DimsExprs:
    exprs = DimsExprs(len(shape))
    for i, d in enumerate(shape):
        exprs[i] = builder.constant(d) if isinstance(d, int) else IDimensionExpr.symbol(d)
    return exprs


def _dynamic_desc(dtype: DataType, shape: list, dims: Mapping[str, int]) -> DynamicPluginTensorDesc:
    desc = PluginTensorDesc()
    desc.type, desc.format = dtype, TensorFormat.LINEAR
    desc.dims = Dims(d if isinstance(d, int) else -1 for d in shape)
    real = tuple(d if isinstance(d, int) else dims[d] for d in shape)
    return DynamicPluginTensorDesc(desc, real, real, real)


class _ArgSetter:
    def __init__(self) -> None:
        self.nbSymExprs, self.exprs = 0, {}

    def __setitem__(self, i: int, value: Any) -> None:
        self.exprs[i] = value


def drive(trt: types.ModuleType, op: str, shapes: list[list], dims: Mapping[str, int]) -> dict[str, Any]:
    """Everything TensorRT asks plugin ``qm::op`` for, parse then AOT build, with input shapes
    ``shapes`` (ints, or symbols bound by ``dims``). Returns what came back, evaluated."""
    creator = trt.get_plugin_registry().get_creator(op, "1", "qm")
    try:  # no preference with both implementations: the layer must refuse (PREFER_AOT_... is needed)
        creator.create_plugin(op, "qm", PluginFieldCollection([]), TensorRTPhase.BUILD,
                              QuickPluginCreationRequest.UNKNOWN)
        refusal = None
    except ValueError as exc:
        refusal = str(exc)
    plugin = creator.create_plugin(op, "qm", PluginFieldCollection([]), TensorRTPhase.BUILD,
                                   QuickPluginCreationRequest.PREFER_AOT)
    n_in, n_out = len(shapes), plugin.get_num_outputs()
    builder = IExprBuilder()
    out: dict[str, Any] = {"op": op, "plugin_class": type(plugin).__name__, "refusal_without_preference": refusal}
    combos = None
    for float_type in _input_types(op):
        # Parse: output types from fake shape expressions, then output shapes from real ones.
        out_types = plugin.get_output_data_types(float_type, [len(s) for s in shapes])
        out_exprs = plugin.get_output_shapes([_dims_exprs(s, builder) for s in shapes], [], builder)
        out_shapes = [[e.evaluate(dims) for e in exprs] for exprs in out_exprs]
        # Build: the format combinations, then per combination configure, tactic, launch, kernel.
        in_descs = [_dynamic_desc(t, s, dims) for t, s in zip(float_type, shapes)]
        out_descs = [_dynamic_desc(t, [str(i) for i in range(len(s))], {str(i): v for i, v in enumerate(s)})
                     for t, s in zip(out_types, out_shapes)]
        supported = plugin.get_supported_format_combinations(in_descs + out_descs, n_in)
        width = n_in + n_out
        combos = [tuple(d.type.name for d in supported[i:i + width]) for i in range(0, len(supported), width)]
        for combo in combos:
            if tuple(t.name for t in float_type) != combo[:n_in]:
                continue
            types_in_out = [DataType[n] for n in combo]
            ins = [_dynamic_desc(t, s, dims) for t, s in zip(types_in_out[:n_in], shapes)]
            outs = [_dynamic_desc(t, [str(i) for i in range(len(s))], {str(i): v for i, v in enumerate(s)})
                    for t, s in zip(types_in_out[n_in:], out_shapes)]
            plugin.configure_plugin(ins, outs)
            tactics = plugin.get_valid_tactics()
            plugin.set_tactic(tactics[0] if tactics else 0)
            launch, setter = types.SimpleNamespace(), _ArgSetter()
            plugin.get_launch_params([_dims_exprs(s, builder) for s in shapes], ins + outs, n_in, launch, setter,
                                     builder)
            name, ptx = plugin.get_kernel([d.desc for d in ins], [d.desc for d in outs])
            ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
            entry = re.search(r"\.entry\s+(\w+)\s*\(([^)]*)\)", ptx)
            out.setdefault("launches", []).append({
                "combo": list(combo),
                "output_types": [t.name for t in out_types],
                "output_shapes": out_shapes,
                "kernel": name,
                "entry": entry.group(1),
                "entry_params": re.findall(r"\.param\s+\.(\w+)", entry.group(2)),
                "ptx_version": re.search(r"^\s*\.version\s+(\S+)", ptx, re.M).group(1),
                "ptx_target": re.search(r"^\s*\.target\s+(\S+)", ptx, re.M).group(1),
                "grid": [getattr(launch, k).expr.evaluate(dims) for k in ("grid_x", "grid_y", "grid_z")],
                "block": [getattr(launch, k).expr.evaluate(dims) for k in ("block_x", "block_y", "block_z")],
                "shared_mem": launch.shared_mem.expr.evaluate(dims),
                "scalars": [setter.exprs[i].expr.evaluate(dims) for i in range(setter.nbSymExprs)],
                "scalar_types": [setter.exprs[i].dtype.name for i in range(setter.nbSymExprs)],
            })
    out["combinations"] = [list(c) for c in combos or []]
    return out


def _input_types(op: str) -> list[list[DataType]]:
    """The input type lists TensorRT tries: every one of our autotune combinations' inputs."""
    from qm_export_plugins import specs

    n_in = len(specs.kernel_params(op)[0])
    seen: list[list[DataType]] = []
    for combo in specs.expand_type_combinations(specs.AUTOTUNE_TYPES[op]):
        types_in = [DataType[t] for t in combo[:n_in]]
        if types_in not in seen:
            seen.append(types_in)
    return seen


def main(plugin_root: str, cases_json: str) -> None:
    root = Path(plugin_root)
    version = root.name.split("-")[-1]
    trt = standin_tensorrt(root, version)
    import qm_export_plugins
    from qm_export_plugins import aot
    from qm_export_plugins.cuda import CudaDevice

    aot.query_device = lambda: CudaDevice(90, 12040, "stand-in: cc 9.0, driver CUDA 12.4")
    ids = qm_export_plugins.register_plugins()
    results = [drive(trt, c["op"], c["shapes"], c["dims"]) for c in json.loads(cases_json)]
    print(json.dumps({"ids": ids, "results": results}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
