"""The per-process trace cache (``trace_cache.py``) shares a trace only between identical models."""

from __future__ import annotations

from qm_export.models import load_source
from trace_cache import fingerprint


def test_same_model_same_key_and_every_difference_a_new_key() -> None:
    base = fingerprint(load_source("vit-tiny", debug_outputs=True), 20)
    assert fingerprint(load_source("vit-tiny", debug_outputs=True), 20) == base
    others = [
        fingerprint(load_source("vit-tiny", debug_outputs=True, seed=1), 20),  # weights
        fingerprint(load_source("vit-tiny", schedule="1:0.25", debug_outputs=True), 20),  # schedule
        fingerprint(load_source("vit-tiny", method="tome", debug_outputs=True), 20),  # method
        fingerprint(load_source("vit-tiny", precision="fp16", debug_outputs=True), 20),  # precision
        fingerprint(load_source("vit-tiny", no_merge=True, debug_outputs=True), 20),  # no merge
        fingerprint(load_source("vit-tiny", debug_outputs=True), 22),  # opset
    ]
    assert len({base, *others}) == 1 + len(others)
