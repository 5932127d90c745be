"""TensorRT as a runner: an engine (``.engine``/``.plan``) or an ONNX file built on the fly.

Where Polygraphy fits, and where it does not
--------------------------------------------
- **Deserializing**: :class:`polygraphy.backend.trt.EngineFromBytes` (it also initialises
  TensorRT's built-in plugins and allows the host code of version-compatible engines). The
  qm plugins are registered *before* it (:func:`qm_export.trt.builder.register_qm_plugins`),
  since a TensorRT engine looks its plugin creators up while it deserializes.
- **Running**: :class:`polygraphy.backend.trt.TrtRunner`. Dynamic shapes (``set_input_shape``
  per call), device buffers and output allocation (an ``IOutputAllocator``, so outputs whose
  shape depends on the data work too) are its job. Its host output buffers are *reused* by
  the next ``infer``: :meth:`TrtRunner.run` copies them out.
- **Building** an ONNX file: not Polygraphy's ``EngineFromNetwork`` but our own
  :func:`qm_export.trt.builder.build_engine`, the same code as ``qm-export build`` (profile
  from ``--shapes`` or the ONNX metadata, precision per TensorRT 10/11, TF32 off, AOT plugins,
  sidecar), into a temporary folder.
- **Version check**: TensorRT refuses an engine from another version only with a log line and
  a null engine. When the ``.json`` sidecar of ``qm-export build`` sits next to the engine,
  :func:`engine_version_problem` compares the versions first and says so in one line.
- **Layer profiler**: Polygraphy 0.53 sets no ``IProfiler`` and takes none, but its
  ``TrtRunner`` accepts an ``IExecutionContext`` instead of an engine (it then uses that
  context as is). :meth:`TrtRunner.layer_times` creates a second context from the engine, sets
  ``context.profiler`` to a ``trt.IProfiler`` subclass whose ``report_layer_time(layer_name,
  ms)`` forwards to a :class:`LayerTimeRecorder`, and runs it through a second Polygraphy runner, so
  the runner used by :meth:`TrtRunner.run` never carries a profiler. TensorRT calls the
  profiler once per layer for each ``enqueueV3``/``execute_v2`` after the work has finished.
  Layer names are TensorRT's: the ONNX node name for an unfused layer or a plugin (the qm
  plugins are never fused, so ``merge_qm/<op>/...`` keeps its prefix), ``a + b`` for fused
  layers, ``{ForeignNode[first...last]}`` for Myelin regions, reformatting layers with their
  own names; the engine must not have been built with ``ProfilingVerbosity.NONE`` (``build``
  keeps the default, layer names).

TensorRT and Polygraphy are imported only inside :class:`TrtRunner` (lazily). Polygraphy
logs (with TensorRT's own log) to stdout; the runner redirects those lines to stderr.
Everything that needs neither (file kind, sidecar, version comparison, profiler records to
:class:`~qm_export.backends.ort_profile.NodeEvent`) is a pure function here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import BackendUnavailable
from .ort_profile import NodeEvent

__all__ = [
    "TrtRunner",
    "ENGINE_SUFFIXES",
    "TRT_PROVIDER",
    "model_kind",
    "read_sidecar",
    "sidecar_matches_engine",
    "engine_version_problem",
    "EngineVersionError",
    "needs_qm_plugins",
    "LayerTimeRecorder",
    "layer_events",
    "layer_op_type",
    "inspector_layer_types",
]

ENGINE_SUFFIXES = (".engine", ".plan")
#: The ``provider`` of TensorRT's :class:`NodeEvent` entries.
TRT_PROVIDER = "TensorRT"


def model_kind(path: str | os.PathLike[str]) -> str:
    """``"engine"`` for ``.engine``/``.plan``, ``"onnx"`` for ``.onnx``.

    Raises:
        ValueError: any other suffix (named in the message).
    """
    suffix = Path(path).suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    if suffix == ".onnx":
        return "onnx"
    raise ValueError(
        f"the trt backend runs a TensorRT engine (.engine, .plan) or builds one from an .onnx file; "
        f"{str(path)!r} has suffix {suffix or '(none)'!r}"
    )


def read_sidecar(engine_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``ENGINE.json`` sidecar written by ``qm-export build`` next to ``engine_path``,
    or ``None`` when there is none.

    Raises:
        ValueError: the sidecar exists but is not JSON, not of schema ``qm-export.engine/1``, or
            has no ``tensorrt.version`` (the message names the file).
    """
    from qm_export.trt.files import sidecar_path
    from qm_export.trt.sidecar import SIDECAR_SCHEMA

    path = sidecar_path(Path(engine_path))
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"engine sidecar {str(path)!r} is not readable JSON: {err}") from None
    if not isinstance(data, dict) or data.get("schema") != SIDECAR_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"engine sidecar {str(path)!r} is not a {SIDECAR_SCHEMA} document (schema {found!r})")
    version = (data.get("tensorrt") or {}).get("version") if isinstance(data.get("tensorrt"), dict) else None
    if not isinstance(version, str) or not version:
        raise ValueError(f"engine sidecar {str(path)!r} has no tensorrt.version")
    return data


