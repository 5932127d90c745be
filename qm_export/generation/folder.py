"""The generation folder ``convert`` writes for a causal LM, and its manifest.

```
OUT/
  generation.json   the manifest: format, the two graphs, the cache spec, provenance
  prefill.onnx      input_ids, attention_mask -> logits, present.{i}.*   (merges the prompt)
  decode.onnx       input_ids, position_ids, past_key_values.{i}.* -> logits, present.{i}.*
  tokenizer/        the source's tokenizer (Hugging Face / GGUF sources only)
```

Two graphs rather than one with an ``If``: the prefill merges and the decode does not, their
shapes share nothing (a prompt of N tokens vs one token over per-layer caches), and TensorRT
builds each with its own optimisation profile (an ``If`` builds both branches into one
engine, under one profile for inputs that exist in only one of them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .contract import CacheSpec

__all__ = ["MANIFEST", "FORMAT", "GenerationFolder", "is_generation_folder", "read_generation_folder",
           "manifest_json", "GenerationFolderError", "upcast_folder", "dtype_name"]

MANIFEST = "generation.json"
FORMAT = "qm-export.generation/1"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class GenerationFolderError(ValueError):
    """A generation folder that is incomplete or inconsistent (names the file and the field)."""


@dataclass
class GenerationFolder:
    """A read generation folder: where its graphs are, its cache spec, and the manifest."""

    path: Path
    prefill: Path
    decode: Path
    spec: CacheSpec
    tokenizer: Path | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def merged(self) -> bool:
        return bool(self.info.get("merged"))


def is_generation_folder(path: str | os.PathLike[str]) -> bool:
    """A folder holding a ``generation.json``."""
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file()


def dtype_name(dtype: torch.dtype) -> str:
    """``"float32"``, ``"float16"`` or ``"bfloat16"``: the manifest's (and ONNX's) name of a cache dtype."""
    return next(k for k, v in _DTYPES.items() if v == dtype)


def manifest_json(spec: CacheSpec, *, tokenizer: bool, **info: Any) -> dict[str, Any]:
    """The manifest's content (``info``: source, precision, schedule, merge layers, ...)."""
    dtype = dtype_name(spec.dtype)
    return {
        "format": FORMAT, "prefill": "prefill.onnx", "decode": "decode.onnx",
        "tokenizer": "tokenizer" if tokenizer else None,
        "cache": {"depth": spec.depth, "kv_heads": spec.kv_heads, "head_dim": spec.head_dim,
                  "vocab_size": spec.vocab_size, "max_positions": spec.max_positions, "dtype": dtype,
                  "eos_token_id": spec.eos_token_id},
        **info,
    }


def _int(cache: dict[str, Any], key: str, where: Path) -> int:
    value = cache.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GenerationFolderError(f"{where}: cache.{key} must be an int >= 1, got {value!r}")
    return value


def read_generation_folder(path: str | os.PathLike[str]) -> GenerationFolder:
    """Read and check a generation folder (the manifest, and that both graphs exist inside it).

    Raises:
        GenerationFolderError: no manifest, bad JSON, another format, a missing graph or a graph
            path leaving the folder, a malformed cache spec.
        ExternalDataError: a graph whose external data leaves the folder (see
            :mod:`qm_export.export.external_data`).
    """
    root = Path(path)
    where = root / MANIFEST
    if not where.is_file():
        raise GenerationFolderError(f"{str(root)!r} is not a generation folder: it has no {MANIFEST}")
    try:
        data = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GenerationFolderError(f"{where}: not readable JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise GenerationFolderError(f"{where}: format must be {FORMAT!r}, got {got!r}")
    graphs = {}
    for key in ("prefill", "decode"):
        name = data.get(key)
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise GenerationFolderError(f"{where}: {key!r} must be a file name inside the folder, got {name!r}")
        graphs[key] = root / name
        if graphs[key].is_symlink() or not graphs[key].is_file():
            raise GenerationFolderError(f"{where}: the {key} graph {name!r} is missing (or a symbolic link)")
        from ..export.external_data import check_external_data

        check_external_data(graphs[key], what=f"the {key} graph {str(graphs[key])!r}")  # before any runtime reads it
    cache = data.get("cache")
    if not isinstance(cache, dict):
        raise GenerationFolderError(f"{where}: 'cache' must be an object, got {cache!r}")
    dtype = cache.get("dtype")
    if dtype not in _DTYPES:
        raise GenerationFolderError(f"{where}: cache.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    eos = cache.get("eos_token_id")
    if eos is not None and (isinstance(eos, bool) or not isinstance(eos, int)):
        raise GenerationFolderError(f"{where}: cache.eos_token_id must be an int or null, got {eos!r}")
    spec = CacheSpec(*(_int(cache, k, where) for k in ("depth", "kv_heads", "head_dim", "vocab_size", "max_positions")),
                     dtype=_DTYPES[dtype], eos_token_id=eos)
    tok = data.get("tokenizer")
    tokenizer = None
    if tok is not None:
        if not isinstance(tok, str) or Path(tok).name != tok or not (root / tok).is_dir():
            raise GenerationFolderError(f"{where}: 'tokenizer' must name a folder inside it, got {tok!r}")
        tokenizer = root / tok
    info = {k: v for k, v in data.items() if k not in ("format", "prefill", "decode", "cache", "tokenizer")}
    return GenerationFolder(root, graphs["prefill"], graphs["decode"], spec, tokenizer, info)


def upcast_folder(folder: GenerationFolder, into: str | os.PathLike[str]) -> GenerationFolder:
    """The float32 upcast twin of a bfloat16 generation folder, written into ``into`` (both
    graphs through :func:`qm_export.export.upcast.write_upcast`; the manifest's cache dtype
    float32): what ONNX Runtime's CPU provider, which has no bfloat16 kernels, can run."""
    from ..export.upcast import write_upcast

    dest = Path(into)
    for name in ("prefill", "decode"):
        write_upcast(getattr(folder, name), dest, name)
    data = json.loads((folder.path / MANIFEST).read_text())
    data["cache"]["dtype"] = "float32"
    data["tokenizer"] = None
    (dest / MANIFEST).write_text(json.dumps(data))
    return read_generation_folder(dest)
