"""Output files: checked before work starts, written atomically, never overwritten silently.

The one place the project writes files atomically: :func:`atomic_output` (a temp path beside
the target, moved into place with ``os.replace`` on success, removed on failure) and
:func:`atomic_write_bytes` / :func:`atomic_write_text` on top of it; :class:`StagedModel` for
an ONNX model (and its external data) that must be checked before it may take its final name.
The CLI, the TensorRT build, the prior files and the benchmark scripts all use these.

Rules every writer follows: the output folder must exist (nothing creates a missing folder);
an existing file is replaced only with ``force``; what is written gets the user's umask
(:func:`user_mode`); an interrupted or failed write leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "OutputPathError",
    "StagedModel",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_path",
    "failed_name",
    "replace_atomically",
    "user_mode",
]


class OutputPathError(ValueError):
    """An output path that exists (without ``force``) or cannot be written."""


def check_output_path(
    path: str | os.PathLike[str], *, force: bool, suffix: str | None = None, option: str | None = None
) -> Path:
    """Validate an output file path before any work is done.

    ``option`` (e.g. ``"-o/--output"``) starts every message, so the one-line error names the
    argument. The folder must already exist: no command creates a missing output folder.

    Raises:
        OutputPathError: the file exists and ``force`` is False, it is a directory, its folder
            does not exist or is not writable, or it lacks ``suffix``.
    """
    out = Path(path).expanduser()
    lead = f"{option}: " if option else ""
    if suffix is not None and out.suffix != suffix:
        raise OutputPathError(f"{lead}output path {str(out)!r} must end in {suffix}")
    if out.is_dir():
        raise OutputPathError(f"{lead}output path {str(out)!r} is a directory")
    if out.exists() and not force:
        raise OutputPathError(f"{lead}output path {str(out)!r} exists; pass --force to overwrite it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{lead}output folder {str(parent)!r} does not exist (it is not created for you)")
    try:  # the real test (root passes os.access checks on read-only file systems too)
        fd, probe = tempfile.mkstemp(prefix=".qm-export-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputPathError(f"{lead}output folder {str(parent)!r} is not writable ({err.strerror})") from None
    return out.resolve()


def failed_name(path: str | os.PathLike[str]) -> Path:
    """Where ``--keep-failed`` keeps a model that failed its check: ``OUT.onnx`` -> ``OUT.failed.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.failed{path.suffix}")


def replace_atomically(files: Sequence[Path], folder: Path) -> list[Path]:
    """Move staged ``files`` into ``folder`` with ``os.replace`` (data files first, model last)."""
    moved = []
    for src in sorted(files, key=lambda p: 0 if p.suffix == ".data" else 1):
        dst = folder / src.name
        os.replace(src, dst)
        moved.append(dst)
    return moved


def user_mode(directory: bool = False) -> int:
    """The permission bits a new file (or folder) gets under the user's umask (``mkstemp`` and
    ``mkdtemp`` make private ones, 0600 / 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (same suffix, so writers that go by it still work);
    when the block succeeds it is moved onto ``path`` with ``os.replace`` (with the user's
    umask permissions), otherwise removed."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, user_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then ``os.replace`` it into place."""
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


class StagedModel:
    """An ONNX model written under a temporary name in its output folder, moved into place
    only once it may be: :meth:`commit` (verified, or not asked to be), :meth:`discard` (failed,
    interrupted), or :meth:`keep_as` (``--keep-failed``).

    The files live in a hidden folder ``.OUT.onnx.unverified-XXXX/`` beside the target, under
    their final names: the model records its external data file (``OUT.onnx.data``) by name,
    so the pair must be written under the names it will keep. Same folder, same file system:
    each move is an atomic ``os.replace``.
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = Path(target)
        self.folder = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.unverified-", dir=self.target.parent))
        self.path = self.folder / self.target.name

    @property
    def data_path(self) -> Path:
        return self.path.with_name(self.path.name + ".data")

    def files(self) -> list[Path]:
        return [p for p in (self.path, self.data_path) if p.exists()]

    def commit(self, *, force: bool) -> Path:
        """Move the model (and its external data) onto the target; returns the target.

        Raises:
            OutputPathError: the target appeared meanwhile and ``force`` is False.
        """
        if self.target.exists() and not force:
            raise OutputPathError(f"output path {str(self.target)!r} was created while converting; "
                                  "pass --force to overwrite it")
        for f in self.files():
            os.chmod(f, user_mode())
        replace_atomically(self.files(), self.target.parent)
        self.discard()
        return self.target

    def keep_as(self, path: str | os.PathLike[str]) -> Path:
        """Move the model under another name (``OUT.failed.onnx``), its external data beside it
        (``OUT.failed.onnx.data``, the model's reference rewritten); returns the new path."""
        dest = Path(path)
        data = self.data_path
        if data.exists():
            import onnx

            from .external_data import all_tensors

            proto = onnx.load(os.fspath(self.path), load_external_data=False)
            new = dest.name + ".data"
            for tensor in all_tensors(proto):
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = new
            os.replace(data, self.folder / new)
            renamed = self.folder / dest.name
            with open(renamed, "wb") as fh:
                fh.write(proto.SerializeToString())
            if renamed != self.path:
                self.path.unlink()
            staged = [self.folder / new, renamed]
        else:
            renamed = self.folder / dest.name
            os.replace(self.path, renamed)
            staged = [renamed]
        for f in staged:
            os.chmod(f, user_mode())
        replace_atomically(staged, dest.parent)
        self.discard()
        return dest

    def discard(self) -> None:
        """Remove the staged files (and the hidden folder)."""
        shutil.rmtree(self.folder, ignore_errors=True)