def sidecar_matches_engine(sidecar: Mapping[str, Any], engine_bytes: bytes) -> bool:
    """Whether the sidecar describes these engine bytes (its ``engine.sha256``); a sidecar
    without a hash is taken at its word."""
    want = (sidecar.get("engine") or {}).get("sha256") if isinstance(sidecar.get("engine"), Mapping) else None
    if not want:
        return True
    return hashlib.sha256(engine_bytes).hexdigest() == want


class EngineVersionError(ValueError):
    """An engine built with another TensorRT version than the installed one (one line, both named)."""


def engine_version_problem(sidecar: Mapping[str, Any], installed: str, engine: str = "the engine") -> str | None:
    """One line saying why TensorRT ``installed`` cannot run an engine built as ``sidecar``
    says, or ``None`` when it can.

    A TensorRT engine runs only with the TensorRT version that built it (major.minor.patch.build;
    a suffix such as ``.post1`` is ignored). An engine built with the ``VERSION_COMPATIBLE``
    builder flag also runs on later versions of the same major.
    """
    from qm_export.trt.versions import installed_version

    built_text = str(sidecar["tensorrt"]["version"])
    built, have = installed_version(built_text), installed_version(installed)
    if built == have:
        return None
    flags = sidecar["tensorrt"].get("builder_flags") or []
    if "VERSION_COMPATIBLE" in flags and have.major == built.major and have > built:
        return None
    return (
        f"{engine} was built with TensorRT {built_text} but TensorRT {installed} is installed; "
        "an engine runs only with the TensorRT that built it: rebuild it with qm-export build --force"
    )


def needs_qm_plugins(sidecar: Mapping[str, Any] | None) -> bool:
    """Whether to register the qm plugins before deserializing: unless a sidecar says the
    engine uses none (without a sidecar nobody knows, so register)."""
    if sidecar is None:
        return True
    plugins = sidecar.get("plugins")
    return not isinstance(plugins, Mapping) or bool(plugins.get("used", True))


class LayerTimeRecorder:
    """What TensorRT's profiler callback does with each report: ``(layer_name, ms)`` appended
    to :attr:`records` while :attr:`enabled` (warm-up runs are not recorded).

    :meth:`TrtRunner.layer_times` hands it to a ``trt.IProfiler`` subclass that forwards each call.
    """

    def __init__(self) -> None:
        self.records: list[tuple[str, float]] = []
        self.enabled = True

    def report_layer_time(self, layer_name: str, ms: float) -> None:
        if self.enabled:
            self.records.append((str(layer_name), float(ms)))


def layer_op_type(layer_name: str, types: Mapping[str, str] | None = None) -> str:
    """The op of a TensorRT layer: the qm op of a plugin layer named ``merge_qm/<op>/...``,
    else the engine inspector's layer type when known, else ``"?"``."""
    from qm_export.export.merge_nodes import QM_OPS, QM_PREFIX

    if layer_name.startswith(QM_PREFIX):
        op = layer_name[len(QM_PREFIX):].split("/", 1)[0]
        if op in QM_OPS:
            return op
    if types and layer_name in types:
        return types[layer_name]
    return "?"


def layer_events(
    records: Iterable[tuple[str, float]], types: Mapping[str, str] | None = None, provider: str = TRT_PROVIDER
) -> list[NodeEvent]:
    """Profiler reports ``(layer_name, ms)`` -> :class:`NodeEvent` (``dur_us`` in microseconds),
    one per report and in report order, like ORT's events (sum them with ``node_totals``).

    Raises:
        ValueError: a negative or non-finite time (TensorRT never reports one).
    """
    out = []
    for name, ms in records:
        ms = float(ms)
        if not np.isfinite(ms) or ms < 0:
            raise ValueError(f"layer {name!r}: profiler time {ms} ms is not a finite non-negative number")
        out.append(NodeEvent(str(name), layer_op_type(str(name), types), provider, ms * 1000.0))
    return out


