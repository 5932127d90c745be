"""The latency/memory plot of a :class:`~.report.ProfileReport` (matplotlib, Agg, imported lazily).

Left: p50 latency against batch, whiskers up to p90; right: peak and activation memory
against batch. One line per model (merged vs baseline) and backend, for each sequence length.
"""

from __future__ import annotations

import os
from pathlib import Path

from .report import ProfileReport

__all__ = ["plot_report"]


def plot_report(report: ProfileReport, path: str | os.PathLike[str]) -> Path:
    """Write the plot to ``path`` (PNG) atomically; returns the path.

    Raises:
        ImportError: matplotlib is not installed (``pip install matplotlib``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(f"--plot needs matplotlib ({err}); pip install matplotlib") from None
    from ..export.files import atomic_output

    ok = [r for r in report.results if r.status == "ok" and r.latency_ms]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    series = dict.fromkeys((r.model.label, r.backend, r.seq_len) for r in ok)
    for label, backend, seq in series:
        rows = sorted((r for r in ok if (r.model.label, r.backend, r.seq_len) == (label, backend, seq)),
                      key=lambda r: r.batch)
        name = f"{label} ({backend}{'' if seq is None else f', seq {seq}'})"
        xs = [r.batch for r in rows]
        p50 = [r.latency_ms["p50"] for r in rows]
        p90 = [r.latency_ms["p90"] for r in rows]
        ax_t.errorbar(xs, p50, yerr=[[0] * len(xs), [b - a for a, b in zip(p50, p90)]], marker="o",
                      capsize=3, label=name, linestyle="--" if rows[0].model.role == "baseline" else "-")
        peak = [(x, r.mem("peak_memory_mb")) for x, r in zip(xs, rows) if r.mem("peak_memory_mb") is not None]
        act = [(x, r.mem("activation_memory_mb")) for x, r in zip(xs, rows) if r.mem("activation_memory_mb") is not None]
        if peak:
            line = ax_m.plot(*zip(*peak), marker="o", label=f"{name} peak")[0]
            if act:
                ax_m.plot(*zip(*act), marker="s", linestyle=":", color=line.get_color(), label=f"{name} activation")
    ax_t.set(xlabel="batch", ylabel="latency (ms): p50, whisker to p90", title="latency")
    ax_m.set(xlabel="batch", ylabel="MiB", title="host memory (fresh process)")
    for ax in (ax_t, ax_m):
        batches = sorted({r.batch for r in ok})
        if len(batches) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"qm-export profile, {report.settings.get('threads')} threads", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    try:
        with atomic_output(out) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return out
