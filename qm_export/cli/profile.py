"""``qm-export profile MODEL [--baseline UNMERGED]``: latency, throughput, memory, per-op time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from .common import CommandFailed, console, emit_json, fail_on, verdict

GRAPH_OPT = ("disable", "basic", "extended", "layout", "all")


def _int_list(what: str):
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
        if value is None:
            return None
        try:
            items = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            items = []
        if not items or any(v < 1 for v in items):
            raise click.BadParameter(f"{value!r} is not a comma-separated list of positive {what} (e.g. 1,8,32)")
        return list(dict.fromkeys(items))
    return parse


def _backends(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from ..backends import parse_backends

    try:
        names = parse_backends(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    if "onnx-ref" in names:
        raise click.BadParameter("onnx-ref is not profiled: the ONNX reference evaluator is a slow pure-Python "
                                 "checker, its timings mean nothing; use ort, ort-cuda, trt or torch")
    return names


def _config(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in value:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. session.intra_op.allow_spinning=0)")
        out[key.strip()] = val.strip()
    return out


@contextmanager
def _progress(err) -> Iterator:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(description: str, completed: int, total: int | None) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total)
            bar.update(tasks[description], completed=completed, total=total)

        yield update


_SCHEMA_HELP = """\b
JSON (--json, on stdout): {"schema", "date", "machine", "settings",
"models": [...], "results": [one per model x backend x shape:
{"label", "role", "backend", "batch", "seq_len", "status" (ok|skipped|failed),
"why", "runs", "warmup", "threads",
"latency_ms": {min, mean, p50, p90, p95, p99, max}, "throughput" (items/s),
"times_ms", "other_cpu_load", "peak_memory_mb", "activation_memory_mb",
"activation_method", "memory": {...}, "merge_share", "selection_share",
"breakdown": {...}, "baseline", "speedup": {min, mean, p50, ..., max,
throughput, paired_p50} (baseline / merged), "memory_reduction":
{peak_memory, activation_memory, arena_activation} (1 - merged / baseline)}]}
Full schema: docs/profile.md."""


@click.command(epilog=_SCHEMA_HELP)
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--baseline", type=click.Path(exists=True, path_type=Path),
              help="The unmerged model (convert --no-merge): timed interleaved with MODEL; speed-up and memory saved.")
@click.option("--backends", default="ort", show_default=True, callback=_backends,
              help="Comma-separated: ort, torch (the source model, eager), ort-cuda, trt.")
@click.option("--batch", "batches", default="1", show_default=True, callback=_int_list("integers"),
              help="Batch sizes to sweep, e.g. 1,8,32.")
@click.option("--seq-len", "seq_lens", default=None, callback=_int_list("integers"),
              help="Sequence lengths to sweep, e.g. 16,64 (models with a sequence axis) [default: the source's].")
@click.option("--threads", type=click.IntRange(min=0), default=2, show_default=True,
              help="Intra-op threads (ORT intra_op_num_threads, torch set_num_threads); 0: the runtime's choice.")
@click.option("--runs", type=click.IntRange(min=1), default=None,
              help="Timed runs per model and shape [default: 50; no limit with --duration].")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed runs per model and shape before timing.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Time budget per backend and shape: timing stops after --runs iterations or once SECONDS have "
                   "passed (checked after each iteration, warm-up not counted), whichever comes first.")
@click.option("--no-memory", is_flag=True, help="Skip the memory measurement (a child process per model).")
@click.option("--no-breakdown", is_flag=True, help="Skip the per-operator profile (a separate profiling session).")
@click.option("--graph-opt", type=click.Choice(GRAPH_OPT), default=None,
              help="ORT graph optimisation level [default: ORT's, all].")
@click.option("--no-arena", is_flag=True, help="ORT: enable_cpu_mem_arena off.")
@click.option("--ort-config", "ort_config", multiple=True, metavar="KEY=VALUE", callback=_config,
              help="ORT session config entry (repeatable), e.g. session.intra_op.allow_spinning=0. The profiler "
                   "sets session.force_spinning_stop=1 (see docs/profile.md); =0 restores ORT's default.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG: p50 latency (whiskers to p90) and memory against batch.")
@click.option("--force", is_flag=True, help="Overwrite --plot's file if it exists.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the inputs.")
@click.option("--new-tokens", type=click.IntRange(min=1), default=None,
              help="Generation folders: tokens generated per run [default: 32].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (tables still on stderr).")
def profile(model: Path, baseline: Path | None, backends: list[str], batches: list[int], seq_lens: list[int] | None,
            threads: int, runs: int | None, warmup: int, duration: float | None, no_memory: bool, no_breakdown: bool,
            graph_opt: str | None, no_arena: bool, ort_config: dict[str, str], plot: Path | None, force: bool,
            seed: int, new_tokens: int | None, as_json: bool) -> None:
    """Profile MODEL (an ONNX file, or a causal LM's generation folder): latency, throughput,
    memory and time per operator.

    A generation folder (convert -o FOLDER) is profiled for generation on ONNX Runtime:
    time to first token (the prefill), per-token decode latency p50/p95, tokens/s and the KV
    cache's bytes after the prefill, interleaved with --baseline's folder (--batch, --seq-len
    as the prompt length, --new-tokens, --runs [default 5], --warmup, --threads, --seed).

    Per backend and input shape (--batch x --seq-len), MODEL and --baseline are timed
    interleaved in one loop, order alternating every run: --warmup untimed runs, then
    --runs timed runs (or --duration). Latency min/mean/p50/p90/p95/p99 in ms (numpy's
    linear percentiles), throughput = batch x runs / total time (items/s). ORT memory
    (MiB) comes from a fresh process per model: peak = VmHWM minus the RSS before the
    session; activation = the runs' VmHWM minus the RSS of the loaded session
    (clear_refs), or peak minus the weights where clear_refs is unavailable. The
    per-operator time comes from a separate ORT session with profiling on: merge_share
    is the qm ops' share of kernel time, selection_share the selection nodes'. Exit codes:
    0 measured (backends that cannot run here are skipped, with why), 1 a measurement
    failed, 2 bad input, 130 interrupted.
    """
    from ..generation.folder import is_generation_folder

    if is_generation_folder(model) or (baseline is not None and is_generation_folder(baseline)):
        _profile_generation(model, baseline, batches, seq_lens, new_tokens, runs, warmup, threads, seed, as_json)
        return
    if new_tokens is not None:
        raise click.UsageError("--new-tokens times generation; MODEL is not a generation folder (convert a causal LM "
                               "with -o FOLDER)")
    if model.is_dir():
        raise click.BadParameter(f"{str(model)!r} is a folder but not a generation folder (no generation.json)",
                                 param_hint="'MODEL'")
    from ..export.files import OutputPathError, check_output_path
    from ..profile.core import ProfileInputError, profile_models
    from ..profile.ort_session import OrtSettings
    from ..profile.render import render_report
    from ..profile.timing import DEFAULT_RUNS

    if plot is not None:
        try:
            plot = check_output_path(plot, force=force, suffix=".png")
        except OutputPathError as err:
            raise click.BadParameter(str(err), param_hint="'--plot'") from None
    if runs is None and duration is None:
        runs = DEFAULT_RUNS
    flags = {key: ort_config.pop(name) not in ("0", "false", "False")
             for key, name in (("allow_spinning", "session.intra_op.allow_spinning"),
                               ("force_spinning_stop", "session.force_spinning_stop")) if name in ort_config}
    settings = OrtSettings(threads=threads, graph_optimization=graph_opt, cpu_mem_arena=False if no_arena else None,
                           config=ort_config, **flags)
    err = console(stderr=True)
    with fail_on():
        try:
            with _progress(err) as progress:
                report = profile_models([model], baseline, backends=backends, batches=batches,
                                        seq_lens=seq_lens or [None], threads=threads, runs=runs, warmup=warmup,
                                        duration=duration, progress=progress, memory=not no_memory,
                                        breakdown=not no_breakdown, settings=settings, seed=seed)
        except ProfileInputError as exc:
            hint = {"MODEL": "'MODEL'"}.get(exc.param, f"'{exc.param}'")
            raise click.BadParameter(str(exc), param_hint=hint) from None
    render_report(report, err)
    if plot is not None:
        try:
            from ..profile.plot import plot_report

            plot_report(report, plot)
        except ImportError as exc:
            raise CommandFailed(str(exc)) from None
        err.print(f"wrote {plot}", soft_wrap=True)
    counts = {k: sum(r.status == k for r in report.results) for k in ("ok", "skipped", "failed")}
    if counts["failed"]:
        first = next(r for r in report.results if r.status == "failed")
        raise CommandFailed(f"{counts['failed']} measurement(s) failed ({first.backend}: {first.why})",
                            report=report.to_json())
    if as_json:
        emit_json(report.to_json())
    verdict(err, "DONE", f"{counts['ok']} measured, {counts['skipped']} skipped (model x backend x shape)")


#: Options of ``profile`` that generation folders take; any other given on the command line is refused.
_GENERATION_OPTIONS = {"model", "baseline", "batches", "seq_lens", "threads", "runs", "warmup", "seed", "new_tokens",
                       "as_json"}


def _profile_generation(model: Path, baseline: Path | None, batches: list[int], seq_lens: list[int] | None,
                        new_tokens: int | None, runs: int | None, warmup: int, threads: int, seed: int,
                        as_json: bool) -> None:
    from ..generation.folder import is_generation_folder
    from ..generation.profile import profile_generation, render_generation_profile

    ctx = click.get_current_context()
    given = [p for p in ctx.command.params if p.name not in _GENERATION_OPTIONS
             and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"{given[0].opts[-1]} does not apply to a generation folder (profiled on ort: TTFT, "
                               "decode latency, tokens/s, KV cache)")
    for path, what in ((model, "MODEL"), (baseline, "--baseline")):
        if path is not None and not is_generation_folder(path):
            raise click.BadParameter(f"{str(path)!r} is not a generation folder, and the other one is: compare "
                                     "generation folders with each other", param_hint=f"'{what}'")
    err = console(stderr=True)
    with fail_on():
        with _progress(err) as progress:
            report = profile_generation(model, baseline, batches=batches, seq_lens=seq_lens,
                                        new_tokens=new_tokens or 32, runs=runs or 5, warmup=min(warmup, 2),
                                        threads=threads or None, seed=seed, progress=progress)
    render_generation_profile(report, err)
    if as_json:
        emit_json(report)
    verdict(err, "DONE", f"{len(report['results'])} shape(s) measured for generation")
