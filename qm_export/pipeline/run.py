"""``run``: the main job in one command.

convert (merged and unmerged) -> check (TensorRT pre-flight of both) -> [build both engines,
when TensorRT is installed] -> validate (both, every backend present) -> profile (merged vs
unmerged, interleaved) -> a summary, ``report.json`` and ``report.png`` in one folder.

The folder is assembled in a hidden sibling (``.<name>.tmp-*``) and moved into place only
when every step finished, so a failed or interrupted run leaves no half-written folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunOptions", "RunReport", "run_pipeline", "DEFAULT_SOURCE", "check_run_folder", "render_run"]

#: The built-in default: a ViT-S/16 geometry (22M weights, 197 tokens) whose merge pays off
#: visibly on a CPU and whose whole run fits in about two minutes on 2 cores.
DEFAULT_SOURCE = "vit-small"
Progress = Callable[[str], None]


@dataclass
class RunOptions:
    """Everything ``qm-export run`` takes (see its ``--help``)."""

    source: str = DEFAULT_SOURCE
    out_dir: Path = Path("qm-export-run")
    force: bool = False
    schedule: str | None = None
    batches: tuple[int, ...] = (1, 4)
    threads: int = 2
    runs: int = 15
    warmup: int = 3
    seed: int = 0


@dataclass
class RunReport:
    """What ``run`` did: every step's own report and the summary."""

    source: str
    out_dir: Path
    steps: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.summary.get("passed"))

    def verdict(self) -> str:
        """The one line that ends ``run``: ``PASSED: ...`` or ``FAILED: ...`` (what failed)."""
        s = self.summary
        best = max((r["speedup"] or 0 for r in s.get("speed", []) if r["backend"] == "ort"), default=0)
        speed = f"; merged up to {best:.2f}x faster (ort p50)" if best else ""
        if self.passed:
            return f"PASSED: parity holds{speed}"
        what = [f"parity of {backend} on the {model} model" for backend, by_model in s.get("parity", {}).items()
                for model, v in by_model.items() if v.get("verdict") in ("FAILED", "failed")]
        checks = [f"TensorRT pre-flight of {name} ({n} error(s))" for name, n in s.get("check_errors", {}).items() if n]
        return f"FAILED: {'; '.join(what + checks) or 'parity failed'}{speed}"

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "out_dir": str(self.out_dir), "passed": self.passed, "verdict": self.verdict(),
                "summary": self.summary, "seconds": self.seconds, "notes": self.notes, "steps": self.steps}


