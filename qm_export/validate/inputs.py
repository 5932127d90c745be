"""Input sets for ``validate`` and ``profile``: from the source, from a file, or from the graph.

- :func:`source_input_sets`: the source's seeded inputs at every declared shape (what
  ``convert`` checks), or at one ``--batch``/``--seq-len``.
- :func:`load_npz_inputs`: a user's ``.npz`` (one array per input name), checked against
  the model's inputs (names, ranks, static dims, dtypes) before anything runs.
- :func:`random_feeds`: seeded inputs made from the ONNX inputs alone, for a model without
  a source: floats ~ N(0, 1); ``*mask*`` integer inputs all ones; other integer inputs
  (token ids) uniform below the vocabulary size read from the embedding that gathers them.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TensorSpec",
    "model_inputs",
    "source_input_sets",
    "load_npz_inputs",
    "random_feeds",
    "check_feeds",
    "feeds_shape_label",
]

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input: ``name``, numpy ``dtype`` (None for bfloat16, which numpy lacks) and
    ``shape`` (an int per static axis, a name or None per dynamic one)."""

    name: str
    dtype: np.dtype | None
    elem_type: str
    shape: tuple[int | str | None, ...]
    int_high: int | None = None


def _vocab_sizes(model: Any) -> dict[str, int]:
    """Integer inputs that index an initializer with ``Gather`` (directly or through a
    ``Cast``): input name -> the initializer's first dimension (the vocabulary)."""
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    cast_of = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast" and n.input}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[0] not in inits:
            continue
        idx = node.input[1]
        idx = cast_of.get(idx, idx)
        dims = inits[node.input[0]]
        if dims:
            out[idx] = min(out.get(idx, dims[0]), dims[0])
    return out


def model_inputs(model: Any) -> list[TensorSpec]:
    """The graph inputs of an ``onnx.ModelProto`` (initializers excluded)."""
    import onnx

    inits = {i.name for i in model.graph.initializer}
    vocab = _vocab_sizes(model)
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        elem = onnx.TensorProto.DataType.Name(tt.elem_type).lower()
        try:
            dtype = None if elem == "bfloat16" else np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError):
            dtype = None
        shape: list[int | str | None] = []
        for d in tt.shape.dim:
            shape.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        specs.append(TensorSpec(vi.name, dtype, elem, tuple(shape), vocab.get(vi.name)))
    return specs


def feeds_shape_label(feeds: Feeds) -> str:
    """``"2x3x32x32"``: the first input's shape (how tables name an input set)."""
    first = next(iter(feeds.values()), None)
    return "x".join(map(str, first.shape)) if first is not None else "-"


def check_feeds(feeds: Feeds, specs: Sequence[TensorSpec], where: str) -> None:
    """Refuse feeds that do not fit the model: missing or unknown names, wrong rank, a static
    dim that differs, a dtype that differs, or dynamic axes of the same name that disagree.

    Raises:
        ValueError: naming ``where`` (e.g. ``"--inputs x.npz"``), the input and the problem.
    """
    names = [s.name for s in specs]
    unknown = sorted(set(feeds) - set(names))
    missing = [n for n in names if n not in feeds]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unknown:
            parts.append(f"unknown {unknown}")
        raise ValueError(f"{where}: {'; '.join(parts)}; the model's inputs are {names}")
    sizes: dict[str, tuple[int, str]] = {}
    for spec in specs:
        arr = feeds[spec.name]
        if arr.ndim != len(spec.shape):
            raise ValueError(f"{where}: input {spec.name!r} has rank {arr.ndim} (shape {list(arr.shape)}); "
                             f"the model wants rank {len(spec.shape)} {list(spec.shape)}")
        if spec.dtype is not None and arr.dtype != spec.dtype:
            raise ValueError(f"{where}: input {spec.name!r} is {arr.dtype}; the model wants {spec.dtype}")
        if spec.dtype is None and spec.elem_type == "bfloat16" and arr.dtype != np.float32:
            raise ValueError(f"{where}: input {spec.name!r} is {arr.dtype}; a bfloat16 input is given as float32")
        for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
            if isinstance(want, int) and want > 0 and want != got:
                raise ValueError(f"{where}: input {spec.name!r} has size {got} on axis {axis}; the model fixes it at {want}")
            if isinstance(want, str):
                seen = sizes.setdefault(want, (got, spec.name))
                if seen[0] != got:
                    raise ValueError(f"{where}: axis {want!r} is {seen[0]} in {seen[1]!r} but {got} in {spec.name!r}")


