"""qm-export: deploy transformers with QuickMerge++ token merging.

``import qm_export`` stays light: it imports neither triton nor tensorrt.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .merge import QuickMergeConfig, quickmerge, unmerge  # noqa: E402

__all__ = ["__version__", "QuickMergeConfig", "quickmerge", "unmerge"]