def check_run_folder(path: Path, force: bool) -> Path:
    """The output folder may not exist yet (its parent must), or be empty, or be replaced
    with ``force``.

    Raises:
        ValueError: it is a file, or holds files and ``force`` is not set, or its parent is missing.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"-o {str(path)!r} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ValueError(f"-o {str(path)!r} exists and is not empty; pass --force to replace it")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise ValueError(f"-o {str(path)!r}: its parent folder {str(parent)!r} does not exist")
    return path


def _timed(report: RunReport, step: str, say: Progress) -> Any:
    class _Step:
        def __enter__(self) -> None:
            say(step)
            self.t0 = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            report.seconds[step] = round(time.perf_counter() - self.t0, 2)

    return _Step()


def _trt_status() -> str | None:
    """None when TensorRT can build here, else why not."""
    from ..trt.builder import import_tensorrt
    from ..trt.prepare import TensorRTUnavailable

    try:
        import_tensorrt()
    except TensorRTUnavailable as err:
        return str(err).split(". ")[0]
    return None


def _convert(options: RunOptions, out: Path, no_merge: bool) -> dict[str, Any]:
    from ..export.convert import ConvertOptions, run_convert

    conv = run_convert(ConvertOptions(
        source=options.source, output=out, schedule=None if no_merge else options.schedule, no_merge=no_merge,
        verify=False, force=True, seed=options.seed,
    ), console=_QuietConsole())
    return conv.to_json()


class _QuietConsole:
    """A console for nested steps: spinners and tables are dropped (run prints its own)."""

    def status(self, *args: Any, **kwargs: Any) -> Any:
        import contextlib

        class _S:
            def update(self, *a: Any, **k: Any) -> None:
                pass

        return contextlib.nullcontext(_S())

    def print(self, *args: Any, **kwargs: Any) -> None:
        pass


def run_pipeline(options: RunOptions, progress: Progress | None = None) -> RunReport:
    """Run every step into ``options.out_dir``; see the module docstring.

    Raises:
        ValueError: a bad folder, source or schedule (before anything is written).
    """
    from ..export.files import user_mode
    from ..trt.check.checker import check_onnx_file
    from ..profile.core import profile_models
    from ..profile.plot import plot_report
    from ..validate.run import ValidateOptions, validate_model

    say = progress or (lambda _msg: None)
    final = check_run_folder(options.out_dir, options.force)
    parent = final.resolve().parent
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    os.chmod(stage, user_mode(directory=True))
    report = RunReport(source=options.source, out_dir=final)
    try:
        merged, baseline = stage / "merged.onnx", stage / "baseline.onnx"
        with _timed(report, "convert merged", say):
            report.steps["convert_merged"] = _convert(options, merged, no_merge=False)
        with _timed(report, "convert unmerged", say):
            report.steps["convert_baseline"] = _convert(options, baseline, no_merge=True)
        with _timed(report, "check", say):
            report.steps["check"] = {name: check_onnx_file(path).to_dict() for name, path in
                                     (("merged", merged), ("baseline", baseline))}
        trt_why = _trt_status()
        backends = ["ort"]
        if trt_why is None:
            with _timed(report, "build engines", say):
                report.steps["build"] = _build_engines(stage, merged, baseline)
            backends.append("trt")
        else:
            report.notes.append(f"TensorRT engines not built: {trt_why}")
        # The merged model at every declared shape; the unmerged one (no selection to check)
        # at the example's batch.
        for name, path, batch in (("merged", merged, None), ("baseline", baseline, _example_batch(baseline))):
            with _timed(report, f"validate {name}", say):
                v = validate_model(ValidateOptions(model=path, seed=options.seed, threads=options.threads, batch=batch),
                                   progress=lambda msg, n=name: say(f"validate {n}: {msg}"))
            report.steps[f"validate_{name}"] = v.to_json()
        with _timed(report, "profile", say):
            prof = profile_models([merged], baseline, backends=backends, batches=options.batches,
                                  threads=options.threads, runs=options.runs, warmup=options.warmup, seed=options.seed,
                                  progress=lambda d, i, n: say(f"profile: {d} {i}/{n or '?'}"))
            plot_report(prof, stage / "report.png")
        report.steps["profile"] = prof.to_json()
        report.summary = _summary(report)
        _write_json(stage / "report.json", report.to_json())
        _move_into_place(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return report


def _example_batch(model: Path) -> int | None:
    from ..export.provenance import Provenance

    prov = Provenance.of_file(model)
    shapes = [spec["shape"] for spec in (prov.inputs.values() if prov else [])]
    return int(shapes[0][0]) if shapes else None


def _build_engines(stage: Path, merged: Path, baseline: Path) -> dict[str, Any]:  # pragma: no cover - needs TensorRT
    from ..trt.builder import build_engine
    from ..trt.prepare import BuildRequest

    out = {}
    for name, path in (("merged", merged), ("baseline", baseline)):
        result = build_engine(BuildRequest(onnx_path=path, engine_path=stage / f"{name}.engine", force=True))
        out[name] = result.sidecar
    return out


def _write_json(path: Path, data: Any) -> None:
    from ..export.files import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _move_into_place(stage: Path, final: Path) -> None:
    """``stage`` becomes ``final`` (an empty or, with --force, replaced folder)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(stage, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, final)


