"""Write a Triton model repository: ``REPO/<name>/config.pbtxt`` + ``REPO/<name>/<version>/<file>``.

The layout is the one Triton documents (docs/user_guide/model_repository.md): one folder per
model, a ``config.pbtxt``, and numbered version folders holding ``model.onnx`` (the
onnxruntime backend), ``model.plan`` (tensorrt_plan) or ``model.py`` plus the ONNX file (the
Python backend). An ONNX model's external data files are copied beside it under the names the
model records.

The repository is assembled in a hidden sibling folder (``.REPO.tmp-*``) and moved into place
only when every model is written; an existing non-empty REPO is replaced only with ``force``.
Only regular files are copied, and no symlink is followed (a symlinked MODEL or data file is
refused).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import ServeOptions, model_kind, read_engine_io, read_onnx_io, render_config

__all__ = ["RepoModel", "check_repository", "model_name", "plan_repository", "write_repository"]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_TEMPLATE = Path(__file__).with_name("triton_model.py")


@dataclass(frozen=True)
class RepoModel:
    """One model of the repository, as planned: where it comes from and what it becomes."""

    name: str
    source: Path
    kind: str  # "onnx" or "engine"
    file_name: str  # in the version folder
    data_files: tuple[Path, ...]  # external data, copied beside the model
    config: str  # config.pbtxt

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "source": str(self.source), "kind": self.kind, "file": self.file_name,
                "data_files": [p.name for p in self.data_files]}


def model_name(path: Path) -> str:
    """A model's default name: the file's stem (``vit-base.onnx`` -> ``vit-base``)."""
    return Path(path).stem


def _check_name(name: str) -> str:
    if not _NAME.match(name) or name in (".", ".."):
        raise ValueError(f"--name {name!r} is not a usable model name (letters, digits, '_', '-', '.'; "
                         "not starting with '.' or '-')")
    return name


def _regular_file(path: Path, what: str) -> Path:
    """``path`` itself (not a symlink's target) must be a regular file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist") from None
    if stat.S_ISLNK(mode):
        raise ValueError(f"{what} {str(path)!r} is a symlink; pass the file itself (symlinks are not followed)")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what} {str(path)!r} is not a regular file")
    return path


def _external_data(path: Path) -> tuple[Path, ...]:
    """The external data files an ONNX model names; each must be a plain name beside it, a
    regular file (not a symlink), and hold every tensor's offset and length
    (:func:`~qm_export.export.external_data.check_model_external_data`)."""
    import onnx

    from ..export.external_data import check_model_external_data, external_files

    proto = onnx.load(str(path), load_external_data=False)
    check_model_external_data(proto, path.resolve().parent, what=f"MODEL {str(path)!r}")
    out = []
    for name in external_files(proto):
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"MODEL {str(path)!r}: external data {name!r} is not a file beside the model "
                             "(serve-repo copies data files beside the model; only plain file names are accepted)")
        out.append(_regular_file(path.with_name(name), f"MODEL {path.name}'s external data"))
    return tuple(out)


def plan_repository(models: Sequence[Path], options: ServeOptions, name: str | None = None) -> list[RepoModel]:
    """Read every model and render its config; nothing is written.

    Args:
        models: ONNX files or TensorRT engines (``.engine``/``.plan`` with their ``.json`` sidecar).
        options: the flags (:class:`ServeOptions`).
        name: the model's name; only with one model (default: each file's stem).

    Raises:
        ValueError: a bad model, name, flag combination or duplicate name (each names the argument).
        FileNotFoundError: a model or its external data is missing.
    """
    if not models:
        raise ValueError("MODEL: give at least one model file")
    if name is not None and len(models) != 1:
        raise ValueError(f"--name names one model; {len(models)} MODEL files were given (each is named after its file)")
    planned: list[RepoModel] = []
    for source in models:
        source = _regular_file(Path(source), "MODEL")
        kind = model_kind(source)
        if kind == "engine" and options.python_backend:
            raise ValueError(f"--python-backend runs ONNX files; MODEL {str(source)!r} is a TensorRT engine")
        if kind == "engine" and options.kind != "gpu":
            raise ValueError(f"MODEL {str(source)!r} is a TensorRT engine: it runs on a GPU; pass --kind gpu")
        this = _check_name(name if name is not None else model_name(source))
        if any(m.name == this for m in planned):
            raise ValueError(f"MODEL: two files would both be named {this!r}; serve them in separate runs with --name")
        if kind == "onnx":
            inputs, outputs = read_onnx_io(source)
            data = _external_data(source)
            file_name = source.name if options.python_backend else "model.onnx"
        else:
            inputs, outputs = read_engine_io(source)
            data, file_name = (), "model.plan"
        config = render_config(this, file_name, kind, inputs, outputs, options)
        planned.append(RepoModel(this, source, kind, file_name, data, config))
    return planned


def _copy(src: Path, dst: Path) -> None:
    """Copy one regular file's bytes (no metadata, no symlink followed at the source)."""
    fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def write_repository(models: Sequence[RepoModel], repo: Path, options: ServeOptions, *, force: bool,
                     progress: Callable[[str], None] | None = None) -> Path:
    """Write the planned ``models`` into ``repo`` atomically; returns ``repo``.

    Raises:
        ValueError: ``repo`` is a file, is not empty and ``force`` is False, or its parent is missing.
    """
    from ..export.files import user_mode
    from ..pipeline.run import _move_into_place, check_run_folder

    say = progress or (lambda _msg: None)
    final = check_run_folder(Path(repo), force)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.resolve().parent))
    os.chmod(stage, user_mode(directory=True))
    try:
        for i, model in enumerate(models, 1):
            say(f"writing {model.name} {i}/{len(models)}")
            folder = stage / model.name
            version = folder / str(options.version)
            version.mkdir(parents=True, mode=user_mode(directory=True))
            (folder / "config.pbtxt").write_text(model.config, encoding="utf-8")
            _copy(model.source, version / model.file_name)
            for data in model.data_files:
                _copy(data, version / data.name)
            if options.python_backend:
                _copy(_TEMPLATE, version / "model.py")
        for path in stage.rglob("*"):
            os.chmod(path, user_mode(directory=path.is_dir()))
        _move_into_place(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return final


def check_repository(repo: Path) -> None:
    """Refuse a repository (``serve-bench --launch``) in which an ONNX file of a version folder
    (``REPO/<name>/<n>/*.onnx``) names external data outside that folder, missing, or too short.

    Raises:
        ExternalDataError (a ValueError): names the file, the tensor and the location.
    """
    from ..export.external_data import check_external_data

    for path in sorted(Path(repo).glob("*/[0-9]*/*.onnx")):
        if path.is_file():
            check_external_data(path, what=f"--launch: {str(path)!r}")