def load_npz_inputs(path: str | os.PathLike[str], specs: Sequence[TensorSpec]) -> list[Feeds]:
    """One input set from an ``.npz`` holding an array per input name.

    Raises:
        FileNotFoundError: no such file. ValueError: not an ``.npz``, or arrays that do not fit.
    """
    p = Path(path)
    where = f"--inputs {str(p)!r}"
    if not p.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    try:
        with np.load(p, allow_pickle=False) as data:
            feeds = {k: np.asarray(data[k]) for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{where} is not a readable .npz of arrays ({err})") from None
    check_feeds(feeds, specs, where)
    return [feeds]


def source_input_sets(loaded: Any, *, seed: int = 0, batch: int | None = None,
                      seq_len: int | None = None) -> list[Feeds]:
    """The source's seeded inputs: at every declared shape, or at one ``batch``/``seq_len``.

    A bfloat16 model's float inputs are given as float32 (numpy has no bfloat16); runtimes
    cast them.
    """
    from ..backends.torch_runner import to_numpy

    if batch is not None or seq_len is not None:
        shapes = [(batch, seq_len)]
    else:
        shapes = list(getattr(loaded, "declared_shapes", ((None, None),)))
    sets = []
    for i, (b, s) in enumerate(shapes):
        tensors = loaded.sample_inputs(batch=b, seq_len=s, seed=seed + i)
        sets.append({n: to_numpy(t) for n, t in zip(loaded.input_names, tensors)})
    return sets


def random_feeds(specs: Sequence[TensorSpec], *, batch: int = 1, seq_len: int | None = None,
                 seed: int = 0) -> Feeds:
    """Seeded inputs for ``specs``: the first dynamic axis is the batch, the second (if any)
    the sequence length (``seq_len``, default 32).

    Raises:
        ValueError: a dynamic axis beyond those two, or a dtype it cannot make.
    """
    from ..memory import check_batch_fits, feeds_row_bytes

    shapes = [_feed_shape(spec, 1, seq_len) for spec in specs]
    row = feeds_row_bytes((shape, np.dtype(np.float32 if spec.dtype is None else spec.dtype).itemsize)
                          for shape, spec in zip(shapes, specs))
    check_batch_fits("--batch", batch, row, what="the inputs alone")
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for spec in specs:
        shape = _feed_shape(spec, batch, seq_len)
        dtype = spec.dtype if spec.dtype is not None else np.dtype(np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = np.ones(shape, dtype=bool)
        elif np.issubdtype(dtype, np.integer):
            if "mask" in spec.name.lower():
                feeds[spec.name] = np.ones(shape, dtype=dtype)
            else:
                high = spec.int_high or 2
                feeds[spec.name] = rng.integers(0, high, size=shape).astype(dtype)
        else:
            raise ValueError(f"input {spec.name!r}: cannot make inputs of type {spec.elem_type}; pass --inputs")
    return feeds


def _feed_shape(spec: TensorSpec, batch: int, seq_len: int | None) -> list[int]:
    """``spec``'s shape with the first dynamic axis = ``batch``, the second = ``seq_len`` (32)."""
    shape = []
    dynamic_seen = 0
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
            continue
        dynamic_seen += 1
        if dynamic_seen == 1:
            shape.append(batch)
        elif dynamic_seen == 2:
            shape.append(32 if seq_len is None else seq_len)
        else:
            raise ValueError(f"input {spec.name!r}: cannot choose a size for dynamic axis {axis} ({dim!r}); pass --inputs")
    return shape
