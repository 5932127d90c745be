"""The MODEL argument of ``validate`` / ``profile``: an ONNX file or a TensorRT engine, checked
before any runtime reads it, and the torch source it was made from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..export.external_data import check_model_external_data
from ..export.proto_strings import check_strings
from ..export.provenance import Provenance, ProvenanceError
from .inputs import Feeds, TensorSpec, model_inputs, random_feeds, source_input_sets

__all__ = ["ModelFile", "open_model_file", "load_reference", "ENGINE_SUFFIXES", "feeds_for"]

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass
class ModelFile:
    """A checked MODEL: ``kind`` is ``"onnx"`` or ``"engine"``; for ONNX, ``model`` is the
    ``ModelProto`` without external tensor data, ``inputs`` its graph inputs, ``metadata``
    its ``metadata_props`` and ``provenance`` what ``convert`` recorded (or None)."""

    path: Path
    kind: str
    model: Any = None
    inputs: list[TensorSpec] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    provenance: Provenance | None = None

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.model.graph.output] if self.model is not None else []

    @property
    def weight_bytes(self) -> int:
        """Bytes of the initializers (inline and external)."""
        if self.model is None:
            return 0
        total = 0
        for init in self.model.graph.initializer:
            n = int(np.prod(init.dims)) if len(init.dims) else 1
            total += n * _ITEM_BYTES.get(init.data_type, 4)
        return total


# onnx.TensorProto data types -> bytes per element (weights are float/int; 4 is the default).
_ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def open_model_file(path: str | os.PathLike[str]) -> ModelFile:
    """Check MODEL and read what validation needs (external tensor data is not read).

    Raises:
        FileNotFoundError: no such file. ValueError: a directory, or neither ONNX nor an engine.
        ExternalDataError (a ValueError): external data outside MODEL's folder, missing or truncated.
    """
    import onnx

    p = Path(path)
    if p.is_dir():
        raise ValueError(f"MODEL {str(p)!r} is a directory; give an .onnx file or an engine")
    if not p.is_file():
        raise FileNotFoundError(f"MODEL {str(p)!r} does not exist")
    if p.suffix.lower() in ENGINE_SUFFIXES:
        return ModelFile(path=p, kind="engine")
    try:
        model = onnx.load(os.fspath(p), load_external_data=False)
    except Exception as err:  # protobuf DecodeError, truncated files
        raise ValueError(f"MODEL {str(p)!r} is not an ONNX model ({type(err).__name__})") from None
    if not model.graph.output:
        raise ValueError(f"MODEL {str(p)!r} is not an ONNX model (no graph outputs)")
    check_strings(model, f"MODEL {str(p)!r}")
    check_model_external_data(model, os.path.dirname(os.path.abspath(p)), what=f"MODEL {str(p)!r}")
    meta = {prop.key: prop.value for prop in model.metadata_props}
    try:
        provenance = Provenance.from_metadata(meta)
    except ProvenanceError:
        provenance = None
    return ModelFile(path=p, kind="onnx", model=model, inputs=model_inputs(model), metadata=meta,
                     provenance=provenance)


def load_reference(mf: ModelFile, source: str | None = None, *, debug_outputs: bool = True) -> tuple[Any, str]:
    """The torch model ``mf`` was made from, and a sentence saying where it came from.

    With ``source`` that source is loaded with the model's recorded options (schedule,
    precision, seed, ...), or with the source's own defaults when the model records none.

    Raises:
        ProvenanceError: no ``source`` and the model records none, or the recorded source moved.
    """
    prov = mf.provenance
    if source is None:
        if prov is None:
            raise ProvenanceError(f"{mf.path.name} records no source (not made by 'qm-export convert', or its "
                                  "metadata was dropped); pass --source")
        return prov.load(debug_outputs=debug_outputs), f"{prov.source} (from the model's metadata)"
    if prov is not None:
        return prov.load(debug_outputs=debug_outputs, source=source), f"{source} (--source, the model's recorded options)"
    from ..models import load_source

    return load_source(source, debug_outputs=debug_outputs), f"{source} (--source, its default options)"


def feeds_for(mf: ModelFile, loaded: Any, *, batch: int, seq_len: int | None, seed: int = 0) -> Feeds:
    """One input set of the given batch (and sequence length): the source's seeded inputs
    when there is a source, else seeded inputs made from the graph's inputs."""
    if loaded is not None:
        return source_input_sets(loaded, seed=seed, batch=batch, seq_len=seq_len)[0]
    return random_feeds(mf.inputs, batch=batch, seq_len=seq_len, seed=seed)
