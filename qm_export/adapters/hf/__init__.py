"""QuickMerge++ inside Hugging Face ``transformers`` models (tested with transformers 5.x).

- :func:`apply_quickmerge` / :func:`remove_quickmerge`: patch a model instance in place.
- :func:`load_hf_source`: a local model folder as a ``convert`` source (export module,
  input/output names, example inputs, dynamic shapes).

See ``docs/adapters.md``.
"""

from __future__ import annotations

from .patch import SUPPORTED, apply_quickmerge, is_patched, remove_quickmerge
from .source import load_hf_model, load_hf_source

__all__ = [
    "SUPPORTED",
    "apply_quickmerge",
    "is_patched",
    "load_hf_model",
    "load_hf_source",
    "remove_quickmerge",
]
