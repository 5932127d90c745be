"""Which model a prior was fitted on: a small signature of its weights, checked at load.

A prior predicts the hidden states of the model it was fitted on; on another model of the same
width it loads without complaint and silently guides the merge with the wrong predictions.
``fit-prior`` records :func:`weights_signature` of the source model in the prior's metadata
(``weights_signature``), and :func:`check_prior_source` refuses a model whose signature differs.

The signature is a sample, not a hash: up to 8 weight tensors spread over the model (sorted by
name, the merge's own priors left out), the first 16 values of each, as float32, and the
number of tensors. Values are compared with a relative tolerance of 1e-2, so the same weights
loaded at fp16 or bf16 still match, while two models with different weights (another seed,
another checkpoint) differ in nearly every sampled value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

__all__ = ["weights_signature", "check_prior_source", "SIGNATURE_KEY"]

#: The prior metadata key holding the signature.
SIGNATURE_KEY = "weights_signature"
_SKIP = re.compile(r"(^|\.)(priors|quickmerge)\.")
_TENSORS, _VALUES, _RTOL, _ATOL = 8, 16, 1e-2, 1e-4


def weights_signature(model: nn.Module) -> dict[str, Any]:
    """``{"tensors": n, "names": [...], "values": [[...], ...]}`` of ``model``'s weights."""
    named = sorted((name, p) for name, p in model.named_parameters() if not _SKIP.search(name))
    if not named:
        return {"tensors": 0, "names": [], "values": []}
    picks = sorted({round(i * (len(named) - 1) / max(_TENSORS - 1, 1)) for i in range(_TENSORS)})
    names, values = [], []
    for i in picks:
        name, p = named[i]
        names.append(name)
        values.append([float(v) for v in p.detach().reshape(-1)[:_VALUES].float().tolist()])
    return {"tensors": len(named), "names": names, "values": values}


def check_prior_source(prior_path: str | Path, metadata: dict[str, Any], model: nn.Module) -> None:
    """Refuse a prior fitted on another model (``ValueError`` naming both).

    Priors written before signatures existed (no ``weights_signature`` key) are accepted.
    """
    stored = metadata.get(SIGNATURE_KEY)
    if not isinstance(stored, dict):
        return
    current = weights_signature(model)
    same = stored.get("tensors") == current["tensors"] and stored.get("names") == current["names"]
    if same:
        a = [np.asarray(v, dtype=np.float64) for v in stored.get("values", [])]
        b = [np.asarray(v, dtype=np.float64) for v in current["values"]]
        same = len(a) == len(b) and all(x.shape == y.shape and np.allclose(x, y, rtol=_RTOL, atol=_ATOL)
                                        for x, y in zip(a, b))
    if not same:
        source = metadata.get("source", "another model")
        raise ValueError(
            f"--prior {str(prior_path)!r} was fitted on {source}, whose weights differ from this model's; "
            "a prior predicts the hidden states of the model it was fitted on: fit one for this model "
            "with 'qm-export fit-prior SOURCE'"
        )