def _summary(report: RunReport) -> dict[str, Any]:
    conv = report.steps["convert_merged"]
    base = report.steps["convert_baseline"]
    validate = {name: report.steps[f"validate_{name}"] for name in ("merged", "baseline")}
    parity = {}
    for name, v in validate.items():
        for backend, status in v["backends"].items():
            if backend == v["reference"]:
                continue
            ok = all(o["passed"] for o in v["outputs"] if o["backend"] == backend)
            bugs = sum(s["bugs"] for s in v["selection"] if s["backend"] == backend)
            near = sum(s["near_ties"] for s in v["selection"] if s["backend"] == backend)
            verdict = status["status"] if status["status"] != "ran" else ("passed" if ok and not bugs else "FAILED")
            parity.setdefault(backend, {})[name] = {"verdict": verdict, "why": status["why"], "near_ties": near,
                                                    "bugs": bugs}
    speed = []
    for r in report.steps["profile"]["results"]:
        if r.get("role") == "model" and r.get("status") == "ok":
            speed.append({"backend": r["backend"], "batch": r["batch"], "seq_len": r.get("seq_len"),
                          "p50_ms": r["latency_ms"]["p50"], "speedup": (r.get("speedup") or {}).get("p50"),
                          "throughput_speedup": (r.get("speedup") or {}).get("throughput"),
                          "peak_memory_reduction": (r.get("memory_reduction") or {}).get("peak_memory"),
                          "activation_memory_reduction": (r.get("memory_reduction") or {}).get("activation_memory"),
                          "merge_share": r.get("merge_share")})
    checks = report.steps["check"]
    return {
        "passed": all(v["passed"] for v in validate.values()) and all(c.get("ok", True) for c in checks.values()),
        "source": report.source,
        "schedule": conv.get("schedule"),
        "tokens_per_layer": {"merged": conv.get("tokens_per_layer"), "baseline": base.get("tokens_per_layer")},
        "check_errors": {n: sum(1 for f in c.get("findings", []) if f.get("severity") == "error") for n, c in checks.items()},
        "parity": parity,
        "speed": speed,
    }


def render_run(report: RunReport, console: Any) -> None:
    """The summary as tables on ``console`` (stderr), ending with one verdict line."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    s = report.summary
    tokens = s["tokens_per_layer"]
    console.print(f"[bold]{escape(report.source)}[/] merged at {escape(str(s['schedule']))}: tokens per layer "
                  f"{' '.join(map(str, tokens['merged']))} (unmerged {tokens['baseline'][0]} everywhere)")
    par = Table(title="parity vs torch", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("backend", "merged", "unmerged", "near-ties", "why"):
        par.add_column(col, overflow="fold", no_wrap=col in ("backend", "merged", "unmerged"))
    for backend, by_model in s["parity"].items():
        m, b = by_model.get("merged", {}), by_model.get("baseline", {})
        why = (m.get("why") or "") if m.get("verdict") in ("skipped", "failed") else ""
        why = re.split(r"(?<=[.;])\s", why, maxsplit=1)[0]  # its first sentence; report.json has it all
        par.add_row(backend, m.get("verdict", "-"), b.get("verdict", "-"), str(m.get("near_ties", "-")),
                    escape(why[:120]))
    console.print(par)
    sp = Table(title="merged vs unmerged (interleaved in one run)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("backend", "batch", "p50 ms", "speed-up", "peak mem", "activ. mem", "merge ops"):
        sp.add_column(col, justify="left" if col == "backend" else "right", no_wrap=True)

    def pct(x: float | None) -> str:  # a reduction of 0.3 is shown as -30%
        return "-" if x is None else f"{-100 * x:+.0f}%"

    for r in s["speed"]:
        sp.add_row(r["backend"], str(r["batch"]), f"{r['p50_ms']:.2f}",
                   f"{r['speedup']:.2f}x" if r["speedup"] else "-", pct(r["peak_memory_reduction"]),
                   pct(r["activation_memory_reduction"]),
                   f"{100 * r['merge_share']:.1f}%" if r.get("merge_share") is not None else "-")
    console.print(sp)
    console.print("memory columns: change against unmerged (-63% = 63% less); merge ops: the qm ops' share of kernel time")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    secs = sum(report.seconds.values())
    console.print(f"files in {escape(str(report.out_dir))}/: merged.onnx, baseline.onnx, report.json, report.png "
                  f"({secs:.0f} s)")
    word, _, text = report.verdict().partition(": ")
    color = "green" if report.passed else "red"
    console.print(f"[bold {color}]{word}[/]: {escape(text)}", soft_wrap=True)
