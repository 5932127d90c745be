"""ONNX Runtime on the GPU (``CUDAExecutionProvider``, package ``onnxruntime-gpu``) — and
a refusal of ONNX Runtime's *silent CPU fallback* of the merge.

ONNX Runtime places every node it has no CUDA kernel for (for that op and those types) on
the CPU execution provider, says nothing, and copies the tensors between device and host
around it. The outputs stay right, so a parity check passes while the merge runs on the CPU.
:class:`OrtCudaRunner` therefore runs the session once with ORT's profiler on (at
construction, on ``feeds`` or synthetic inputs at the ONNX profile's ``opt`` shapes), reads
where every node ran (:mod:`.ort_profile`), and judges the placement with
:func:`placement_problems`.

The placement rule
------------------
ORT also puts nodes on the CPU **on purpose**: ``GetCpuPreferredNodes``
(``onnxruntime/core/framework/fallback_cpu_capability.cc``) moves a node to the CPU when every
input it reads as data is already a CPU tensor — the output of ``Shape``/``Size`` (whose CUDA
kernels write to host memory), of another node moved for the same reason, a graph input, or
an initializer of at most 100 elements — and never when an input is float16/bfloat16/float8.
That is *shape arithmetic*: ``Squeeze``, ``Gather``, ``Concat``, ``Add``, ``Cast`` … on shape
vectors and scalars. The qm functions and the selection contain such nodes (the token count
``N``, ``K``), and their CPU placement is correct and cheap.

So the profile is read per node together with the types and shapes it actually saw
(``input_type_shape``/``output_type_shape`` of the same profile event), and:

- **error** — a *merge* node (:func:`~qm_export.export.merge_nodes.merge_role` is ``"qm"`` or
  ``"selection"``) on ``CPUExecutionProvider`` that handles *token data*: any input or output
  of rank ≥ 2 (scores ``[B, N]``, ``assign`` ``[B, N]``, tokens ``[B, N, D]``), or a
  floating-point tensor with more than one element. Shape arithmetic never has these (shape
  vectors are rank 1 and integer), so such a node is on the CPU because the CUDA provider
  could not take it. Integer tensors count as well as float ones: ``TokenGroupIndex`` is
  integer-only, and a float-only rule would never see it fall back.
  ``Shape``/``Size`` are exempt: they read only the metadata of their input.
- **note** (:attr:`OrtCudaRunner.cpu_nodes`) — every other CPU-placed node: merge nodes doing
  shape arithmetic, and nodes outside the merge (model nodes on the CPU are worth knowing —
  they cost copies — but are not what this backend promises to check).
- A merge node on the CPU whose types the profile does not give is an error unless it is
  ``Shape``/``Size`` (without types the rule cannot clear it).

Known limits of the rule, stated rather than hidden: a node ORT moves on purpose that makes a
rank-2 tensor from shape values only (``Unsqueeze`` of a shape vector to ``[1, k]``), or one
that reads a rank-2 graph input (an ``attention_mask``) next to shape values, would be
reported as an error; with ``ORT_AGGRESSIVE_CPU_FALLBACK=1`` ORT moves whole shape-feeding
subgraphs and the rule will report them. ``allow_cpu_fallback=True`` turns errors into
notes (kept in :attr:`OrtCudaRunner.placement_errors`) for such cases.

Besides placement, the runner refuses (:class:`~qm_export.backends.BackendUnavailable`) when
``CUDAExecutionProvider`` is not available, when session creation fails for CUDA reasons, and
when the session's providers do not start with CUDA (``onnxruntime``'s Python layer falls
back to the CPU provider when CUDA cannot initialise, e.g. without a device; the session is
created with ``enable_fallback=0`` where ORT supports it, and ``disable_fallback()`` is called
so that ``run`` never retries an EP failure on the CPU either). TF32 is off by default
(``use_tf32=0``), as in ``qm-export build``, for float32 parity.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np

from . import BackendUnavailable
from .ort_profile import NodeEvent, read_profile

__all__ = [
    "OrtCudaRunner",
    "PlacementError",
    "PlacementFinding",
    "TensorInfo",
    "NodeIO",
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "read_node_io",
    "handles_token_data",
    "placement_problems",
    "format_placement_error",
    "cuda_unavailable_reason",
    "session_provider_problem",
    "ort_distributions",
    "synthetic_feeds",
    "profile_once",
]

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
#: Ops that read only the shape of their input (their CUDA kernels write the result to host memory).
METADATA_OPS = frozenset({"Shape", "Size"})
#: How many nodes a :class:`PlacementError` message lists before "and N more".
LIST_LIMIT = 10
_KERNEL_SUFFIX = "_kernel_time"


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as ORT's profiler reports it: element type name (``float``, ``int64``,
    ``bool``, ``float16`` …) and shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def is_float(self) -> bool:
        name = self.dtype.lower()
        return "float" in name or name in ("double", "mlfloat16")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class NodeIO:
    """The inputs and outputs one kernel run saw."""

    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()

    def __str__(self) -> str:
        return f"{', '.join(map(str, self.inputs)) or '-'} -> {', '.join(map(str, self.outputs)) or '-'}"


@dataclass(frozen=True)
class PlacementFinding:
    """A node on the CPU provider: its name, op, provider, merge role and why it is listed."""

    name: str
    op_type: str
    provider: str
    role: str | None
    reason: str

    def __str__(self) -> str:
        role = f", merge {self.role}" if self.role else ""
        return f"{self.name} ({self.op_type}{role}): {self.reason}"


class PlacementError(RuntimeError):
    """ONNX Runtime put merge compute on the CPU provider of a CUDA session (silent fallback).

    Not a :class:`BackendUnavailable`: the backend is there and would run, but it would not run
    the merge on the GPU, so a command must report this backend as *failed*, not skipped.
    ``errors`` holds every offending node.
    """

    def __init__(self, model: str, errors: Sequence[PlacementFinding]) -> None:
        super().__init__(format_placement_error(model, errors))
        self.model = model
        self.errors = list(errors)


def _tensor_list(raw: Any) -> tuple[TensorInfo, ...]:
    out = []
    for item in raw or []:
        if isinstance(item, Mapping):
            for dtype, shape in item.items():
                out.append(TensorInfo(str(dtype), tuple(int(d) for d in (shape or []))))
    return tuple(out)


def read_node_io(path: str | os.PathLike[str]) -> dict[str, NodeIO]:
    """The types and shapes each node saw, from the same ORT profile :func:`read_profile`
    reads (``args.input_type_shape`` / ``args.output_type_shape``); the first run of a node.

    Raises:
        ValueError: the file is not an ORT profile.
    """
    try:
        events: Any = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable ONNX Runtime profile: {err}") from None
    if not isinstance(events, list):
        raise ValueError(f"{str(path)!r} is not an ONNX Runtime profile (expected a JSON list of events)")
    out: dict[str, NodeIO] = {}
    for ev in events:
        if not isinstance(ev, Mapping) or ev.get("cat") != "Node":
            continue
        name = str(ev.get("name", ""))
        if not name.endswith(_KERNEL_SUFFIX):
            continue
        name = name[: -len(_KERNEL_SUFFIX)]
        if name in out:
            continue
        args = ev.get("args") or {}
        if "input_type_shape" not in args and "output_type_shape" not in args:
            continue
        out[name] = NodeIO(_tensor_list(args.get("input_type_shape")), _tensor_list(args.get("output_type_shape")))
    return out


def handles_token_data(io: NodeIO) -> bool:
    """Whether a node reads or writes token data: a tensor of rank >= 2, or a floating-point
    tensor with more than one element (see the module docstring for why)."""
    return any(len(t.shape) >= 2 or (t.is_float and t.size > 1) for t in (*io.inputs, *io.outputs))


def placement_problems(
    events: Iterable[NodeEvent], io: Mapping[str, NodeIO] | None = None
) -> tuple[list[PlacementFinding], list[PlacementFinding]]:
    """Judge where ORT ran each node: ``(errors, notes)``, both in profile order, one entry per
    node name, only nodes on ``CPUExecutionProvider``.

    Args:
        events: the node events of one run (:func:`~qm_export.backends.ort_profile.read_profile`).
        io: what each node saw (:func:`read_node_io`), by node name.
    """
    from qm_export.export.merge_nodes import merge_role

    io = io or {}
    errors: list[PlacementFinding] = []
    notes: list[PlacementFinding] = []
    seen: set[str] = set()
    for ev in events:
        if ev.provider != CPU_PROVIDER or ev.name in seen:
            continue
        seen.add(ev.name)
        role = merge_role(ev.name)
        node_io = io.get(ev.name)
        if ev.op_type in METADATA_OPS:
            notes.append(PlacementFinding(ev.name, ev.op_type, ev.provider, role, "reads only its input's shape"))
            continue
        if node_io is None:
            if role is not None:
                errors.append(PlacementFinding(
                    ev.name, ev.op_type, ev.provider, role,
                    "merge node on the CPU and the profile gives no types to show it is shape arithmetic",
                ))
            else:
                notes.append(PlacementFinding(ev.name, ev.op_type, ev.provider, role, "model node on the CPU (types unknown)"))
            continue
        data = handles_token_data(node_io)
        if role is not None and data:
            errors.append(PlacementFinding(
                ev.name, ev.op_type, ev.provider, role,
                f"merge compute on token data fell back to the CPU ({node_io})",
            ))
        elif role is not None:
            notes.append(PlacementFinding(
                ev.name, ev.op_type, ev.provider, role, f"shape arithmetic, placed on the CPU by ORT on purpose ({node_io})"
            ))
        elif data:
            notes.append(PlacementFinding(
                ev.name, ev.op_type, ev.provider, role, f"model node on the CPU, its data copied through the host ({node_io})"
            ))
        else:
            notes.append(PlacementFinding(ev.name, ev.op_type, ev.provider, role, f"shape arithmetic ({node_io})"))
    return errors, notes


def format_placement_error(model: str, errors: Sequence[PlacementFinding], limit: int = LIST_LIMIT) -> str:
    """The message of a :class:`PlacementError`: count, up to ``limit`` nodes, how many more."""
    lines = [
        f"ort-cuda: ONNX Runtime ran {len(errors)} merge node(s) of {model} on the CPU provider although the "
        "session runs on CUDA (silent CPU fallback: no CUDA kernel for that op and those types):"
    ]
    lines += [f"  - {e.name} ({e.op_type}): {e.reason}" for e in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"  ... and {len(errors) - limit} more")
    lines.append(
        "The merge would not run on the GPU. Pass allow_cpu_fallback=True to run anyway, or use the trt backend."
    )
    return "\n".join(lines)


def ort_distributions() -> dict[str, str]:
    """The installed ONNX Runtime distributions and their versions (``onnxruntime``,
    ``onnxruntime-gpu``), from package metadata."""
    from importlib import metadata

    found = {}
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def cuda_unavailable_reason(available: Sequence[str], distributions: Mapping[str, str]) -> str | None:
    """Why ``CUDAExecutionProvider`` cannot be used, or ``None`` when ORT offers it.

    ``available``: ``onnxruntime.get_available_providers()``; ``distributions``:
    :func:`ort_distributions`.
    """
    if CUDA_PROVIDER in available:
        return None
    installed = ", ".join(f"{k} {v}" for k, v in distributions.items()) or "no ONNX Runtime distribution"
    both = (
        "; onnxruntime and onnxruntime-gpu are both installed and the CPU one wins: uninstall both, then "
        "install onnxruntime-gpu"
        if {"onnxruntime", "onnxruntime-gpu"} <= set(distributions)
        else ""
    )
    return (
        f"CUDAExecutionProvider is not available (ONNX Runtime offers {', '.join(available) or 'nothing'}): "
        f"install pip install 'qm-export[gpu]' (onnxruntime-gpu) on a machine with an NVIDIA GPU; "
        f"installed now: {installed}{both}"
    )


def session_provider_problem(providers: Sequence[str]) -> str | None:
    """Why a created session is not a CUDA session (CUDA must be its first provider), or ``None``."""
    if providers and providers[0] == CUDA_PROVIDER:
        return None
    return (
        f"the session's providers are {list(providers)}, not CUDAExecutionProvider first: CUDA did not initialise "
        "(no CUDA device visible, or CUDA/cuDNN libraries missing) and ONNX Runtime fell back to the CPU"
    )


_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def synthetic_feeds(
    inputs: Sequence[tuple[str, str, Sequence[Any]]], opt_shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Inputs for the placement run: each ``(name, ORT type, shape)`` at its ``opt_shapes``
    shape (the ONNX profile's ``opt``) or its static shape; floats standard normal (seeded),
    integers and bools ones (valid token ids and masks).

    Raises:
        ValueError: a dynamic dim with no profile shape, or a type numpy cannot hold (pass feeds).
    """
    rng = np.random.default_rng(seed)
    opt_shapes = opt_shapes or {}
    feeds = {}
    for name, type_name, shape in inputs:
        dtype = _NUMPY_TYPES.get(type_name)
        if dtype is None:
            raise ValueError(f"input {name!r} has type {type_name}, which this check cannot synthesize; pass feeds=")
        if name in opt_shapes:
            dims = tuple(int(d) for d in opt_shapes[name])
        elif all(isinstance(d, int) and d > 0 for d in shape):
            dims = tuple(int(d) for d in shape)
        else:
            raise ValueError(
                f"input {name!r} has dynamic shape {list(shape)} and the model has no qm_export.profile metadata; "
                "pass feeds="
            )
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[name] = np.ones(dims, dtype=dtype)
    return feeds


