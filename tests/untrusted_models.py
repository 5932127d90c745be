"""Models whose external data a careless runtime would read from outside their folder (issue
14), made small: one MatMul whose weight lives in ``m.onnx.data``, then the proto's
``external_data`` entries edited (loaded with ``load_external_data=False``, saved as is)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper

#: The five broken forms every command must refuse: name -> what the error line contains.
BROKEN_FORMS = {
    "escape": "climbs out",
    "absolute": "absolute path",
    "symlink": "symlink",
    "missing": "missing",
    "past-end": "past the end",
}


def matmul_model(n: int = 8) -> onnx.ModelProto:
    """``y = x @ W`` with ``x: [batch, n]`` float32 and a seeded ``W: [n, n]``."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32), "W")
    graph = h.make_graph([h.make_node("MatMul", ["x", "W"], ["y"])], "g",
                         [h.make_tensor_value_info("x", TP.FLOAT, ["batch", n])],
                         [h.make_tensor_value_info("y", TP.FLOAT, ["batch", n])], initializer=[w])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save_external(model: onnx.ModelProto, path: Path) -> Path:
    """``model`` at ``path`` with every initializer in ``path.name + '.data'`` beside it."""
    onnx.save_model(model, os.fspath(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    return path


def set_entries(path: Path, **entries: str) -> None:
    """Rewrite the ``external_data`` entries (``location``, ``offset``, ``length``) of every
    external tensor of the model at ``path``, in place, without touching any data file."""
    model = onnx.load(os.fspath(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key in entries:
                entry.value = entries[entry.key]
    path.write_bytes(model.SerializeToString())


def broken_model(folder: Path, form: str, name: str = "m.onnx", sub: str = "model") -> Path:
    """A model in ``folder/sub/`` (``folder`` itself holds the outside file) whose external
    data takes one of :data:`BROKEN_FORMS`. The outside file holds valid bytes, so only the
    path is wrong."""
    inside = folder / sub
    inside.mkdir(parents=True, exist_ok=True)
    path = save_external(matmul_model(), inside / name)
    data = inside / (name + ".data")
    outside = folder / "outside.bin"
    outside.write_bytes(data.read_bytes())
    if form == "escape":
        set_entries(path, location="../outside.bin")
    elif form == "absolute":
        set_entries(path, location=str(outside.resolve()))
    elif form == "symlink":
        data.unlink()
        data.symlink_to(outside.resolve())
    elif form == "missing":
        data.unlink()
    elif form == "past-end":
        set_entries(path, offset=str(data.stat().st_size - 8))
    else:
        raise ValueError(f"form {form!r} is not one of {sorted(BROKEN_FORMS)}")
    return path
