"""``qm-export check``: TensorRT pre-flight of an ONNX file, no GPU or TensorRT needed."""

from __future__ import annotations

from pathlib import Path

import click

from ..trt.versions import DEFAULT_CHECK_VERSION, TrtVersion, parse_trt_version
from .common import CommandFailed, console, emit_json, verdict


def _trt_version(ctx: click.Context, param: click.Parameter, value: str | None) -> TrtVersion:
    if value is None:
        return DEFAULT_CHECK_VERSION
    try:
        version = parse_trt_version(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc
    if version.major not in (10, 11):
        raise click.BadParameter(
            f"TensorRT {value!r}: the check knows the parser rules of TensorRT 10.x and 11.x only", ctx=ctx, param=param
        )
    return version


@click.command()
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--trt-version",
    callback=_trt_version,
    metavar="X.Y",
    help=f"TensorRT version whose ONNX parser rules apply (10.x or 11.x)  [default: {DEFAULT_CHECK_VERSION}]",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON report on stdout.")
def check(model: Path, trt_version: TrtVersion, as_json: bool) -> None:
    """Check MODEL.onnx against the TensorRT ONNX parser of a given version.

    Walks the graph, If/Loop/Scan bodies and model-local functions; reports each node that
    will fail (error) or degrade (warning), with a fix. Exits 0 when there is no error, 1 when
    there is one, 2 for a missing or unreadable MODEL.
    """
    from ..trt.check.checker import check_onnx_file

    try:
        report = check_onnx_file(model, trt_version)
    except FileNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="MODEL") from exc
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="MODEL") from exc
    from ..trt.check.report import render_report

    err = console(stderr=True)
    if not err.is_terminal:  # wide enough off a terminal (pipes, CliRunner) that messages are not chopped
        err.width = 160
    render_report(report, err)
    doc = {"passed": report.ok, **report.to_dict()}
    counts = report.counts()
    if not report.ok:
        raise CommandFailed(f"{counts['error']} error(s) for the ONNX parser of TensorRT {report.trt_version} "
                            f"({counts['warning']} warning(s))", report=doc)
    if as_json:
        emit_json(doc)
    verdict(err, "PASSED", f"no errors for the ONNX parser of TensorRT {report.trt_version} "
                           f"({counts['warning']} warning(s))")