def inspector_layer_types(infos: Iterable[str]) -> dict[str, str]:
    """Layer name -> layer type from ``IEngineInspector.get_layer_information(i, JSON)``.

    Engines built with ``ProfilingVerbosity.DETAILED`` give ``{"Name": ..., "LayerType": ...}``;
    with the default (layer names only) the JSON carries the name alone and nothing is returned
    for that layer. Unparsable entries are skipped.
    """
    types = {}
    for text in infos:
        try:
            info = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            continue
        if isinstance(info, Mapping) and isinstance(info.get("Name"), str) and isinstance(info.get("LayerType"), str):
            types[info["Name"]] = info["LayerType"]
    return types


@contextlib.contextmanager
def _polygraphy_to_stderr() -> Iterator[None]:
    """Polygraphy's logger (and the TensorRT log it relays) prints to stdout; our commands
    print JSON there, so its lines go to stderr instead."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _tensorrt() -> tuple[Any, Any]:
    """``(tensorrt, version)`` or :class:`BackendUnavailable` saying what is missing."""
    from qm_export.trt.builder import import_tensorrt
    from qm_export.trt.prepare import TensorRTUnavailable

    try:
        return import_tensorrt()
    except TensorRTUnavailable as err:
        raise BackendUnavailable("trt", str(err)) from err


def _polygraphy_trt() -> Any:
    try:
        import polygraphy.backend.trt as poly_trt
    except ImportError as err:
        raise BackendUnavailable(
            "trt", f"the trt backend runs engines with Polygraphy, which is not importable ({err}): "
            "pip install 'qm-export[trt]' (or pip install 'polygraphy>=0.49')"
        ) from err
    return poly_trt


class TrtRunner:
    """Run a TensorRT engine with the qm plugins registered.

    Args:
        path: a ``.engine``/``.plan`` file (its ``.json`` sidecar, when present, is checked), or
            an ``.onnx`` file, built on the fly like ``qm-export build`` does.
        build_if_onnx: allow building from ONNX (otherwise an ``.onnx`` path is a ValueError).
        shapes: ``--shapes`` values for that build (default: the ONNX's ``qm_export.profile``
            metadata, else static shapes).

    Attributes:
        engine_bytes: the serialized engine.
        device_memory_bytes: the engine's device memory need (``device_memory_size_v2`` when
            present, else ``device_memory_size``).
        sidecar: the sidecar document (read, or written by the on-the-fly build), or None.
        notes: things worth knowing (a stale sidecar).

    Raises:
        BackendUnavailable: TensorRT (>= 10.9), Polygraphy or the qm plugins' dependencies missing.
        EngineVersionError: the sidecar says another TensorRT version built the engine.
        ValueError: a wrong suffix, ``shapes`` for an engine, an unreadable sidecar.
        FileNotFoundError: ``path`` does not exist.
        qm_export.trt.BuildError: the on-the-fly build or the plugin registration failed.
        RuntimeError: TensorRT could not deserialize the engine.
    """

    name = "trt"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        build_if_onnx: bool = True,
        shapes: Sequence[str] | None = None,
    ) -> None:
        path = Path(path)
        kind = model_kind(path)
        if kind == "onnx" and not build_if_onnx:
            raise ValueError(f"{str(path)!r} is an ONNX file; build an engine with qm-export build, or pass build_if_onnx=True")
        if kind == "engine" and shapes:
            raise ValueError("shapes apply only when building from an .onnx file; an engine's profiles are fixed")
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} does not exist")
        self.path = path
        self.notes: list[str] = []
        self.sidecar: dict[str, Any] | None = None
        sidecar = read_sidecar(path) if kind == "engine" else None  # a bad sidecar fails before TensorRT
        trt, _version = _tensorrt()
        poly_trt = _polygraphy_trt()
        if kind == "onnx":
            self.engine_bytes, self.sidecar = self._build(path, shapes)
        else:
            self.engine_bytes = path.read_bytes()
            if sidecar is not None and not sidecar_matches_engine(sidecar, self.engine_bytes):
                self.notes.append(
                    f"sidecar {path.name}.json describes another engine (SHA-256 differs); its TensorRT version was not checked"
                )
            elif sidecar is not None:
                problem = engine_version_problem(sidecar, str(trt.__version__), engine=str(path))
                if problem is not None:
                    raise EngineVersionError(problem)
                self.sidecar = sidecar
        if needs_qm_plugins(self.sidecar):
            self._register_plugins()
        from polygraphy.exception import PolygraphyException

        try:
            with _polygraphy_to_stderr():
                self.engine = poly_trt.EngineFromBytes(self.engine_bytes)()
        except PolygraphyException as err:
            hint = (
                "" if self.sidecar is not None
                else " (no usable sidecar to say which TensorRT built it: was it another version?)"
            )
            raise RuntimeError(f"TensorRT {trt.__version__} could not deserialize {str(path)!r}{hint}: {err}") from err
        from qm_export.trt.versions import device_memory_bytes

        self.device_memory_bytes = device_memory_bytes(self.engine)
        self._trt = trt
        self._poly_trt = poly_trt
        inputs, outputs = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            (inputs if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
        self.input_names, self.output_names = inputs, outputs
        self._runner = poly_trt.TrtRunner(self.engine, name="qm-export-trt")
        with _polygraphy_to_stderr():
            self._runner.activate()

    @staticmethod
    def _register_plugins() -> None:
        from qm_export.trt.builder import register_qm_plugins

        try:
            register_qm_plugins()
        except ImportError as err:  # qm_export_plugins.PluginDependencyError: triton or tensorrt.plugin missing
            raise BackendUnavailable("trt", f"the qm plugins cannot be registered: {err}") from err

    @staticmethod
    def _build(onnx_path: Path, shapes: Sequence[str] | None) -> tuple[bytes, dict[str, Any]]:
        from qm_export.trt.builder import build_engine
        from qm_export.trt.prepare import BuildRequest, TensorRTUnavailable

        with tempfile.TemporaryDirectory(prefix="qm-trt-") as tmp:
            engine_path = Path(tmp) / (onnx_path.stem + ".engine")
            try:
                result = build_engine(BuildRequest(onnx_path, engine_path, shapes=tuple(shapes or ()), force=True))
            except TensorRTUnavailable as err:
                raise BackendUnavailable("trt", str(err)) from err
            return engine_path.read_bytes(), result.sidecar

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with _polygraphy_to_stderr():
            outs = self._runner.infer({k: np.ascontiguousarray(feeds[k]) for k in self.input_names})
        # Polygraphy reuses its host buffers on the next infer: copy.
        return {k: np.array(outs[k], copy=True) for k in self.output_names}

    def layer_types(self) -> dict[str, str]:
        """Layer name -> type from the engine inspector (empty unless built with detailed verbosity)."""
        trt = self._trt
        inspector = self.engine.create_engine_inspector()
        fmt = trt.LayerInformationFormat.JSON
        return inspector_layer_types(inspector.get_layer_information(i, fmt) for i in range(self.engine.num_layers))

    def layer_times(self, feeds: dict[str, np.ndarray], runs: int = 10, warmup: int = 1) -> list[NodeEvent]:
        """Time every layer with TensorRT's ``IProfiler`` over ``runs`` runs (after ``warmup``
        unrecorded ones): one :class:`NodeEvent` per layer and run, in microseconds."""
        if runs < 1 or warmup < 0:
            raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
        trt = self._trt

        class _Profiler(trt.IProfiler):  # type: ignore[misc,name-defined]
            """TensorRT's documented profiler interface: call the base __init__, override
            report_layer_time(layer_name, ms)."""

            def __init__(self, recorder: LayerTimeRecorder) -> None:
                trt.IProfiler.__init__(self)
                self.recorder = recorder

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.recorder.report_layer_time(layer_name, ms)

        recorder = LayerTimeRecorder()
        profiler = _Profiler(recorder)
        context = self.engine.create_execution_context()
        if not context:
            raise RuntimeError("TensorRT could not create an execution context for profiling")
        context.profiler = profiler
        feed = {k: np.ascontiguousarray(feeds[k]) for k in self.input_names}
        with _polygraphy_to_stderr(), self._poly_trt.TrtRunner(context, name="qm-export-trt-profile") as runner:
            recorder.enabled = False
            for _ in range(warmup):
                runner.infer(feed)
            recorder.enabled = True
            for _ in range(runs):
                runner.infer(feed)
        records = list(recorder.records)
        del context, profiler
        return layer_events(records, self.layer_types())

    def close(self) -> None:
        """Free the runner's device memory (the engine stays loaded until this object goes)."""
        runner = getattr(self, "_runner", None)
        if runner is not None and runner.is_active:
            with _polygraphy_to_stderr():
                runner.deactivate()

    def __enter__(self) -> "TrtRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to free
            pass
