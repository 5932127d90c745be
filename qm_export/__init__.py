"""qm-export: deploy transformers with QuickMerge++ token merging.

``import qm_export`` stays light: it imports neither triton nor tensorrt nor transformers
(``apply_quickmerge`` and ``remove_quickmerge`` load the Hugging Face adapter on first use).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .merge import QuickMergeConfig, quickmerge, unmerge  # noqa: E402

__all__ = ["__version__", "QuickMergeConfig", "apply_quickmerge", "quickmerge", "remove_quickmerge", "unmerge"]

_LAZY = {"apply_quickmerge", "remove_quickmerge"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from .adapters import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'qm_export' has no attribute {name!r}")
