"""Where a model's kernel time goes: per operator type, and the merge's share.

Input is a list of :class:`~qm_export.backends.ort_profile.NodeEvent` (one kernel run each):
from ONNX Runtime's profiler (:func:`ort_breakdown`, a separate session with profiling on,
never the timed one) or from TensorRT's layer profiler (``TrtRunner.layer_times``). Nodes
are attributed to the merge by name (:func:`~qm_export.export.merge_nodes.merge_role`):

- ``merge_share``: time of the qm ops (``TokenGroupIndex``, ``TokenMerge``,
  ``TokenUnmerge``; ORT runs a plugin-form node as its inlined function,
  ``_inlfunc_<op>_...``) over the total kernel time;
- ``selection_share``: time of the nodes that only decide which tokens merge (saliency,
  seeds, assignment), over the same total.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OpTime", "Breakdown", "aggregate", "qm_op_of", "arena_stats", "ort_breakdown", "DEFAULT_PROFILE_RUNS"]

#: Runs of the profiling session (after one untimed run that ORT's first-run costs go to).
DEFAULT_PROFILE_RUNS = 10


@dataclass(frozen=True)
class OpTime:
    """One row of a breakdown: ``name`` (an op type or a node), ``ms`` per run, ``share`` of
    the total kernel time, ``count`` kernel runs per run (nodes of that type)."""

    name: str
    ms: float
    share: float
    count: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ms": self.ms, "share": self.share, "count": self.count}


@dataclass
class Breakdown:
    """Kernel time of one model at one shape, per run (averaged over ``runs``).

    Attributes:
        source: ``"ort-profiler"`` or ``"trt-layer-profiler"``.
        runs: profiled runs the figures summarise (per node: the median over runs).
        total_ms: summed kernel time per run (not the latency: no gaps, no overlap).
        by_op: per op type, largest first.
        merge_ms, selection_ms: the qm ops' and the selection's kernel time per run.
        merge_share, selection_share: those over ``total_ms`` (0 for a model without merge).
        qm_ops: per qm op (``TokenMerge``, ...), ms per run.
        top_nodes: the slowest node names, per run (``count`` > 1: ORT gave several fused
            nodes one name).
        memory: ORT's own per-node arena figures (:func:`arena_stats`), when the source has them.
        other_cpu_load: share of the CPUs other processes used while profiling (see
            :func:`~.timing.other_cpu_load`).
    """

    source: str
    runs: int
    total_ms: float
    by_op: list[OpTime]
    merge_ms: float
    selection_ms: float
    merge_share: float
    selection_share: float
    qm_ops: dict[str, float] = field(default_factory=dict)
    top_nodes: list[OpTime] = field(default_factory=list)
    memory: dict[str, Any] | None = None
    other_cpu_load: float | None = None

    def to_json(self, top: int = 10) -> dict[str, Any]:
        return {
            "source": self.source, "runs": self.runs, "total_ms": self.total_ms,
            "merge_ms": self.merge_ms, "selection_ms": self.selection_ms,
            "merge_share": self.merge_share, "selection_share": self.selection_share,
            "qm_ops": self.qm_ops, "by_op": [o.to_json() for o in self.by_op],
            "top_nodes": [o.to_json() for o in self.top_nodes[:top]], "memory": self.memory,
            "other_cpu_load": self.other_cpu_load,
        }


def qm_op_of(name: str) -> str | None:
    """The qm op a qm-role node belongs to (``merge_qm/TokenMerge/...`` or ORT's
    ``_inlfunc_TokenMerge_...``), or None."""
    from ..export.merge_nodes import QM_OPS, QM_PREFIX

    rest = name[len(QM_PREFIX):] if name.startswith(QM_PREFIX) else name.removeprefix("_inlfunc_")
    for op in QM_OPS:
        if rest.startswith(op):
            return op
    return None


def aggregate(events: Iterable[Any], runs: int, *, role: Callable[[str], str | None] | None = None,
              source: str = "ort-profiler", top: int = 10, statistic: str = "median") -> Breakdown:
    """Sum kernel events (``.name``, ``.op_type``, ``.dur_us``) of ``runs`` runs into a
    :class:`Breakdown` (figures per run). ``role`` maps a node name to ``"qm"``,
    ``"selection"`` or None (default :func:`~qm_export.export.merge_nodes.merge_role`).

    Each node's time per run is the ``statistic`` of its kernel times over the runs
    (``"median"``: one run preempted by another process on a shared machine does not move
    it; ``"mean"``: the plain average), times its events per run; op types, roles and the
    total are sums of those.

    Raises:
        ValueError: ``runs`` < 1, or an unknown ``statistic``.
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', not {statistic!r}")
    if role is None:
        from ..export.merge_nodes import merge_role as role
    durs: dict[str, list[float]] = {}
    node_op: dict[str, str] = {}
    for ev in events:
        durs.setdefault(ev.name, []).append(ev.dur_us)
        node_op[ev.name] = ev.op_type
    node_us: dict[str, float] = {}  # per run
    for name, d in durs.items():
        centre = float(np.median(d)) if statistic == "median" else float(np.mean(d))
        node_us[name] = centre * len(d) / runs
    total = sum(node_us.values())

    def share(us: float) -> float:
        return us / total if total > 0 else 0.0

    op_us: dict[str, float] = {}
    op_n: dict[str, float] = {}
    role_us = {"qm": 0.0, "selection": 0.0}
    qm_us: dict[str, float] = {}
    for name, us in node_us.items():
        op = node_op[name]
        op_us[op] = op_us.get(op, 0.0) + us
        op_n[op] = op_n.get(op, 0) + len(durs[name]) / runs
        r = role(name)
        if r in role_us:
            role_us[r] += us
        if r == "qm":
            q = qm_op_of(name) or op
            qm_us[q] = qm_us.get(q, 0.0) + us
    by_op = sorted((OpTime(k, v / 1e3, share(v), round(op_n[k])) for k, v in op_us.items()),
                   key=lambda o: (-o.ms, o.name))
    nodes = sorted(node_us.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return Breakdown(
        source=source, runs=runs, total_ms=total / 1e3, by_op=by_op,
        merge_ms=role_us["qm"] / 1e3, selection_ms=role_us["selection"] / 1e3,
        merge_share=share(role_us["qm"]), selection_share=share(role_us["selection"]),
        qm_ops={k: v / 1e3 for k, v in sorted(qm_us.items())},
        top_nodes=[OpTime(f"{n} ({node_op[n]})", us / 1e3, share(us), round(len(durs[n]) / runs))
                   for n, us in nodes],
    )


def arena_stats(trace: str | os.PathLike[str] | list[Any]) -> dict[str, Any] | None:
    """ONNX Runtime's own memory figures from a profiler trace (a path or the parsed list), MiB.

    Every node event of an ORT 1.32 trace carries the CPU arena's counters after that node
    (``args.mem_bytes_in_use``, ``mem_in_use_delta``, ``mem_in_use_peak``,
    ``mem_arena_held``). The arena also holds the initializers, so:

    - ``arena_base_mb``: bytes in use before any node allocated (the smallest
      ``mem_bytes_in_use - mem_in_use_delta``): initializers and other persistent buffers;
    - ``arena_in_use_peak_mb``: the largest ``mem_in_use_peak``;
    - ``arena_activation_mb``: their difference, what runs needed on top (from the second
      run on, ORT allocates its memory-pattern block, sized by the plan's peak, at run start);
    - ``arena_held_mb``: the largest reservation; ``peak_at_node``: where the peak was reached.

    None when the trace has no such fields (another ORT version, or the arena disabled).
    """
    events = json.loads(Path(trace).read_text()) if not isinstance(trace, list) else trace
    peak = held = -1
    base: int | None = None
    at = None
    for ev in events:
        args = ev.get("args") if isinstance(ev, dict) and ev.get("cat") == "Node" else None
        if not args or "mem_in_use_peak" not in args:
            continue
        p = int(args["mem_in_use_peak"])
        if p > peak:
            peak, at = p, str(ev.get("name", "")).removesuffix("_kernel_time")
        held = max(held, int(args.get("mem_arena_held", -1)))
        if "mem_bytes_in_use" in args:
            before = int(args["mem_bytes_in_use"]) - int(args.get("mem_in_use_delta", 0))
            base = before if base is None else min(base, before)
    if peak < 0:
        return None
    mib = float(2**20)
    return {"arena_in_use_peak_mb": peak / mib, "arena_base_mb": base / mib if base is not None else None,
            "arena_activation_mb": (peak - base) / mib if base is not None else None,
            "arena_held_mb": held / mib if held >= 0 else None, "peak_at_node": at,
            "source": "ORT profiler trace: args.mem_bytes_in_use / mem_in_use_peak / mem_arena_held"}


def ort_breakdown(model: str | os.PathLike[str], feeds: Mapping[str, np.ndarray], settings: Any, *,
                  runs: int = DEFAULT_PROFILE_RUNS) -> Breakdown:
    """Profile ``model`` in a fresh ORT session with profiling on (``settings``: the timed
    session's :class:`~.ort_session.OrtSettings`): one warm-up run, then ``runs`` profiled
    ones, read with :func:`~qm_export.backends.ort_profile.read_profile`; ``memory`` holds
    :func:`arena_stats`. The warm-up run's events are dropped (every run executes the same
    kernels, so they are the first ``1/(runs+1)`` of the trace; when the count does not
    divide, all runs are kept and averaged)."""
    from ..backends.ort_profile import read_profile
    from .ort_session import OrtProfileRunner

    if runs < 1:
        raise ValueError("runs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="qm-profile-ort-") as tmp:
        runner = OrtProfileRunner(model, settings, profile_prefix=os.path.join(tmp, "ort"))
        feeds = dict(feeds)
        for _ in range(runs + 1):
            runner.run(feeds)
        trace = runner.session.end_profiling()
        del runner
        events = read_profile(trace)
        memory = arena_stats(trace)
    kept, n = events, runs + 1
    if events and len(events) % (runs + 1) == 0:
        kept, n = events[len(events) // (runs + 1):], runs
    out = aggregate(kept, n, source="ort-profiler")
    out.memory = memory
    return out
