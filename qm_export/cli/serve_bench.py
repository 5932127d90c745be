"""``qm-export serve-bench``: throughput and latency of models on a Triton server under load."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .common import CommandFailed, InputError, console, emit_json, fail_on, status, verdict
from .profile import _int_list

_SCHEMA_HELP = """\b
JSON (--json, on stdout, also when the run is cut short): {"schema", "complete",
"passed", "url", "protocol", "models", "settings", "other_cpu_load",
"results": [one per model x concurrency: {"model", "concurrency", "batch",
"requests", "seconds", "requests_per_s", "throughput" (inferences/s),
"latency_ms": {p50, p95, p99, mean, min, max}, "server_batch" (rows per
model execution, from the server's statistics)}], "comparison": [{"model",
"versus", "concurrency", "throughput_ratio", "p50_ratio"}], "direct" (--direct),
"server" (--launch), "error" (when incomplete)}. See docs/serving.md."""


@contextlib.contextmanager
def _bar(err: Any) -> Iterator[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("load", total=None)

        def update(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        yield update


def _table(err: Any, doc: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="serve-bench (latency ms, throughput inferences/s)", title_justify="left")
    for col in ("model", "conc", "requests", "throughput", "p50", "p95", "p99", "batch"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in doc["results"]:
        lat = r["latency_ms"] or {}
        table.add_row(r["model"], str(r["concurrency"]), str(r["requests"]), f"{r['throughput'] or 0:.1f}",
                      *(f"{lat.get(k, float('nan')):.2f}" for k in ("p50", "p95", "p99")),
                      "-" if r.get("server_batch") is None else f"{r['server_batch']:.1f}")
    err.print(table)
    for model, d in doc.get("direct", {}).items():
        err.print(f"{model} directly in ONNX Runtime ({d['threads']} threads): p50 {d['p50']:.2f} ms, p95 {d['p95']:.2f} ms; "
                  f"served / direct p50 at concurrency 1: x{d['overhead_ratio']}", soft_wrap=True)
    for c in doc["comparison"]:
        err.print(f"{c['model']} vs {c['versus']} @ concurrency {c['concurrency']}: throughput x{c['throughput_ratio']}, "
                  f"p50 x{c['p50_ratio']} (>1: {c['model']} faster)", soft_wrap=True)


def _plot(doc: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(f"--plot needs matplotlib ({err}); pip install matplotlib") from None
    from ..export.files import atomic_output

    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(10, 4))
    for model in doc["models"]:
        rows = sorted((r for r in doc["results"] if r["model"] == model and r["latency_ms"]),
                      key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rows]
        ax_t.plot(xs, [r["throughput"] for r in rows], marker="o", label=model)
        line = ax_l.plot(xs, [r["latency_ms"]["p50"] for r in rows], marker="o", label=f"{model} p50")[0]
        ax_l.plot(xs, [r["latency_ms"]["p95"] for r in rows], marker="x", linestyle="--", color=line.get_color(),
                  label=f"{model} p95")
    for ax, ylabel in ((ax_t, "throughput (inferences/s)"), (ax_l, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Triton {doc['protocol']} at {doc['url']}" + ("" if doc["complete"] else " (incomplete)"))
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _host(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from ..serve.server import check_host

    try:
        return check_host(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command("serve-bench", epilog=_SCHEMA_HELP)
@click.option("--url", help="HOST:PORT of a running server (its gRPC port; the HTTP port with --protocol http).")
@click.option("--launch", type=click.Path(path_type=Path),
              help="Start the bundled tritonserver (nvidia-pytriton) on this repository for the run, on free "
                   "ports of --host, and stop it at the end.")
@click.option("--host", default="127.0.0.1", show_default=True, metavar="IPV4", callback=_host,
              help="With --launch: the address the server listens on (HTTP, gRPC, metrics); 127.0.0.1 is this "
                   "machine only, 0.0.0.0 every interface (anyone who reaches it can send requests).")
@click.option("--model", "models", multiple=True, required=True,
              help="A model in the repository (repeat for side by side; the first is compared with the others).")
@click.option("--concurrency", "concurrencies", default="1,8,32", callback=_int_list("integers"),
              help="Requests in flight, e.g. 1,8,32.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=10.0, metavar="SECONDS",
              help="Seconds of load per model and concurrency.")
@click.option("--rounds", type=click.IntRange(min=1), default=3,
              help="Windows per model and concurrency; models alternate window by window.")
@click.option("--batch", type=click.IntRange(min=1), default=1, help="Rows per request.")
@click.option("--seq-len", type=click.IntRange(min=1), default=64, help="Length of other dynamic axes (tokens).")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, metavar="SECONDS",
              help="Limit on every client call.")
@click.option("--direct", is_flag=True,
              help="With --launch: also time ONNX Runtime on each model's file in this process, one call at a "
                   "time, in windows alternating with the served ones at concurrency 1, for the server's "
                   "overhead (p50 served / p50 direct).")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="--direct: ONNX Runtime intra-op threads (match the repository's --threads).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG: throughput and latency.")
@click.option("--force", is_flag=True, help="Overwrite --plot's file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def serve_bench(url: str | None, launch: Path | None, host: str, models: tuple[str, ...], concurrencies: list[int],
                duration: float, rounds: int, batch: int, seq_len: int, protocol: str, timeout: float, direct: bool,
                threads: int, plot: Path | None, force: bool, as_json: bool) -> None:
    """Throughput and p50/p95/p99 latency of each --model on a Triton server under concurrent
    load (closed loop: each of N clients sends its next request when the last one returned),
    models side by side in alternating windows.

    Killing the server mid-run ends the command with one FAILED line and, with --json, the
    results so far marked "complete": false.
    """
    from ..export.files import check_output_path
    from ..serve.bench import BenchAborted, BenchOptions, check_models, direct_runner, launched, parse_url
    from ..serve.bench import run_bench, version_file

    err = console(stderr=True)
    if (url is None) == (launch is None):
        raise click.UsageError("give exactly one of --url (a running server) and --launch REPO")
    if direct and launch is None:
        raise click.BadParameter("--direct needs --launch (the model files are read from the repository)",
                                 param_hint="'--direct'")
    if host != "127.0.0.1" and launch is None:
        raise click.BadParameter("--host is where a launched server listens; it needs --launch", param_hint="'--host'")
    with fail_on():
        if plot is not None:
            plot = check_output_path(plot, force=force, suffix=".png", option="--plot")
        if url is not None:
            url = parse_url(url)
    with contextlib.ExitStack() as stack:
        srv = None
        if launch is not None:
            from ..serve.server import ServerUnavailable

            with fail_on(), status(err, f"starting tritonserver on {launch}"):
                try:
                    srv = stack.enter_context(launched(launch, host=host))
                except ServerUnavailable as exc:
                    raise CommandFailed(str(exc)) from None
            url = srv.grpc_url if protocol == "grpc" else srv.http_url
            if host != "127.0.0.1":
                err.print(f"[yellow]note:[/yellow] the server listens on {host}: anyone who can reach this machine "
                          "there can send it requests", soft_wrap=True)
        assert url is not None
        with fail_on():
            options = BenchOptions(url=url, models=models, concurrencies=tuple(concurrencies), duration=duration,
                                   rounds=rounds, batch=batch, seq_len=seq_len, protocol=protocol, timeout=timeout)
            try:
                inputs = check_models(options)
            except ConnectionError as exc:
                raise CommandFailed(str(exc)) from None
        runners: dict[str, Any] = {}
        if direct and launch is not None:
            with fail_on(), status(err, "loading the models for --direct") as say:
                for model in models:
                    path = version_file(launch, model)
                    if path is None:
                        raise InputError(f"--direct: model {model!r} in {launch} has no ONNX file to time")
                    say(f"loading {model}")
                    runners[model] = direct_runner(path, inputs[model].arrays, threads=threads)
        try:
            with _bar(err) as update:
                report = run_bench(options, inputs=inputs, progress=update,
                                   alive=(srv.alive if srv is not None else None),
                                   server_pid=srv.process.pid if srv is not None and srv.process else None,
                                   direct=runners)
        except BenchAborted as aborted:
            report = aborted.report
        if srv is not None:
            report.server = {"launched": str(launch), "binary": "nvidia-pytriton tritonserver"}
        report.direct_threads = threads if runners else None
    doc = report.to_json()
    if doc["results"]:
        _table(err, doc)
    if plot is not None and doc["results"]:
        with fail_on():
            _plot(doc, plot)
    if not report.complete:
        if as_json:
            emit_json(doc)
        raise CommandFailed(report.error or "incomplete", report=doc)
    if as_json:
        emit_json(doc)
    n = sum(r["requests"] for r in doc["results"])
    verdict(err, "DONE", f"{n} requests to {', '.join(models)} at concurrency "
                         f"{','.join(map(str, concurrencies))} ({protocol} {url})")
