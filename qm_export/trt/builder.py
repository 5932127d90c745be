"""``qm-export build``: ONNX -> TensorRT engine with the qm plugins (TensorRT imported lazily).

The steps: validate the request (:func:`prepare_build`, no TensorRT), import TensorRT and
check its version, check the machine (:mod:`.host`: a CUDA device, the AOT kernel target),
register the qm plugins, parse, configure (profile, precision, TF32 off, workspace, timing
cache), build, and write the engine and its JSON sidecar atomically, then the timing cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..export.files import atomic_output
from .files import atomic_write_bytes, check_writable
from .precision import plan_precision
from .prepare import (
    INSTALL_HINT,
    BuildError,
    BuildRequest,
    PreparedBuild,
    TensorRTUnavailable,
    prepare_build,
    required_network_flags,
)
from .host import aot_kernel_target, check_cuda_device, create_builder, one_line
from .sidecar import cuda_environment, make_sidecar
from .timing_cache import attach_timing_cache, timing_cache_bytes
from .versions import (
    TrtVersion,
    build_version_problem,
    combine_flags,
    device_memory_bytes,
    installed_version,
    missing_flags,
    plugin_version_problem,
)

__all__ = ["BuildResult", "build_engine", "count_plugin_layers", "import_tensorrt", "register_qm_plugins",
           "write_build_outputs"]

Stage = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]


def import_tensorrt() -> tuple[Any, TrtVersion]:
    """``(tensorrt module, its version)``; :class:`TensorRTUnavailable` with what to install
    when it is missing, broken, or older than 10.9."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT is not importable ({exc}). {INSTALL_HINT}") from exc
    except OSError as exc:  # the placeholder wheel or missing CUDA libraries
        raise TensorRTUnavailable(f"TensorRT failed to load its libraries ({exc}). {INSTALL_HINT}") from exc
    version = installed_version(str(getattr(trt, "__version__", "0.0")))
    problem = build_version_problem(version)
    if problem is not None:
        raise TensorRTUnavailable(f"{problem}. {INSTALL_HINT}")
    return trt, version


def register_qm_plugins() -> None:
    """Import ``qm_export_plugins`` and register the qm plugins with TensorRT."""
    try:
        import qm_export_plugins  # type: ignore[import-not-found]
    except ImportError as exc:
        raise BuildError(
            f"the model uses qm nodes but the plugin package qm_export_plugins is not importable ({exc}); "
            "reinstall qm-export (pip install 'qm-export[trt]')"
        ) from exc
    register = getattr(qm_export_plugins, "register_plugins", None)
    if register is None:
        raise BuildError(
            "qm_export_plugins has no register_plugins(); this qm-export install ships no TensorRT plugins"
        )
    try:
        register(aot=True, jit=True)
    except ImportError as exc:  # qm_export_plugins.PluginDependencyError: triton or tensorrt.plugin missing
        raise BuildError(f"the qm plugins cannot be registered: {one_line(exc)}") from None
    except (RuntimeError, ValueError, TypeError) as exc:  # tensorrt.plugin refused a definition
        raise BuildError(f"TensorRT refused the qm plugin definitions: {one_line(exc)}") from None


def _parse(trt: Any, network: Any, logger: Any, prepared: PreparedBuild, version: TrtVersion) -> None:
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(prepared.request.onnx_path)):
        return
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node_name() if hasattr(err, "node_name") else ""
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        lines.append(f"  - {err.desc()}" + (f" (node {node!r}, op {op})" if node or op else ""))
    from .check.checker import check_model

    report = check_model(prepared.model, version, name=str(prepared.request.onnx_path))
    hints = [
        f"  - [{f.severity}] {f.node or 'model'}: {f.message} Fix: {f.fix}"
        for f in report.sorted_findings()
        if f.severity == "error"
    ]
    raise BuildError(
        f"TensorRT {version} could not parse {str(prepared.request.onnx_path)!r}:\n"
        + "\n".join(lines)
        + ("\nqm-export check finds:\n" + "\n".join(hints) if hints else "")
    )


def count_plugin_layers(network: Any) -> int:
    """How many layers of a parsed network are plugins (qm nodes that were not inlined)."""
    return sum("PLUGIN" in str(network.get_layer(i).type) for i in range(network.num_layers))


def _configure(trt: Any, builder: Any, network: Any, prepared: PreparedBuild, plan: Any) -> tuple[Any, list[str]]:
    """The builder config, and the notes of the timing cache."""
    config = builder.create_builder_config()
    request = prepared.request
    if request.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_bytes)
    absent = missing_flags(trt.BuilderFlag, list(plan.builder_flags))
    if absent:
        raise BuildError(
            f"TensorRT {trt.__version__} has no BuilderFlag {', '.join(absent)} (precision {plan.precision})"
        )
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    for name, rng in prepared.profile.shapes.items():
        if name in network_inputs:
            profile.set_shape(name, rng.min, rng.opt, rng.max)
    config.add_optimization_profile(profile)
    return config, attach_timing_cache(config, request.timing_cache)


