"""GGUF checkpoints (llama.cpp's single-file format) through ``transformers``.

A source is a ``.gguf`` file, or a folder without ``config.json`` holding exactly one
``.gguf``. ``transformers`` dequantises the weights (Q4_1, Q8_0, ... to float) and builds the
config and the tokenizer from the file's metadata:
``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)`` and
``AutoTokenizer.from_pretrained(folder, gguf_file=name)``. That needs the ``gguf`` and
``accelerate`` packages: ``pip install 'qm-export[gguf]'``. Never downloads
(``local_files_only=True``); a GGUF file holds no code.

``transformers`` parses the file's metadata once for the config, once for the tokenizer and
once for the weights, and rebuilds gguf's tensor-name table for every module it maps.
:func:`_read_once` shares one ``GGUFReader`` per file and one name table per architecture for
the duration of a load: SmolLM2-135M loads in 4.8 s instead of 15.1 s on a 2-core machine
(docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import SourceError, first_line
from ...models.source import is_gguf_source

__all__ = ["gguf_file", "is_gguf_source", "load_gguf", "GGUF_EXTRA"]

#: what to install for GGUF sources.
GGUF_EXTRA = "pip install 'qm-export[gguf]' (gguf and accelerate)"


def gguf_file(path: str | Path) -> Path | None:
    """The ``.gguf`` file ``path`` names (itself, or a folder's only one); None when ``path``
    is no GGUF source. ``SourceError`` for a folder holding several."""
    if not is_gguf_source(path):
        return None
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(path.glob("*.gguf"))
    if len(found) != 1:
        raise SourceError(f"{path} holds {len(found)} .gguf files ({', '.join(f.name for f in found[:4])}): "
                          "give the one to load as PATH.gguf")
    return found[0]


def _require_gguf_packages() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"GGUF checkpoints need {' and '.join(missing)}: {GGUF_EXTRA}")


@contextlib.contextmanager
def _read_once() -> Iterator[None]:
    """Within the block, ``gguf.GGUFReader(path)`` returns one reader per file (a read-only
    memory map; what it parses does not change) and ``gguf.get_tensor_name_map(arch, blocks)``
    one table per ``(arch, blocks)``. ``transformers`` imports both from ``gguf`` when it calls
    them, so it sees these; a ``gguf`` without them is left alone."""
    import gguf

    saved = {name: getattr(gguf, name, None) for name in ("GGUFReader", "get_tensor_name_map")}
    if any(v is None for v in saved.values()):
        yield
        return
    readers: dict[tuple[str, str], Any] = {}
    reader_cls = saved["GGUFReader"]

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.path.realpath(os.fspath(path)), mode)
        if key not in readers:
            readers[key] = reader_cls(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(saved["get_tensor_name_map"])
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(gguf, name, value)


def load_gguf(file: str | Path, *, precision: str = "fp32") -> tuple[Any, Any]:
    """Load a GGUF checkpoint as a supported ``transformers`` model (and its tokenizer).

    Returns:
        ``(model in eval mode, tokenizer)``; ``TypeError`` when the architecture is not one
        the adapters support, ``SourceError`` for a file that cannot be read.
    """
    from .patch import SUPPORTED
    from .source import PRECISIONS, _ARCHITECTURES, _quiet_loading, import_transformers

    file = Path(file)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = import_transformers()
    _require_gguf_packages()
    folder, name = file.parent, file.name
    with _read_once():
        try:
            with _quiet_loading(transformers):
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    folder, gguf_file=name, local_files_only=True, trust_remote_code=False)
        except ValueError as err:
            if "not supported" in str(err).lower() or "architecture" in str(err).lower():
                raise TypeError(f"{file}: {first_line(err)}; supported: {SUPPORTED}") from None
            raise SourceError(f"{file}: the GGUF checkpoint cannot be loaded ({first_line(err)})") from None
        except Exception as err:  # a truncated file, an unknown quantisation
            raise SourceError(f"{file}: the GGUF checkpoint cannot be loaded ({first_line(err)})") from None
        if type(model).__name__ not in _ARCHITECTURES:
            raise TypeError(f"{file}: model {type(model).__name__} is not supported; supported: {SUPPORTED}")
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        except Exception as err:
            raise SourceError(f"{file}: its tokenizer cannot be loaded ({first_line(err)})") from None
    return model.to(PRECISIONS[precision]).eval(), tokenizer
