"""qm-export: deploy transformers with QuickMerge++ token merging.

``import qm_export`` is light: it imports neither torch nor triton, tensorrt or transformers.
The names below load their module on first use (``qm_export.quickmerge`` imports torch,
``apply_quickmerge`` / ``remove_quickmerge`` the Hugging Face adapter).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "QuickMergeConfig": "qm_export.merge",
    "quickmerge": "qm_export.merge",
    "unmerge": "qm_export.merge",
    "apply_quickmerge": "qm_export.adapters.hf",
    "remove_quickmerge": "qm_export.adapters.hf",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qm_export' has no attribute {name!r}")
