"""Rich tables of a :class:`~.report.ProfileReport`, made to read at 80 columns.

Words and units as trtexec / perf_analyzer print them: latency in ms (min, mean, p50, p90,
p95, p99), throughput in items/s (``batch · infer/s``), memory in MiB.
"""

from __future__ import annotations

from typing import Any

from .report import Measurement, ProfileReport

__all__ = ["render_report"]


def _f(x: float | None, fmt: str | None = None) -> str:
    """A number in at most 6 characters below 100000: 2 decimals below 10, 1 below 1000."""
    if x is None:
        return "-"
    if fmt is None:
        fmt = "{:.2f}" if abs(x) < 10 else "{:.1f}" if abs(x) < 1000 else "{:.0f}"
    return fmt.format(x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _shape(m: Measurement) -> str:
    return str(m.batch) if m.seq_len is None else f"{m.batch}x{m.seq_len}"


def _table(title: str, *cols: str) -> Any:
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for i, c in enumerate(cols):
        t.add_column(c, justify="left" if i == 0 else "right", no_wrap=i > 0, overflow="fold")
    return t


def render_report(report: ProfileReport, console: Any, *, top: int = 8) -> None:
    """Print ``report`` on ``console`` (a rich Console): per backend, latency; with a
    baseline, speed-up and memory saved; memory; the merge's share and the top operators."""
    s = report.settings
    console.print(f"threads {s.get('threads')}, warm-up {s.get('warmup')}, "
                  f"runs {s.get('runs') or '-'}{', duration ' + str(s['duration_s']) + ' s' if s.get('duration_s') else ''}; "
                  f"interleaved, order alternating every run")
    for note in report.notes:
        console.print(f"note: {note}")
    for backend in dict.fromkeys(r.backend for r in report.results):
        rows = [r for r in report.results if r.backend == backend]
        skipped = [r for r in rows if r.status != "ok"]
        for r in skipped:
            console.print(f"[yellow]{backend}: {r.model.label} {r.status}[/]: {r.why}")
        ok = [r for r in rows if r.status == "ok"]
        if not ok:
            continue
        lat = _table(f"{backend}: latency (ms), throughput (items/s)", "model", "input",
                     "min", "mean", "p50", "p90", "p95", "p99", "items/s")
        for r in ok:
            L = r.latency_ms or {}
            lat.add_row(r.model.label, _shape(r), *(_f(L.get(k)) for k in ("min", "mean", "p50", "p90", "p95", "p99")),
                        _f(r.throughput))
        console.print(lat)
        busy = max((r.other_cpu_load or 0.0) for r in ok)
        if busy >= 0.05:
            console.print(f"[yellow]warning[/]: other processes used up to {100 * busy:.0f}% of the CPUs while timing: "
                          "contended numbers")
        merged = [r for r in ok if r.baseline is not None and r.baseline.status == "ok"]
        if merged:
            sp = _table(f"{backend}: speed-up (baseline / merged) and memory saved", "model", "input",
                        "p50", "p90", "p99", "paired", "items/s", "peak", "act.")
            for r in merged:
                S, R = r.speedup() or {}, r.memory_reduction() or {}
                sp.add_row(r.model.label, _shape(r), *(_x(S.get(k)) for k in ("p50", "p90", "p99", "paired_p50", "throughput")),
                           _pct(R.get("peak_memory")), _pct(R.get("activation_memory")))
            console.print(sp)
            console.print("paired: median over iterations of baseline run / merged run (back to back).\n"
                          "items/s: merged / baseline throughput (= mean latency ratio).\n"
                          "peak, act.: peak and activation memory saved (1 - merged / baseline).")
        _memory_table(console, backend, ok)
        _breakdown_tables(console, backend, ok, top)


def _memory_table(console: Any, backend: str, ok: list[Measurement]) -> None:
    mem = [r for r in ok if r.memory and ("peak_memory_mb" in r.memory or "device_memory_mb" in r.memory)]
    if not mem:
        for r in ok:
            if r.memory and "error" in r.memory:
                console.print(f"[yellow]{backend}: memory of {r.model.label} not measured[/]: {r.memory['error']}")
        return
    if backend == "trt":
        t = _table(f"{backend}: memory (MiB)", "model", "input", "engine", "device memory")
        for r in mem:
            t.add_row(r.model.label, _shape(r), _f(r.mem("engine_mb"), "{:.1f}"), _f(r.mem("device_memory_mb"), "{:.1f}"))
        console.print(t)
        return
    t = _table(f"{backend}: host memory (MiB), fresh process per model", "model", "input",
               "peak", "activation", "steady", "arena act.", "weights")
    for r in mem:
        arena = (r.breakdown.memory or {}).get("arena_activation_mb") if r.breakdown else None
        t.add_row(r.model.label, _shape(r), _f(r.mem("peak_memory_mb"), "{:.1f}"),
                  _f(r.mem("activation_memory_mb"), "{:.1f}") + ("" if r.mem("activation_method") == "clear_refs" else "*"),
                  _f(r.mem("activation_steady_mb"), "{:.1f}"), _f(arena, "{:.1f}"), _f(r.mem("weights_mb"), "{:.1f}"))
    console.print(t)
    console.print("peak: VmHWM - RSS before the session. activation: the runs' VmHWM - RSS of\n"
                  "the loaded session (* = peak - weights). steady: the same after warm-up.\n"
                  "arena act.: ORT profiler's arena in-use peak - in use before any node.")


def _breakdown_tables(console: Any, backend: str, ok: list[Measurement], top: int) -> None:
    with_bd = [r for r in ok if r.breakdown is not None]
    if not with_bd:
        return
    t = _table(f"{backend}: kernel time per run (ms), the merge's share", "model", "input",
               "kernels ms", "merge ms", "merge", "select ms", "select")
    for r in with_bd:
        b = r.breakdown
        t.add_row(r.model.label, _shape(r), _f(b.total_ms), _f(b.merge_ms), _pct(b.merge_share),
                  _f(b.selection_ms), _pct(b.selection_share))
    console.print(t)
    # top operators side by side, per shape
    for shape in dict.fromkeys(_shape(r) for r in with_bd):
        group = [r for r in with_bd if _shape(r) == shape]
        names = list(dict.fromkeys(o.name for r in group for o in r.breakdown.by_op[:top]))[:top]
        cols = [c for r in group for c in (f"{r.model.label} ms", "%")]
        ops = _table(f"{backend}: top operators, input {shape} (ms per run, share)", "op type", *cols)
        for name in names:
            cells = []
            for r in group:
                o = next((o for o in r.breakdown.by_op if o.name == name), None)
                cells += [_f(o.ms if o else None), _pct(o.share if o else None)]
            ops.add_row(name, *cells)
        console.print(ops)
