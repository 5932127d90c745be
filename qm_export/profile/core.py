"""``profile_models``: time, memory and per-operator breakdown of ONNX models, merged vs baseline.

This is the library behind ``qm-export profile`` (and the later ``qm-export run``): it takes
paths and plain options, reports progress through a callback and returns a
:class:`~.report.ProfileReport`; it prints nothing.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .breakdown import DEFAULT_PROFILE_RUNS, aggregate, ort_breakdown
from .memory import MIB, MemoryChildError, measure_memory
from .ort_session import OrtProfileRunner, OrtSettings
from .report import Measurement, ModelInfo, ProfileReport
from .stats import latency_stats, throughput
from .timing import DEFAULT_RUNS, DEFAULT_WARMUP, ProgressFn, other_cpu_load, time_interleaved

__all__ = ["profile_models", "ProfileInputError", "PROFILE_BACKENDS", "DEFAULT_THREADS", "MEMORY_RUNS",
           "has_seq_axis", "check_same_inputs"]

#: Backends ``profile`` times (``onnx-ref`` is refused: far too slow to be worth timing).
PROFILE_BACKENDS = ("torch", "ort", "ort-cuda", "trt")
#: ORT intra-op threads unless told otherwise: the project's benchmark setting (2-core VMs).
DEFAULT_THREADS = 2
#: Timed runs of the memory child at most: the high-water mark is reached in the first runs.
MEMORY_RUNS = 10


class ProfileInputError(ValueError):
    """Bad input to :func:`profile_models`; ``param`` names the argument (``"MODEL"``,
    ``"--baseline"``, ``"--backends"``, ``"--batch"``, ``"--seq-len"``, ...)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class _Model:
    info: ModelInfo
    mf: Any  # ModelFile
    loaded: Any = None  # the torch source, or None


def has_seq_axis(specs: Sequence[Any]) -> bool:
    """True when some input has a second dynamic axis (batch, then sequence)."""
    return any(sum(1 for d in s.shape if not (isinstance(d, int) and d > 0)) >= 2 for s in specs)


def check_same_inputs(a: Sequence[Any], b: Sequence[Any]) -> str | None:
    """Why two models' inputs differ (names, element types, ranks, static sizes), or None."""
    if [s.name for s in a] != [s.name for s in b]:
        return f"inputs {[s.name for s in b]} differ from MODEL's {[s.name for s in a]}"
    for x, y in zip(a, b):
        if x.elem_type != y.elem_type:
            return f"input {x.name!r} is {y.elem_type}, MODEL's is {x.elem_type}"
        if len(x.shape) != len(y.shape):
            return f"input {x.name!r} has rank {len(y.shape)}, MODEL's has {len(x.shape)}"
        for axis, (p, q) in enumerate(zip(x.shape, y.shape)):
            static_p, static_q = isinstance(p, int) and p > 0, isinstance(q, int) and q > 0
            if static_p != static_q or (static_p and p != q):
                return f"input {x.name!r} axis {axis} is {q!r}, MODEL's is {p!r}"
    return None


def _open(path: Path, role: str, param: str, label: str, want_source: bool) -> _Model:
    from ..export.provenance import ProvenanceError
    from ..validate.model_file import load_reference, open_model_file

    try:
        mf = open_model_file(path)
    except (FileNotFoundError, ValueError) as err:
        raise ProfileInputError(param, str(err)) from None
    if mf.kind != "onnx":
        raise ProfileInputError(param, f"{str(path)!r} is a TensorRT engine; profile takes the ONNX file "
                                       "(the trt backend builds or loads its engine)")
    loaded, note = None, "made from the graph's inputs"
    if want_source:
        try:
            loaded, src = load_reference(mf, debug_outputs=False)
            note = f"the source's seeded inputs ({src})"
        except ProvenanceError as err:
            note = f"made from the graph's inputs ({err})"
    return _Model(ModelInfo(Path(path), label, role, mf.weight_bytes, note), mf, loaded)


