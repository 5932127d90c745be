"""Fitting, saving and loading the autoregressive prior (spec §5) for a model's merge layer.

- :mod:`.io`: safetensors files with the prior's config and fitting metadata (atomic writes).
- :mod:`.samples`: built-in sample inputs (``pydoc_data`` text, digits images).
- :mod:`.fit`: capture the hidden states a merge layer sees and train the prior on them.
"""

from __future__ import annotations

from .io import PRIOR_FORMAT, load_prior, read_prior_metadata, save_prior

__all__ = ["PRIOR_FORMAT", "load_prior", "read_prior_metadata", "save_prior"]
