"""An ONNX model's external data, checked without reading it: every ``location`` must name a
regular file inside the model's folder, and every ``offset``/``length`` must lie inside it.

Model files are untrusted input (docs/security.md). A ``location`` that is absolute, climbs
out with ``..``, or resolves through a symlink to a file outside the model's folder would make
a runtime read a file the model's author chose (``/etc/hostname``, ``~/.ssh/id_rsa``); a FIFO
or device would make it hang. :func:`external_data_problems` finds these from the protobuf's
``external_data`` entries and ``os.stat`` alone (no tensor bytes are read: a 10 GB data file
costs nothing); :func:`check_external_data` is what every command that loads a model calls
before any runtime reads it, and ``qm-export check`` reports the same problems as findings.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ExternalDataError",
    "ExternalDataProblem",
    "REFUSED_FORMS",
    "all_tensors",
    "check_external_data",
    "check_model_external_data",
    "external_data_problems",
    "external_files",
]

#: The path forms refused, in the words docs/security.md lists them.
REFUSED_FORMS = (
    "an absolute path (/etc/hostname, C:\\x)",
    "a relative path whose '..' climbs out of the model's folder (../../etc/hostname)",
    "a path that resolves through a symlink (the file or a folder on the way) to outside the model's folder",
    "an empty location, or one with a NUL byte",
    "a file that is missing, or not a regular file (a folder, a FIFO, a device)",
    "an offset or length that is not a non-negative integer, or that reaches past the end of the file",
    "a length that differs from the bytes the tensor's shape and type need",
)

# onnx.TensorProto data types -> bits per element (absent: no fixed size, e.g. STRING).
_ITEM_BITS: dict[int, int] = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64,
                              14: 64, 15: 128, 16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4}
_DRIVE = re.compile(r"^[A-Za-z]:")


class ExternalDataError(ValueError):
    """A model whose external data may not be read (the message names the tensor and location)."""


@dataclass(frozen=True)
class ExternalDataProblem:
    """One tensor's external data that may not be read. ``kind``: ``path`` (outside the
    folder), ``missing`` (no such regular file) or ``range`` (offset/length)."""

    kind: str
    tensor: str
    location: str
    message: str


def all_tensors(model: Any) -> Iterator[Any]:
    """Every ``TensorProto`` of ``model`` that may hold weights: initializers (also of
    subgraphs) and tensor attributes, in the graph and in local functions."""
    import onnx

    def graph_tensors(graph: Any) -> Iterator[Any]:
        yield from graph.initializer
        for node in graph.node:
            yield from node_tensors(node)

    def node_tensors(node: Any) -> Iterator[Any]:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from graph_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from graph_tensors(g)

    yield from graph_tensors(model.graph)
    for fn in model.functions:
        for node in fn.node:
            yield from node_tensors(node)


def _external(model: Any) -> Iterator[tuple[Any, dict[str, str]]]:
    import onnx

    for tensor in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            yield tensor, {e.key: e.value for e in tensor.external_data}


def external_files(model: Any) -> dict[str, int]:
    """``location`` -> number of tensors stored there (in first-use order)."""
    files: dict[str, int] = {}
    for _tensor, entries in _external(model):
        loc = entries.get("location", "")
        files[loc] = files.get(loc, 0) + 1
    return files


def _inside(location: str, folder: Path) -> str | None:
    """Why ``location`` is not a path inside ``folder`` (None when it is)."""
    if not location:
        return "is empty"
    if "\0" in location:
        return "contains a NUL byte"
    if os.path.isabs(location) or location.startswith(("\\", "/")) or _DRIVE.match(location):
        return "is an absolute path"
    if os.path.normpath(location).split(os.sep)[0] == "..":
        return "climbs out of the model's folder with '..'"
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(os.path.join(real_folder, location))
    if os.path.commonpath([real_folder, real]) != real_folder:
        return f"resolves through a symlink to {real!r}, outside the model's folder"
    return None


def _int_entry(entries: dict[str, str], key: str) -> int | None | str:
    """The entry as an int (None when absent), or the reason it is not a usable one."""
    if key not in entries:
        return None
    value = entries[key].strip()
    if not value.isdigit():
        return f"{key} {entries[key]!r} is not a non-negative integer"
    return int(value)


def _tensor_bytes(tensor: Any) -> int | None:
    """Bytes the tensor's shape and type need (None when the type has no fixed size or a dim is negative)."""
    bits = _ITEM_BITS.get(int(tensor.data_type))
    if bits is None or any(d < 0 for d in tensor.dims):
        return None
    return (math.prod(int(d) for d in tensor.dims) * bits + 7) // 8


def _problem(tensor: Any, entries: dict[str, str], folder: Path) -> ExternalDataProblem | None:
    name, location = tensor.name, entries.get("location", "")
    lead = f"tensor {name!r}: external data location {location!r}"
    why = _inside(location, folder)
    if why is not None:
        return ExternalDataProblem("path", name, location, f"{lead} {why}; only files inside the model's folder are read")
    target = folder / location
    try:
        st = os.stat(target)
    except OSError as err:
        return ExternalDataProblem("missing", name, location,
                                   f"{lead}: the file is missing in {str(folder)!r} ({err.strerror})")
    if not stat.S_ISREG(st.st_mode):
        return ExternalDataProblem("missing", name, location, f"{lead} is not a regular file")
    offset, length = _int_entry(entries, "offset"), _int_entry(entries, "length")
    for bad in (offset, length):
        if isinstance(bad, str):
            return ExternalDataProblem("range", name, location, f"{lead}: {bad}")
    start = offset or 0
    need = _tensor_bytes(tensor)
    if isinstance(length, int) and need is not None and length != need:
        return ExternalDataProblem("range", name, location, f"{lead}: length {length} but its shape "
                                   f"{list(tensor.dims)} and type need {need} bytes")
    span = length if isinstance(length, int) else need
    if start > st.st_size or (span is not None and start + span > st.st_size):
        return ExternalDataProblem("range", name, location, f"{lead}: offset {start} + length {span} reaches past "
                                   f"the end of the file ({st.st_size} bytes)")
    return None


def external_data_problems(model: Any, folder: str | os.PathLike[str]) -> list[ExternalDataProblem]:
    """Every tensor of ``model`` (a ``ModelProto`` loaded with ``load_external_data=False``)
    whose external data may not be read from ``folder``; reads no tensor bytes."""
    base = Path(folder)
    found = []
    for tensor, entries in _external(model):
        problem = _problem(tensor, entries, base)
        if problem is not None:
            found.append(problem)
    return found


def check_model_external_data(model: Any, folder: str | os.PathLike[str], *, what: str = "MODEL") -> None:
    """Raise :class:`ExternalDataError` for the first problem :func:`external_data_problems` finds.

    ``what`` starts the message (``MODEL 'x.onnx'``) so the one-line error names the argument.
    """
    problems = external_data_problems(model, folder)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ExternalDataError(f"{what}: {problems[0].message}{more}")


def check_external_data(path: str | os.PathLike[str], *, what: str | None = None) -> None:
    """Refuse the ONNX file at ``path`` when its external data may not be read: call before any
    runtime opens the file. A file that is not an ONNX model is left to the caller's loader.

    Raises:
        ExternalDataError: a location outside the model's folder, a missing file, an offset or
            length past its end (the message names the tensor and the location).
    """
    import onnx

    p = Path(path)
    try:
        model = onnx.load(os.fspath(p), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model: the caller's own loader says so
        return
    check_model_external_data(model, os.path.dirname(os.path.abspath(p)), what=what or f"MODEL {str(p)!r}")