def _labels(models: Sequence[Path], baseline: Path | None) -> list[str]:
    if len(models) == 1 and baseline is not None:
        return ["merged", "baseline"]
    names = [p.stem for p in [*models, *([baseline] if baseline else [])]]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def _seq_of(mf: Any, feeds: dict[str, np.ndarray]) -> int | None:
    for spec in mf.inputs:
        dyn = [i for i, d in enumerate(spec.shape) if not (isinstance(d, int) and d > 0)]
        if len(dyn) >= 2:
            return int(feeds[spec.name].shape[dyn[1]])
    return None


def _open_runner(backend: str, m: _Model, settings: OrtSettings) -> tuple[Any, str | None]:
    """(runner, None) or (None, why it is skipped)."""
    from ..backends import BackendUnavailable, open_runner

    try:
        if backend == "ort":
            return OrtProfileRunner(m.info.path, settings), None
        if backend == "torch" and m.loaded is None:
            return None, "no torch source: the model records none (not made by 'qm-export convert')"
        return open_runner(backend, m.info.path, loaded=m.loaded, threads=settings.threads or None), None
    except BackendUnavailable as err:
        return None, err.why
    except ImportError as err:  # a backend module this checkout does not have
        return None, f"backend {backend!r} cannot be imported here ({err})"


def _device_memory(runner: Any) -> dict[str, Any]:
    """TensorRT: engine size and device memory at the profile's shapes (``TrtRunner``)."""
    engine, device = getattr(runner, "engine_bytes", None), getattr(runner, "device_memory_bytes", None)
    if isinstance(engine, (bytes, bytearray, memoryview)):  # TrtRunner keeps the serialized engine
        engine = len(engine)
    out: dict[str, Any] = {"engine_mb": engine / MIB if engine is not None else None,
                           "device_memory_mb": device / MIB if device is not None else None}
    if device is not None:
        out.update(activation_memory_mb=device / MIB, activation_method="trt-device-memory")
    else:
        out["note"] = "this TrtRunner exposes no device_memory_bytes"
    return out


