"""No code from a checkpoint: what a Hugging Face folder may ask for before anything loads it.

A model folder is untrusted input (docs/security.md). ``transformers`` runs Python from the
folder when its ``config.json`` (or ``tokenizer_config.json``) has an ``auto_map`` and the
caller passes ``trust_remote_code=True``; qm-export never does, and refuses such a folder
up front with a sentence saying why (:func:`refuse_remote_code`), before ``transformers``
reads anything from it. Pickled weights (``pytorch_model.bin``) are loaded with
``torch.load(weights_only=True)`` only (``from_pretrained(weights_only=True)``), which
unpickles tensors and plain containers and refuses any other object.

:func:`weights_format` says which file format a folder's weights are loaded from:
``safetensors``, ``pickle (weights_only)`` or ``gguf``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import SourceError

__all__ = ["REMOTE_CODE_FILES", "refuse_remote_code", "weights_format"]

#: The files whose ``auto_map`` would make ``transformers`` import code from the folder.
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def _auto_map(path: Path) -> dict | None:
    """The ``auto_map`` of the JSON file at ``path`` (None when there is none, or the file is
    not a JSON object: its loader reports that)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    found = doc.get("auto_map")
    return found if found else None


def refuse_remote_code(folder: str | Path) -> None:
    """Refuse a Hugging Face folder that needs custom code to load.

    Reads only the JSON files of :data:`REMOTE_CODE_FILES` (no Python file of the folder is
    imported, nothing is unpickled).

    Raises:
        SourceError: a file has an ``auto_map`` (the message names it and the modules it maps).
    """
    folder = Path(folder)
    for name in REMOTE_CODE_FILES:
        auto_map = _auto_map(folder / name)
        if auto_map is None:
            continue
        targets = sorted({str(v if isinstance(v, str) else next(iter(v), "?")) for v in
                          (auto_map.values() if isinstance(auto_map, dict) else [auto_map])})
        raise SourceError(
            f"{folder / name} has an auto_map ({', '.join(targets[:3])}): loading it would run Python code from the "
            "model folder, and qm-export never runs code from a checkpoint (trust_remote_code is always False); use a "
            "folder of a supported architecture without auto_map")


def weights_format(folder: str | Path) -> str | None:
    """The format ``from_pretrained`` loads ``folder``'s weights from, by its preference:
    ``"safetensors"``, then ``"pickle (weights_only)"`` (``pytorch_model.bin``), then
    ``"gguf"``; None when the folder has none of them."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return "safetensors"
    if (folder / "pytorch_model.bin").is_file() or (folder / "pytorch_model.bin.index.json").is_file():
        return "pickle (weights_only)"
    if any(folder.glob("*.gguf")):
        return "gguf"
    return None
