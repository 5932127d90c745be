"""Output files: refuse to overwrite without ``force``, write atomically, hash inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..export.files import atomic_write_bytes, atomic_write_text

__all__ = ["check_writable", "atomic_write_bytes", "atomic_write_text", "sha256_file", "sidecar_path"]


def sidecar_path(engine_path: Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    return engine_path.with_name(engine_path.name + ".json")


def check_writable(paths: list[Path], force: bool) -> None:
    """Raise ``FileExistsError`` naming the first path that exists when ``force`` is false,
    ``IsADirectoryError`` for a folder, ``FileNotFoundError`` when the parent folder is missing."""
    for path in paths:
        if path.is_dir():
            raise IsADirectoryError(f"output {str(path)!r} is a directory")
        if path.exists() and not force:
            raise FileExistsError(f"output {str(path)!r} exists; pass --force to overwrite it")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise FileNotFoundError(f"-o/--output: folder {str(parent)!r} of output {str(path)!r} does not exist "
                                    "(it is not created for you)")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
