"""Output files: checked before work starts, written atomically, never overwritten silently.

The one place the project writes files atomically: :func:`atomic_output` (a temp path beside
the target, moved into place with ``os.replace`` on success, removed on failure) and
:func:`atomic_write_bytes` / :func:`atomic_write_text` on top of it. The CLI, the TensorRT
build, the prior files and the benchmark scripts all use these.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "OutputPathError",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_path",
    "replace_atomically",
    "user_mode",
]


class OutputPathError(ValueError):
    """An output path that exists (without ``force``) or cannot be written."""


def check_output_path(path: str | os.PathLike[str], *, force: bool, suffix: str | None = None) -> Path:
    """Validate an output file path before any work is done.

    Raises:
        OutputPathError: the file exists and ``force`` is False, it is a directory, its folder
            does not exist or is not writable, or it lacks ``suffix``.
    """
    out = Path(path).expanduser()
    if suffix is not None and out.suffix != suffix:
        raise OutputPathError(f"output path {str(out)!r} must end in {suffix}")
    if out.is_dir():
        raise OutputPathError(f"output path {str(out)!r} is a directory")
    if out.exists() and not force:
        raise OutputPathError(f"output path {str(out)!r} exists; pass --force to overwrite it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"output folder {str(parent)!r} does not exist")
    try:  # the real test (root passes os.access checks on read-only file systems too)
        fd, probe = tempfile.mkstemp(prefix=".qm-export-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputPathError(f"output folder {str(parent)!r} is not writable ({err.strerror})") from None
    return out.resolve()


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
