"""``qm-export serve-repo MODEL... -o REPO``: a Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path

import click

from .common import console, emit_json, fail_on, status, verdict
from .profile import _config


def _positive_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        items = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        items = ()
    if not items or any(v < 1 for v in items):
        raise click.BadParameter(f"{value!r} is not a comma-separated list of positive integers (e.g. 4,8)",
                                 ctx=ctx, param=param)
    return tuple(sorted(set(items)))


@click.command("serve-repo")
@click.argument("models", nargs=-1, required=True, metavar="MODEL...",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "repo", required=True, type=click.Path(path_type=Path),
              help="The repository folder (refused if not empty, unless --force; its parent must exist).")
@click.option("--python-backend", is_flag=True,
              help="backend: python, a model.py running the ONNX file in ONNX Runtime (servers without the "
                   "onnxruntime backend, e.g. the nvidia-pytriton wheel's).")
@click.option("--max-batch-size", type=click.IntRange(min=0), default=8,
              help="Triton's max_batch_size; 0 turns Triton's batching off (dims are the full shapes).")
@click.option("--name", help="The model's name (one MODEL only) [default: the file's stem].")
@click.option("--instances", type=click.IntRange(min=1), default=1, help="instance_group count.")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="cpu", help="instance_group kind.")
@click.option("--preferred-batch", callback=_positive_list, metavar="LIST",
              help="dynamic_batching preferred_batch_size, e.g. 4,8 (each <= --max-batch-size).")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=0,
              help="dynamic_batching max_queue_delay_microseconds.")
@click.option("--version", "version", type=click.IntRange(min=1), default=1, help="The version folder's number.")
@click.option("--gpu-accelerator", type=click.Choice(["tensorrt", "cuda"]), default=None,
              help="onnxruntime backend on --kind gpu: optimization.execution_accelerators.gpu_execution_accelerator.")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="--python-backend: ONNX Runtime intra-op threads per instance (0: ONNX Runtime's choice).")
@click.option("--ort-config", "ort_config", multiple=True, metavar="KEY=VALUE", callback=_config,
              help="--python-backend: ONNX Runtime session config entry (repeatable), e.g. "
                   "session.intra_op.allow_spinning=0.")
@click.option("--force", is_flag=True, help="Replace REPO if it exists and is not empty.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON on stdout.")
def serve_repo(models: tuple[Path, ...], repo: Path, python_backend: bool, max_batch_size: int, name: str | None,
               instances: int, kind: str, preferred_batch: tuple[int, ...], queue_delay_us: int, version: int,
               gpu_accelerator: str | None, threads: int, ort_config: dict[str, str], force: bool,
               as_json: bool) -> None:
    """Write a Triton model repository serving each MODEL (.onnx, or a TensorRT .engine/.plan
    with its .json sidecar from qm-export build).

    \b
    REPO/<name>/config.pbtxt       inputs, outputs, dtypes and dims read from the model
                                   (dynamic axes -1; with --max-batch-size > 0 the batch
                                   axis is Triton's and left out of dims)
    REPO/<name>/<version>/model.onnx   platform onnxruntime_onnx (qm ops run as the
                                   model's local functions)
    REPO/<name>/<version>/model.plan   platform tensorrt_plan
    REPO/<name>/<version>/model.py + MODEL.onnx   with --python-backend

    The repository is assembled in a hidden sibling folder and moved into place at the end.
    See docs/serving.md.
    """
    from ..serve import ServeOptions, plan_repository, write_repository

    err = console(stderr=True)
    with fail_on():
        options = ServeOptions(max_batch_size=max_batch_size, python_backend=python_backend, instances=instances,
                               kind=kind, preferred_batch=preferred_batch, queue_delay_us=queue_delay_us,
                               version=version, gpu_accelerator=gpu_accelerator, threads=threads,
                               ort_config=ort_config)
        with status(err, "reading models") as say:
            planned = plan_repository(list(models), options, name=name)
            final = write_repository(planned, repo, options, force=force, progress=say)
    names = ", ".join(m.name for m in planned)
    if as_json:
        emit_json({"passed": True, "repository": str(final), "models": [m.to_json() for m in planned],
                   "backend": "python" if python_backend else None, "max_batch_size": max_batch_size,
                   "version": version})
    verdict(err, "DONE", f"wrote {final} ({len(planned)} model{'s' if len(planned) != 1 else ''}: {names})")