def profile_models(models: Sequence[str | os.PathLike[str]], baseline: str | os.PathLike[str] | None = None, *,
                   backends: Sequence[str] = ("ort",), batches: Sequence[int] = (1,),
                   seq_lens: Sequence[int | None] = (None,), threads: int = DEFAULT_THREADS,
                   runs: int | None = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP, duration: float | None = None,
                   progress: ProgressFn | None = None, memory: bool = True, breakdown: bool = True,
                   memory_runs: int = MEMORY_RUNS, profile_runs: int = DEFAULT_PROFILE_RUNS,
                   settings: OrtSettings | None = None, seed: int = 0) -> ProfileReport:
    """Profile ``models`` (ONNX files), each against ``baseline`` when given.

    For every backend and every ``batch x seq_len``, all models (and the baseline) are timed
    interleaved in one loop (:func:`~.timing.time_interleaved`: ``warmup`` untimed
    iterations, then up to ``runs`` timed ones or ``duration`` seconds, whichever ends
    first). Then, per model: host memory in a fresh child process (``ort``;
    :func:`~.memory.measure_memory`, up to ``memory_runs`` runs) or the engine's device
    memory (``trt``), and the kernel-time breakdown (``ort``: a separate profiling session,
    ``profile_runs`` runs; ``trt``: ``TrtRunner.layer_times``). Every model gets the same
    inputs: MODEL's source's seeded inputs (from its provenance), or inputs made from its
    graph when it records no source (a note says so).

    Args:
        models: the models to profile (usually one merged model).
        baseline: the unmerged model; its inputs must match every model's.
        backends: names from :data:`PROFILE_BACKENDS`; an unavailable one is reported as
            ``status="skipped"`` with ``why``.
        batches, seq_lens: the sweep (``seq_lens=(None,)``: the source's own length;
            lengths need a model with a sequence axis).
        threads: intra-op threads (ORT ``intra_op_num_threads``, torch ``set_num_threads``;
            0: the runtime's choice). Ignored when ``settings`` is given (its ``threads`` wins).
        runs, warmup, duration: see above; ``runs=None`` needs ``duration``.
        progress: ``progress(description, completed, total)``.
        memory, breakdown: measure them (both cost extra runs, outside the timed loop).
        settings: ONNX Runtime session settings (default: ORT's defaults, ``threads``).
        seed: input seed.

    Raises:
        ProfileInputError: a bad argument (``.param`` names it); nothing has run yet.
    """
    settings = settings or OrtSettings(threads=threads)
    threads = settings.threads
    _check_options(backends, batches, seq_lens, runs, duration)
    paths = [Path(p) for p in models]
    if not paths:
        raise ProfileInputError("MODEL", "no model to profile")
    labels = _labels(paths, Path(baseline) if baseline else None)
    want_torch = "torch" in backends
    opened = [_open(p, "model", "MODEL", labels[i], want_source=True) for i, p in enumerate(paths)]
    main = opened[0]
    if baseline is not None:
        base = _open(Path(baseline), "baseline", "--baseline", labels[-1], want_source=want_torch)
        why = check_same_inputs(main.mf.inputs, base.mf.inputs)
        if why:
            raise ProfileInputError("--baseline", f"{str(baseline)!r} does not take MODEL's inputs: {why}")
        base.info.inputs = "MODEL's inputs"
        opened.append(base)
    for m in opened[1:len(paths)]:
        why = check_same_inputs(main.mf.inputs, m.mf.inputs)
        if why:
            raise ProfileInputError("MODEL", f"{str(m.info.path)!r} does not take the first model's inputs: {why}")
    if any(s is not None for s in seq_lens) and not has_seq_axis(main.mf.inputs):
        shapes = ", ".join(f"{s.name} {list(s.shape)}" for s in main.mf.inputs)
        raise ProfileInputError("--seq-len", f"MODEL has no dynamic sequence axis ({shapes}); drop --seq-len")

    report = ProfileReport(models=[m.info for m in opened], date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    report.settings = {"backends": list(backends), "batches": list(batches), "seq_lens": list(seq_lens),
                       "threads": threads, "runs": runs, "warmup": warmup, "duration_s": duration,
                       "memory_runs": memory_runs if memory else 0, "profile_runs": profile_runs if breakdown else 0,
                       "seed": seed, "ort_session": settings.to_json()}
    report.machine = _machine()
    if main.loaded is None:
        report.notes.append(f"inputs {main.info.inputs}")
    # feeds for every shape, made before any runtime loads (the torch source may then go)
    from ..validate.inputs import feeds_shape_label
    from ..validate.model_file import feeds_for

    shapes = []
    for batch in batches:
        for seq in seq_lens:
            feeds = feeds_for(main.mf, main.loaded, batch=batch, seq_len=seq, seed=seed)
            shapes.append((batch, _seq_of(main.mf, feeds), feeds_shape_label(feeds), feeds))
    if not want_torch:
        for m in opened:
            m.loaded = None
        gc.collect()

    for backend in backends:
        _profile_backend(report, backend, opened, shapes, settings, runs=runs, warmup=warmup, duration=duration,
                         progress=progress, memory=memory, breakdown=breakdown, memory_runs=memory_runs,
                         profile_runs=profile_runs)
    return report


def _check_options(backends: Sequence[str], batches: Sequence[int], seq_lens: Sequence[int | None],
                   runs: int | None, duration: float | None) -> None:
    for b in backends:
        if b == "onnx-ref":
            raise ProfileInputError("--backends", "onnx-ref is not profiled: the ONNX reference evaluator is a slow "
                                                  "pure-Python checker (minutes per run), its timings mean nothing")
        if b not in PROFILE_BACKENDS:
            raise ProfileInputError("--backends", f"unknown backend {b!r}; profile knows {', '.join(PROFILE_BACKENDS)}")
    if not backends:
        raise ProfileInputError("--backends", "no backend given")
    if not batches or any(int(b) < 1 for b in batches):
        raise ProfileInputError("--batch", "batch sizes must be positive integers")
    if not seq_lens or any(s is not None and int(s) < 1 for s in seq_lens):
        raise ProfileInputError("--seq-len", "sequence lengths must be positive integers")
    if runs is None and duration is None:
        raise ProfileInputError("--runs", "give a run count or a --duration")


def _machine() -> dict[str, Any]:
    try:
        import onnxruntime as ort

        ort_version = ort.get_version_string()
    except ImportError:
        ort_version = None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpus": cpus, "loadavg_start": list(load) if load else None, "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "onnxruntime": ort_version}


