"""``qm-export build``: ONNX -> TensorRT engine (needs TensorRT >= 10.9 and a CUDA GPU)."""

from __future__ import annotations

from pathlib import Path

import click

from ..trt.precision import PRECISIONS
from ..trt.units import format_bytes, parse_bytes
from .common import CommandFailed, InputError, console, emit_json, status, verdict


def _workspace(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


@click.command()
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Engine file [default: MODEL with .engine]."
)
@click.option(
    "--shapes",
    multiple=True,
    metavar="NAME:MIN,OPT,MAX",
    help="Profile of one input, dims separated by 'x' (input_ids:1x8,4x128,8x256). Repeatable. Wins over --recipe.",
)
@click.option(
    "--recipe", metavar="NAME_OR_TOML", help="Take the profile from a recipe's [build.shapes.<input>] tables."
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="Engine precision [default: the ONNX's own]. TensorRT 11 builds only the ONNX's own.",
)
@click.option("--workspace", callback=_workspace, metavar="SIZE", help="Workspace memory limit, e.g. 4GiB or 512MiB.")
@click.option(
    "--timing-cache",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Timing cache file: loaded if present, saved after the build.",
)
@click.option("--force", is_flag=True, help="Overwrite the engine and its .json sidecar if they exist.")
@click.option("--verbose", is_flag=True, help="TensorRT's verbose log.")
@click.option("--json", "as_json", is_flag=True, help="Print the sidecar (what was built) as JSON on stdout.")
def build(
    model: Path,
    output: Path | None,
    shapes: tuple[str, ...],
    recipe: str | None,
    precision: str | None,
    workspace: int | None,
    timing_cache: Path | None,
    force: bool,
    verbose: bool,
    as_json: bool,
) -> None:
    """Build MODEL.onnx into a TensorRT engine with the qm plugins (AOT: runs under trtexec).

    The optimization profile comes from --shapes, else --recipe, else the ONNX metadata
    written by `qm-export convert`, else the graph's static input shapes. Writes the engine
    and MODEL.engine.json (versions, GPU, profile, precision, plugins, ONNX SHA-256), both
    atomically and only once the build succeeded; the output folder must exist. Exit codes:
    0 built, 1 TensorRT missing or the build failed, 2 bad input, 130 interrupted.
    """
    from rich.markup import escape

    from ..trt.prepare import BuildError, BuildRequest, TensorRTUnavailable

    request = BuildRequest(
        onnx_path=model,
        engine_path=output if output is not None else model.with_suffix(".engine"),
        shapes=shapes,
        recipe=recipe,
        precision=precision,
        workspace_bytes=workspace,
        timing_cache=timing_cache,
        force=force,
        verbose=verbose,
    )
    if timing_cache is not None and not (timing_cache.parent if str(timing_cache.parent) else Path(".")).is_dir():
        raise InputError(f"--timing-cache: folder {str(timing_cache.parent)!r} does not exist (it is not created for you)")
    err = console(stderr=True)
    try:
        from ..trt.builder import build_engine

        with status(err, "preparing") as say:
            result = build_engine(request, stage=say)
    except FileNotFoundError as exc:
        if not model.is_file():
            raise click.BadParameter(str(exc), param_hint="'MODEL'") from None
        raise InputError(str(exc)) from None  # the output's folder (the message names -o)
    except (FileExistsError, IsADirectoryError, PermissionError, ValueError) as exc:
        raise InputError(str(exc)) from None
    except (TensorRTUnavailable, BuildError) as exc:
        raise CommandFailed(str(exc)) from None
    side = result.sidecar
    for note in side.get("notes", []):
        err.print(f"[yellow]note:[/yellow] {escape(note)}")
    err.print(f"engine  {escape(str(result.engine_path))} ({format_bytes(side['engine']['bytes'])})", soft_wrap=True)
    err.print(f"sidecar {escape(str(result.sidecar_path))}", soft_wrap=True)
    err.print(
        f"TensorRT {side['tensorrt']['version']}, {side['precision']}, profile from {side['profile']['source']}, "
        f"plugins {', '.join(side['plugins']['used']) or 'none'}, built in {side['build_seconds']:.1f} s"
    )
    if as_json:
        emit_json({"passed": True, "engine_path": str(result.engine_path), "sidecar_path": str(result.sidecar_path),
                   "sidecar": side})
    verdict(err, "DONE", f"built {result.engine_path} ({format_bytes(side['engine']['bytes'])}) and its sidecar")
