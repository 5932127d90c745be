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
@click.argument("model", type=click.Path(path_type=Path))
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
    atomically and only once the build succeeded; the output folder must exist. MODEL may be a
    causal LM's generation folder: then prefill.engine and decode.engine are built beside its
    graphs (the decode profile covers every cache length up to the context). Exit codes:
    0 built, 1 TensorRT missing or the build failed, 2 bad input, 130 interrupted.
    """
    from rich.markup import escape

    from ..generation.folder import is_generation_folder
    from ..trt.prepare import BuildError, BuildRequest, TensorRTUnavailable

    if is_generation_folder(model):
        _build_generation_folder(model, output, shapes, recipe, precision, workspace, timing_cache, force, verbose,
                                 as_json)
        return
    if model.is_dir():
        raise click.BadParameter(f"{str(model)!r} is a folder but not a generation folder (no generation.json)",
                                 param_hint="'MODEL'")
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


def _build_generation_folder(folder: Path, output: Path | None, shapes: tuple[str, ...], recipe: str | None,
                             precision: str | None, workspace: int | None, timing_cache: Path | None, force: bool,
                             verbose: bool, as_json: bool) -> None:
    """``build FOLDER``: prefill.engine and decode.engine beside the graphs, each with its own
    profile (the prefill's recorded one; the decode's derived from it: every cache length from
    1 to max_positions)."""
    from ..generation.folder import read_generation_folder
    from ..generation.trt_backend import ENGINES, generation_build_shapes, prefill_profile_of
    from ..trt.prepare import BuildError, BuildRequest, TensorRTUnavailable

    for given, flag in ((output, "-o/--output"), (shapes, "--shapes"), (recipe, "--recipe")):
        if given:
            raise click.UsageError(f"{flag} does not apply to a generation folder: its engines are written beside "
                                   "the graphs (prefill.engine, decode.engine) with profiles derived from the prefill's")
    err = console(stderr=True)
    built = {}
    try:
        gen = read_generation_folder(folder)
        prefill_shapes, decode_shapes = generation_build_shapes(gen.spec, prefill_profile_of(gen.prefill))
        from ..trt.builder import build_engine

        for key, graph, profile in (("prefill", gen.prefill, prefill_shapes), ("decode", gen.decode, decode_shapes)):
            request = BuildRequest(onnx_path=graph, engine_path=folder / ENGINES[key], shapes=profile,
                                   precision=precision, workspace_bytes=workspace, timing_cache=timing_cache,
                                   force=force, verbose=verbose)
            with status(err, f"building {key}") as say:
                built[key] = build_engine(request, stage=say)
    except (FileExistsError, PermissionError, ValueError) as exc:
        raise InputError(str(exc)) from None
    except (TensorRTUnavailable, BuildError) as exc:
        raise CommandFailed(str(exc)) from None
    for key, result in built.items():
        err.print(f"{key} engine {result.engine_path} ({format_bytes(result.sidecar['engine']['bytes'])})", soft_wrap=True)
    if as_json:
        emit_json({"passed": True, **{key: {"engine_path": str(r.engine_path), "sidecar": r.sidecar}
                                      for key, r in built.items()}})
    verdict(err, "DONE", f"built {folder}/prefill.engine and decode.engine")