def profile_once(session: Any, feeds: Mapping[str, np.ndarray]) -> tuple[list[NodeEvent], dict[str, NodeIO]]:
    """Run ``session`` (created with ``SessionOptions.enable_profiling``) once on ``feeds`` and
    end its profiling: ``(node events, node I/O)`` of that run. Later runs are not profiled
    (ORT stops profiling at ``end_profiling``); the profile file is left where ORT wrote it."""
    if not session.get_session_options().enable_profiling:
        raise ValueError("the session was not created with profiling enabled (SessionOptions.enable_profiling)")
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise ValueError(f"feeds lack input(s) {missing}; the model takes {names}")
    session.run(None, {k: feeds[k] for k in names})
    path = session.end_profiling()
    return read_profile(path), read_node_io(path)


def _end_profiling_quietly(session: Any) -> None:
    try:
        session.end_profiling()
    except Exception:  # already ended, or the session is unusable: nothing to keep
        pass


def _is_cuda_error(err: BaseException) -> bool:
    text = str(err).lower()
    return any(word in text for word in ("cuda", "cudnn", "cublas", "libcu", "gpu"))


class OrtCudaRunner:
    """Run an ONNX file with ONNX Runtime's CUDA execution provider, merge placement checked.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads for the CPU parts (default: ORT's choice).
        feeds: inputs for the placement run (default: :func:`synthetic_feeds` at the profile's
            ``opt`` shapes).
        allow_cpu_fallback: keep a session whose merge fell back to the CPU (errors are kept in
            :attr:`placement_errors` instead of raised).
        device_id: the CUDA device.
        tf32: allow TF32 math in MatMul/Conv (off by default, for float32 parity).

    Attributes:
        cpu_nodes: notes, every CPU-placed node that is not an error (:class:`PlacementFinding`).
        placement_errors: the errors, when ``allow_cpu_fallback`` kept them.
        placement_events: the node events of the placement run.

    Raises:
        BackendUnavailable: no ``CUDAExecutionProvider``, or CUDA failed to initialise.
        PlacementError: merge compute placed on the CPU provider.
    """

    name = "ort-cuda"

    def __init__(
        self,
        path: str | os.PathLike[str],
        threads: int | None = None,
        *,
        feeds: Mapping[str, np.ndarray] | None = None,
        allow_cpu_fallback: bool = False,
        device_id: int = 0,
        tf32: bool = False,
    ) -> None:
        import onnxruntime as ort

        reason = cuda_unavailable_reason(ort.get_available_providers(), ort_distributions())
        if reason is not None:
            raise BackendUnavailable(self.name, reason)
        self.path = os.fspath(path)
        with tempfile.TemporaryDirectory(prefix="qm-ort-cuda-") as tmp:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            if threads is not None:
                opts.intra_op_num_threads = threads
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(tmp, "placement")
            cuda_options = {"device_id": str(device_id), "use_tf32": "1" if tf32 else "0"}
            # onnxruntime's Python layer *prints* "EP Error ... Falling back to CPUExecutionProvider" on
            # stdout when CUDA fails to initialise: keep it off stdout and put it in the reason instead.
            printed = StringIO()
            try:
                with contextlib.redirect_stdout(printed):
                    self.session = ort.InferenceSession(
                        self.path, sess_options=opts, providers=[(CUDA_PROVIDER, cuda_options), CPU_PROVIDER],
                        enable_fallback=0,  # onnxruntime >= 1.2x: raise instead of retrying on the CPU
                    )
            except Exception as err:  # onnxruntime raises its own exception types
                if _is_cuda_error(err):
                    raise BackendUnavailable(self.name, f"ONNX Runtime could not create a CUDA session: {err}") from err
                raise
            # and never switch a running session to the CPU provider after an EP failure in run()
            self.session.disable_fallback()
            try:
                problem = session_provider_problem(self.session.get_providers())
                if problem is not None:
                    said = " ".join(printed.getvalue().split())
                    raise BackendUnavailable(self.name, problem + (f" (onnxruntime said: {said[:300]})" if said else ""))
                self.input_names = [i.name for i in self.session.get_inputs()]
                self.output_names = [o.name for o in self.session.get_outputs()]
                run_feeds = dict(feeds) if feeds is not None else self._synthetic_feeds()
                try:
                    self.placement_events, io = profile_once(self.session, run_feeds)
                except Exception as err:
                    if _is_cuda_error(err):
                        raise BackendUnavailable(self.name, f"the CUDA session failed on its first run: {err}") from err
                    raise
            except BaseException:
                # end profiling while its folder exists (ORT would write the file when the session goes)
                _end_profiling_quietly(self.session)
                raise
        errors, notes = placement_problems(self.placement_events, io)
        if errors and not allow_cpu_fallback:
            raise PlacementError(self.path, errors)
        self.placement_errors = errors
        self.cpu_nodes = notes

    def _synthetic_feeds(self) -> dict[str, np.ndarray]:
        from qm_export.trt.profiles import profile_from_metadata

        profile = profile_from_metadata(self.session.get_modelmeta().custom_metadata_map)
        opt = {name: rng.opt for name, rng in profile.shapes.items()} if profile is not None else {}
        return synthetic_feeds([(i.name, i.type, i.shape) for i in self.session.get_inputs()], opt)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs))