def _io_tensors(trt: Any, engine: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        out.append(
            {
                "name": name,
                "mode": str(engine.get_tensor_mode(name)).split(".")[-1],
                "dtype": str(engine.get_tensor_dtype(name)).split(".")[-1],
                "shape": [int(d) for d in engine.get_tensor_shape(name)],
            }
        )
    return out


def build_engine(request: BuildRequest, stage: Stage | None = None) -> BuildResult:
    """Build ``request.onnx_path`` into ``request.engine_path`` and its ``.json`` sidecar."""
    say = stage or (lambda _msg: None)
    prepared = prepare_build(request)
    trt, version = import_tensorrt()
    broken = plugin_version_problem(version) if prepared.plugins else None
    if broken:
        raise BuildError(f"{broken}; the model uses qm plugins ({', '.join(prepared.plugins)})")
    say("checking the CUDA device")
    device = check_cuda_device()
    kernels = aot_kernel_target() if prepared.plugins else None
    plan = plan_precision(version, request.precision, prepared.onnx_precision)
    flags = required_network_flags(plan.network_flags, bool(prepared.plugins))
    absent = missing_flags(trt.NetworkDefinitionCreationFlag, flags)
    if absent:
        raise BuildError(f"TensorRT {version} has no NetworkDefinitionCreationFlag {', '.join(absent)}")
    if prepared.plugins:
        say(f"registering qm plugins ({', '.join(prepared.plugins)})")
        register_qm_plugins()
    logger = trt.Logger(trt.Logger.VERBOSE if request.verbose else trt.Logger.WARNING)
    builder = create_builder(trt, logger)
    network = builder.create_network(combine_flags(trt.NetworkDefinitionCreationFlag, flags))
    say(f"parsing {request.onnx_path}")
    _parse(trt, network, logger, prepared, version)
    plugin_layers = count_plugin_layers(network)
    inlined_note = None
    if prepared.plugins and plugin_layers == 0:
        inlined_note = (
            f"TensorRT {version} inlined the qm local functions instead of using the qm plugins (no plugin layers): "
            f"the engine is correct but slower; `qm-export check {request.onnx_path} --trt-version {version}` says why"
        )
        say(inlined_note)
    config, cache_notes = _configure(trt, builder, network, prepared, plan)
    for note in cache_notes:
        say(note)
    say(f"building {plan.precision} engine with TensorRT {version} (this takes a while)")
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise BuildError(f"TensorRT {version} failed to build the engine; rerun with --verbose for the builder log")
    data = memoryview(serialized).tobytes()
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        raise BuildError("TensorRT built an engine it cannot deserialize; rerun with --verbose")
    cache_data, cache_note = timing_cache_bytes(config) if request.timing_cache is not None else (None, None)
    if cache_note:
        say(cache_note)
    notes = [n for n in (inlined_note, *cache_notes, cache_note) if n]
    say(f"writing {request.engine_path.name} and its sidecar")

    def sidecar_of(engine_sha256: str) -> dict[str, Any]:
        sidecar = make_sidecar(
            onnx_path=request.onnx_path,
            onnx_sha256=prepared.onnx_sha256,
            engine_path=request.engine_path,
            engine_sha256=engine_sha256,
            engine_bytes=len(data),
            trt_version=str(trt.__version__),
            plan=plan,
            network_flags=flags,
            profile=prepared.profile,
            plugins=prepared.plugins,
            workspace_bytes=request.workspace_bytes,
            timing_cache=request.timing_cache,
            build_seconds=seconds,
            environment=cuda_environment(),
            device_memory_bytes=device_memory_bytes(engine),
            io_tensors=_io_tensors(trt, engine),
        )
        sidecar["plugins"]["plugin_layers"] = plugin_layers
        sidecar["cuda"]["driver_version"] = device["driver_cuda"]
        if kernels is not None:
            sidecar["plugins"]["kernels"] = kernels
        sidecar["notes"].extend(notes)
        return sidecar

    sidecar = write_build_outputs(request.engine_path, data, prepared.sidecar_path, sidecar_of, force=request.force)
    if cache_data is not None and request.timing_cache is not None:
        try:
            atomic_write_bytes(Path(request.timing_cache), cache_data)
        except OSError as exc:  # the engine and its sidecar are written; say so and keep them
            say(f"warning: the timing cache {str(request.timing_cache)!r} was not written ({one_line(exc)})")
    return BuildResult(request.engine_path, prepared.sidecar_path, sidecar)


def write_build_outputs(
    engine_path: Path, data: bytes, sidecar_path: Path, sidecar_of: Callable[[str], dict[str, Any]], *, force: bool
) -> dict[str, Any]:
    """Write the engine bytes and its JSON sidecar as a pair; returns the sidecar.

    Both are written to temporary names beside their targets (the user's umask applies) and
    moved into place only once both are complete: the sidecar first, then the engine, so an
    engine on disk always has its sidecar. A failure or an interrupt before that leaves
    neither; the folder must exist (nothing creates it).

    Args:
        sidecar_of: builds the sidecar from the engine's SHA-256 (hex).

    Raises:
        FileExistsError: a target exists and ``force`` is False; FileNotFoundError: the folder
            is missing; IsADirectoryError: a target is a folder.
    """
    engine_path, sidecar_path = Path(engine_path), Path(sidecar_path)
    check_writable([engine_path, sidecar_path], force)  # again: the build took a while
    sidecar = sidecar_of(hashlib.sha256(data).hexdigest())
    text = json.dumps(sidecar, indent=2) + "\n"
    with contextlib.ExitStack() as stack:  # unwinds last-in first-out: the sidecar lands first
        engine_tmp = stack.enter_context(atomic_output(engine_path))
        sidecar_tmp = stack.enter_context(atomic_output(sidecar_path))
        for tmp, payload in ((engine_tmp, data), (sidecar_tmp, text.encode("utf-8"))):
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
    return sidecar
