"""The ONNX Runtime session settings of the profiler, in one place.

The timed session, the memory child (:mod:`.memory_child`) and the per-operator profiling
session are all built here from one :class:`OrtSettings`, so the three measure the same
configuration, and the report records it. Everything left at None keeps ONNX Runtime's
own default (ORT 1.32: all graph optimisations, CPU memory arena and memory patterns on,
sequential execution, intra-op threads spinning while waiting for work).

One default differs from ORT's: ``session.force_spinning_stop = 1``. The profiler times two
sessions interleaved, each with its own intra-op pool; by default a pool's threads keep
spinning after ``Run()`` returns, on the cores the *other* session's run now needs. On the
2-core VMs that inflated the merged ViT-B/16's latency more than the unmerged one's (ratio
0.51-0.58 interleaved vs 0.44-0.47 for each model alone in its own process; with the
spinning stopped, 0.44-0.48 interleaved; docs/benchmarks.md). Stopping the spin when a run
returns removes that artefact of interleaving and changes nothing inside a run; pass
``--ort-config session.force_spinning_stop=0`` for ORT's behaviour.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["OrtSettings", "session_options", "OrtProfileRunner", "GRAPH_OPT_LEVELS"]

#: ``graph_optimization`` spelling -> ``ort.GraphOptimizationLevel`` member.
GRAPH_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                    "extended": "ORT_ENABLE_EXTENDED", "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}


@dataclass(frozen=True)
class OrtSettings:
    """ONNX Runtime session settings (None: ORT's default).

    Attributes:
        threads: ``intra_op_num_threads`` (0: ORT's choice, one per physical core).
        allow_spinning: ``session.intra_op.allow_spinning`` (idle pool threads spin).
        force_spinning_stop: ``session.force_spinning_stop`` (pool threads stop spinning when
            ``Run()`` returns; on by default here, see above).
        graph_optimization: a key of :data:`GRAPH_OPT_LEVELS`.
        cpu_mem_arena: ``enable_cpu_mem_arena``.
        parallel: ``ExecutionMode.ORT_PARALLEL`` instead of sequential.
        config: further ``add_session_config_entry`` pairs.
    """

    threads: int = 2
    allow_spinning: bool | None = None
    force_spinning_stop: bool | None = True
    graph_optimization: str | None = None
    cpu_mem_arena: bool | None = None
    parallel: bool | None = None
    config: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "OrtSettings":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def session_options(settings: OrtSettings, *, profile_prefix: str | None = None,
                    optimized_model: str | os.PathLike[str] | None = None) -> Any:
    """``ort.SessionOptions`` for ``settings``; ``profile_prefix`` turns ORT's profiler on
    (Chrome-trace JSON), ``optimized_model`` saves the optimised graph there."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = settings.threads
    entries: dict[str, str] = {}
    if settings.allow_spinning is not None:
        entries["session.intra_op.allow_spinning"] = "1" if settings.allow_spinning else "0"
    if settings.force_spinning_stop is not None:
        entries["session.force_spinning_stop"] = "1" if settings.force_spinning_stop else "0"
    entries.update({k: str(v) for k, v in settings.config.items()})  # explicit entries win
    for key, value in entries.items():
        opts.add_session_config_entry(key, value)
    if settings.graph_optimization is not None:
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPT_LEVELS[settings.graph_optimization])
    if settings.cpu_mem_arena is not None:
        opts.enable_cpu_mem_arena = settings.cpu_mem_arena
    if settings.parallel:
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    else:
        opts.inter_op_num_threads = 1  # sequential execution has no use for an inter-op pool
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if optimized_model is not None:
        opts.optimized_model_filepath = os.fspath(optimized_model)
    return opts


class OrtProfileRunner:
    """An ONNX Runtime CPU session with the profiler's settings, behind the
    :class:`~qm_export.backends.Runner` interface (``run(feeds) -> outputs``)."""

    name = "ort"

    def __init__(self, path: str | os.PathLike[str], settings: OrtSettings, **extra: Any) -> None:
        import onnxruntime as ort

        self.settings = settings
        self.session = ort.InferenceSession(os.fspath(path), sess_options=session_options(settings, **extra),
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs))