def _profile_backend(report: ProfileReport, backend: str, opened: list[_Model], shapes: list[tuple], settings: OrtSettings,
                     *, runs: int | None, warmup: int, duration: float | None, progress: ProgressFn | None,
                     memory: bool, breakdown: bool, memory_runs: int, profile_runs: int) -> None:
    runners = [_open_runner(backend, m, settings) for m in opened]
    live = [i for i, (r, _) in enumerate(runners) if r is not None]
    for batch, seq, label, feeds in shapes:
        group = [Measurement(m.info, backend, batch, seq, label, threads=settings.threads) for m in opened]
        for i, (_, why) in enumerate(runners):
            if why is not None:
                group[i].status, group[i].why = "skipped", why
        if live:
            _time_group(group, [runners[i][0] for i in live], live, feeds, backend, label, runs=runs, warmup=warmup,
                        duration=duration, progress=progress, threads=settings.threads)
        for i in live:
            if group[i].status != "ok":
                continue
            if memory:
                _measure_memory(group[i], opened[i], runners[i][0], feeds, settings, warmup, min(memory_runs, runs or memory_runs), progress)
            if breakdown:
                _measure_breakdown(group[i], opened[i], runners[i][0], feeds, settings, profile_runs, progress)
        if len(opened) > 1 and opened[-1].info.role == "baseline":
            for m in group[:-1]:
                m.baseline = group[-1]
        report.results.extend(group)
    del runners
    gc.collect()


def _time_group(group: list[Measurement], runners: list[Any], idx: list[int], feeds: dict[str, np.ndarray], backend: str,
                label: str, *, runs: int | None, warmup: int, duration: float | None, progress: ProgressFn | None,
                threads: int) -> None:
    calls = [(lambda r=r: r.run(feeds)) for r in runners]
    restore = _torch_threads(threads) if backend == "torch" else None
    try:
        with other_cpu_load() as load:
            times = time_interleaved(calls, warmup=warmup, runs=runs, duration=duration, progress=progress,
                                     description=f"{backend} {label}")
    except Exception as err:  # a runtime that fails at this shape: report it, go on
        for i in idx:
            group[i].status, group[i].why = "failed", f"{type(err).__name__}: {err}".splitlines()[0]
        return
    finally:
        if restore is not None:
            restore()
    for i, t in zip(idx, times):
        m = group[i]
        m.runs, m.warmup = len(t), warmup
        m.latency_ms, m.throughput, m.times_s = latency_stats(t), throughput(m.batch, t), list(t)
        m.other_cpu_load = load["value"]


def _torch_threads(threads: int):
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    return lambda: torch.set_num_threads(before)


def _measure_memory(m: Measurement, model: _Model, runner: Any, feeds: dict[str, np.ndarray], settings: OrtSettings,
                    warmup: int, runs: int, progress: ProgressFn | None) -> None:
    if m.backend == "ort":
        if progress:
            progress(f"{m.backend} {m.input_shape} memory {m.model.label}", 0, 1)
        try:
            m.memory = measure_memory(model.info.path, feeds, settings, warmup=warmup, runs=runs,
                                      weight_bytes=model.info.weight_bytes)
        except MemoryChildError as err:
            m.memory = {"error": str(err)}
        if progress:
            progress(f"{m.backend} {m.input_shape} memory {m.model.label}", 1, 1)
    elif m.backend == "trt":
        m.memory = _device_memory(runner)
    else:
        m.memory = {"note": f"memory is measured for ort (host, child process) and trt (device) only, not {m.backend}"}


def _measure_breakdown(m: Measurement, model: _Model, runner: Any, feeds: dict[str, np.ndarray], settings: OrtSettings,
                       runs: int, progress: ProgressFn | None) -> None:
    desc = f"{m.backend} {m.input_shape} breakdown {m.model.label}"
    if m.backend == "ort":
        if progress:
            progress(desc, 0, 1)
        with other_cpu_load() as load:
            m.breakdown = ort_breakdown(model.info.path, feeds, settings, runs=runs)
        m.breakdown.other_cpu_load = load["value"]
        if progress:
            progress(desc, 1, 1)
    elif m.backend == "trt" and hasattr(runner, "layer_times"):
        m.breakdown = aggregate(runner.layer_times(feeds, runs), runs, source="trt-layer-profiler")
