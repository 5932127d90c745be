"""Prior files: ``safetensors`` weights plus string metadata in the same file's header.

Metadata keys: ``format`` (``qm-export-prior/1``), ``config`` (JSON of the
:class:`AutoregressivePrior` constructor arguments) and any JSON-encoded fitting facts
(``layer``, ``source``, ``schedule``, ``steps``, losses...). Only safetensors is read: a prior
file never runs code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..export.files import atomic_output
from ..merge import AutoregressivePrior

__all__ = ["PRIOR_FORMAT", "save_prior", "load_prior", "read_prior_metadata"]

PRIOR_FORMAT = "qm-export-prior/1"


def save_prior(prior: AutoregressivePrior, path: str | Path, *, metadata: dict[str, Any] | None = None, force: bool = False) -> Path:
    """Write ``prior`` to ``path`` atomically (temp file + ``os.replace``), with the user's
    umask permissions. The folder must exist: it is not created.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is False.
        OutputPathError: the folder does not exist or is not writable, or ``path`` is a folder.
    """
    from safetensors.torch import save_file

    from ..export.files import check_output_path

    path = Path(path)
    if path.exists() and not path.is_dir() and not force:
        raise FileExistsError(f"{path} already exists; pass force=True (--force) to overwrite it")
    check_output_path(path, force=True, option="-o/--output")
    header = {"format": PRIOR_FORMAT, "config": json.dumps(prior.config())}
    for key, value in (metadata or {}).items():
        header[key] = json.dumps(value)
    tensors = {k: v.detach().cpu().contiguous() for k, v in prior.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def read_prior_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a prior file, JSON values decoded (``config`` is a dict)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prior file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path} is not a safetensors file: {exc}") from None
    if raw.get("format") != PRIOR_FORMAT:
        raise ValueError(f"{path} is not a qm-export prior (format {raw.get('format')!r}, expected {PRIOR_FORMAT!r})")
    out: dict[str, Any] = {"format": raw["format"]}
    for key, value in raw.items():
        if key != "format":
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
    return out


def load_prior(path: str | Path) -> AutoregressivePrior:
    """Build the :class:`AutoregressivePrior` stored in ``path`` (eval mode)."""
    from safetensors.torch import load_file

    meta = read_prior_metadata(path)
    config = meta.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path} has no prior config in its metadata")
    prior = AutoregressivePrior(**{k: int(v) for k, v in config.items()})
    prior.load_state_dict(load_file(str(path)), strict=True)
    return prior.eval()
