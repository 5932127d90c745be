"""``sweep``: quality against latency over keep ratios, the curve an operating point is picked from.

For every merge layer (``layer``: one or several, each on its own; ``-1`` = ``embed``, the
embeddings before layer 0), keep ratio and method (``compare=("tome",)``) the source is merged
once, in that layer, at that ratio, exported to ONNX and run in ONNX Runtime:

- **quality**: the cosine of the model's main output to the unmerged model's, per row
  (flattened), on the source's inputs (a Hugging Face text model's own tokenizer over
  built-in text; a recipe's seeded inputs), mean and minimum over the rows;
- **latency**: every model timed interleaved in one run (:func:`time_interleaved`), batch
  ``batch``, so ratios between rows are measured side by side.

Ratio 1 is the unmerged model itself (the reference of both columns). QuickMerge++ and ToMe
(``bipartite_merge`` exported, :mod:`qm_export.merge.tome_export`) get the same layer and the
same token counts, deployed in the same runtime.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..models.schedule import layer_label

__all__ = ["SweepOptions", "SweepRow", "SweepReport", "parse_ratios", "row_cosines", "run_sweep", "METHODS"]

METHODS = ("quickmerge", "tome")
Progress = Callable[[str], None]


def parse_ratios(text: str | Sequence[float]) -> list[float]:
    """``"1,0.75,0.5,0.33"`` -> ``[1.0, 0.75, 0.5, 0.33]`` (duplicates dropped, order kept).

    Raises:
        ValueError: a value that is not a number in ``(0, 1]``, or an empty list.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[float] = []
    for raw in items:
        item = str(raw).strip()
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"--keep-ratios: {item!r} is not a number") from None
        if not 0.0 < value <= 1.0:
            raise ValueError(f"--keep-ratios: {item} is not a keep ratio in (0, 1]")
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError("--keep-ratios: no ratio given")
    return out


