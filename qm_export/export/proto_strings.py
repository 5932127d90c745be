"""Refuse an ONNX model whose text fields are not UTF-8.

ONNX's protobuf schema is proto2, whose ``string`` fields are not checked when parsed: a name
or op type with invalid UTF-8 comes back from Python's protobuf as ``bytes`` instead of
``str``, and code that sorts, joins or prints names fails on it far from the cause. The
runtimes refuse such a model too; :func:`check_strings` says so up front, naming the field.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_strings", "first_bytes_string"]


def first_bytes_string(message: Any, path: str = "model") -> tuple[str, bytes] | None:
    """The first ``string`` field of ``message`` (recursively) that holds ``bytes``: its path
    (``model.graph.node[3].op_type``) and value; None when every one is text."""
    for fd, value in message.ListFields():
        if fd.type not in (fd.TYPE_STRING, fd.TYPE_MESSAGE):  # numbers and raw bytes: nothing to check
            continue
        where = f"{path}.{fd.name}"
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        items = value if repeated else [value]
        if fd.type == fd.TYPE_STRING:
            for i, item in enumerate(items):
                if isinstance(item, bytes):
                    return (f"{where}[{i}]" if repeated else where), item
        elif fd.type == fd.TYPE_MESSAGE:
            for i, item in enumerate(items):
                found = first_bytes_string(item, f"{where}[{i}]" if repeated else where)
                if found is not None:
                    return found
    return None


def check_strings(model: Any, what: str) -> None:
    """Raise ``ValueError`` (``"<what> is not a valid ONNX model: ... is not UTF-8"``) when a
    text field of ``model`` is not UTF-8."""
    found = first_bytes_string(model)
    if found is not None:
        where, value = found
        raise ValueError(f"{what} is not a valid ONNX model: {where} is not UTF-8 text ({value[:40]!r})")