def row_cosines(ref: np.ndarray, other: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of each row (axis 0) of two outputs, flattened over the other axes.

    ``mask`` ``(B, N)`` (e.g. ``attention_mask``): positions where it is 0 are left out of a
    per-token output ``(B, N, ...)`` (a padded position's value means nothing).
    """
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in shape: {ref.shape} vs {other.shape}")
    if mask is not None and a.ndim >= 2 and a.shape[:2] == np.asarray(mask).shape:
        keep = (np.asarray(mask) != 0).reshape(mask.shape + (1,) * (a.ndim - 2))
        a, b = np.where(keep, a, 0.0), np.where(keep, b, 0.0)
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(1)
    return np.where(denom > 0, dots / np.where(denom > 0, denom, 1.0), 1.0)


@dataclass
class SweepOptions:
    """Everything ``qm-export sweep`` takes (see its ``--help``)."""

    source: str
    keep_ratios: Sequence[float]
    compare: Sequence[str] = ()
    #: merge layers to sweep, each on its own (``EMBED`` = -1: the embeddings); None: the
    #: source's first merge layer. One int is one layer.
    layer: int | Sequence[int] | None = None
    batch: int = 1
    quality_batch: int = 8
    seq_len: int | None = None
    threads: int = 2
    runs: int = 20
    warmup: int = 3
    seed: int = 0
    out_dir: Path | None = None


@dataclass
class SweepRow:
    """One model of the sweep."""

    method: str
    keep_ratio: float
    schedule: str
    #: the merge layer (``-1``: the embeddings; None for the unmerged model)
    layer: int | None
    tokens_per_layer: list[int]
    token_layers: float
    cosine_mean: float
    cosine_min: float
    latency_ms: dict[str, float]
    speedup_p50: float | None = None
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class SweepReport:
    """The sweep: its settings, one :class:`SweepRow` per model, and the output compared."""

    source: str
    layers: list[int]
    output: str
    batch: int
    threads: int
    runs: int
    rows: list[SweepRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "layers": self.layers, "output": self.output, "batch": self.batch,
                "threads": self.threads, "runs": self.runs, "rows": [r.to_json() for r in self.rows],
                "notes": self.notes}


def _default_layer(source: str, seed: int) -> int:
    from ..models import load_source

    loaded = load_source(source, seed=seed)
    return int(loaded.merge_layers[0]) if loaded.merge_layers else 0


def _layers(options: SweepOptions) -> list[int]:
    if options.layer is None:
        return [_default_layer(options.source, options.seed)]
    layers = [options.layer] if isinstance(options.layer, int) else list(options.layer)
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"--layer: give each layer once, got {layers}")
    return [int(x) for x in layers]


def _export(loaded: Any, path: Path) -> None:
    from ..export.onnx_export import export_onnx

    opset = getattr(getattr(loaded, "export_defaults", None), "opset", 20)
    exported = export_onnx(loaded, path, opset=opset, merge_impl="plugin", force=True)
    exported.cleanup()


def run_sweep(options: SweepOptions, progress: Progress | None = None) -> SweepReport:
    """Export, evaluate and time every ratio (and method); see the module docstring.

    Raises:
        ValueError / TypeError: a bad source, ratio, layer or method (before any export).
    """
    from ..models import load_source
    from ..profile.ort_session import OrtProfileRunner, OrtSettings
    from ..profile.stats import latency_stats
    from ..profile.timing import time_interleaved
    from ..validate.inputs import source_input_sets

    say = progress or (lambda _msg: None)
    ratios = parse_ratios(list(options.keep_ratios))
    for method in options.compare:
        if method not in METHODS or method == "quickmerge":
            raise ValueError(f"--compare: {method!r} is not a method to compare with; use tome")
    methods = ["quickmerge", *[m for m in options.compare if m != "quickmerge"]]
    say(f"loading {options.source}")
    layers = _layers(options)
    # Loaded as `convert` loads them (debug outputs traced, then stripped by export_onnx): the
    # sweep times the graph `convert` writes for the same schedule and defaults.
    base = load_source(options.source, no_merge=True, seed=options.seed, seq_len=options.seq_len, debug_outputs=True)
    feeds_quality = source_input_sets(base, seed=options.seed, batch=options.quality_batch, seq_len=options.seq_len)[0]
    feeds_time = source_input_sets(base, seed=options.seed, batch=options.batch, seq_len=options.seq_len)[0]
    plan = [(layer, m, r) for layer in layers for m in methods for r in ratios if r < 1.0]
    # Load every merged model before exporting anything: a bad layer or ratio fails in seconds.
    models: list[tuple[int | None, str, float, Any]] = [(None, "unmerged", 1.0, base)]
    for layer, method, ratio in plan:
        spec = f"{layer}:{ratio!r}"  # "-1:0.5" is the embed merge
        kwargs = {"method": method} if method != "quickmerge" else {}
        models.append((layer, method, ratio, load_source(options.source, schedule=spec, seed=options.seed,
                                                         seq_len=options.seq_len, debug_outputs=True, **kwargs)))
    report = SweepReport(source=options.source, layers=layers, output=str(base.output_names[0]), batch=options.batch,
                         threads=options.threads, runs=options.runs)
    settings = OrtSettings(threads=options.threads)
    with tempfile.TemporaryDirectory(prefix="qm-sweep-") as tmp:
        folder = Path(options.out_dir) if options.out_dir is not None else Path(tmp)
        runners, paths = [], []
        for i, (layer, method, ratio, loaded) in enumerate(models):
            name = "unmerged" if layer is None else f"{method}-{layer_label(layer)}-{ratio:g}"
            path = folder / f"{name}.onnx"
            say(f"exporting {name} ({i + 1}/{len(models)})")
            _export(loaded, path)
            runners.append(OrtProfileRunner(path, settings))
            paths.append(path)
        say("running the quality inputs")
        outputs = [r.run(feeds_quality)[report.output] for r in runners]
        calls = [lambda r=r: r.run(feeds_time) for r in runners]
        times = time_interleaved(calls, warmup=options.warmup, runs=options.runs,
                                 progress=lambda d, i, n: say(f"timing {len(runners)} models interleaved: {i}/{n}"),
                                 description="timing")
        base_tokens = base.tokens_per_layer(*base.example_inputs)
        for (layer, method, ratio, loaded), out, t, path in zip(models, outputs, times, paths):
            cos = row_cosines(outputs[0], out, feeds_quality.get("attention_mask"))
            tokens = loaded.tokens_per_layer(*loaded.example_inputs)
            stats = latency_stats(t)
            report.rows.append(SweepRow(
                method=method, keep_ratio=ratio, layer=layer,
                schedule="none" if layer is None else f"{layer_label(layer)}:{ratio:g}",
                tokens_per_layer=tokens, token_layers=sum(tokens[:-1]) / max(sum(base_tokens[:-1]), 1),
                cosine_mean=float(cos.mean()), cosine_min=float(cos.min()), latency_ms=stats,
                path=str(path) if options.out_dir is not None else None,
            ))
    base_p50 = report.rows[0].latency_ms["p50"]
    for row in report.rows:
        row.speedup_p50 = base_p50 / row.latency_ms["p50"]
    return report


def render_sweep(report: SweepReport, console: Any) -> None:
    """The sweep as a table on ``console`` (stderr)."""
    from rich.table import Table

    where = ", ".join(layer_label(x) for x in report.layers)
    table = Table(title=f"sweep {report.source}: merge in layer {where}, ONNX Runtime CPU, "
                        f"{report.threads} threads, batch {report.batch}", title_justify="left", box=None,
                  pad_edge=False, padding=(0, 2, 0, 0), header_style="bold underline")
    for col in ("method", "layer", "keep", "tokens", "tok-lay", "cosine", "min cos", "p50 ms", "speedup"):
        table.add_column(col, justify="left" if col in ("method", "layer") else "right", no_wrap=True)
    for r in report.rows:
        table.add_row(r.method, "-" if r.layer is None else layer_label(r.layer), f"{r.keep_ratio:g}",
                      f"{r.tokens_per_layer[0]}->{r.tokens_per_layer[-1]}",
                      f"{r.token_layers:.2f}", f"{r.cosine_mean:.4f}", f"{r.cosine_min:.4f}",
                      f"{r.latency_ms['p50']:.2f}", f"{r.speedup_p50:.2f}x" if r.speedup_p50 else "-")
    console.print(table)
    console.print(f"cosine: of output {report.output!r} to the unmerged model's, per row; tok-lay: "
                  "tokens summed over layers, relative to unmerged")


def plot_sweep(report: SweepReport, path: Path) -> None:
    """Quality (cosine) against p50 latency, one line per method and layer; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..export.files import atomic_output

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    base = report.rows[0]
    for (method, marker), layer in ((m, x) for m in (("quickmerge", "o"), ("tome", "s")) for x in report.layers):
        rows = [base] + [r for r in report.rows if r.method == method and r.layer == layer]
        if len(rows) < 2:
            continue
        rows.sort(key=lambda r: r.latency_ms["p50"])
        label = {"quickmerge": "QuickMerge++", "tome": "ToMe"}[method]
        if len(report.layers) > 1:
            label += f", layer {layer_label(layer)}"
        ax.plot([r.latency_ms["p50"] for r in rows], [r.cosine_mean for r in rows], marker=marker, label=label)
        for r in rows:
            ax.annotate(f"{r.keep_ratio:g}", (r.latency_ms["p50"], r.cosine_mean), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"p50 latency, ms (ORT CPU, {report.threads} threads, batch {report.batch})")
    ax.set_ylabel(f"cosine to unmerged ({report.output})")
    ax.set_title(f"{report.source}: merge in layer {', '.join(layer_label(x) for x in report.layers)}, "
                 "labels = keep ratio")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


__all__ += ["render_sweep", "plot_sweep"]
