"""The trace cache (``trace_cache.py``) shares a trace only between identical models, and between
the workers of a run through its folder."""

from __future__ import annotations

import pytest

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


def test_a_trace_is_shared_through_the_run_folder_and_made_once(tmp_path, monkeypatch) -> None:
    """A second worker (here: this process with its memory cleared) reads the first one's trace
    from the run's folder instead of tracing again."""
    import onnx_ir as ir

    import trace_cache

    calls = []

    def real(loaded, opset):
        calls.append(opset)
        graph = ir.Graph([], [], nodes=[], name="g")
        return ir.Model(graph, ir_version=10)

    monkeypatch.setattr(trace_cache, "_CACHE", {})
    monkeypatch.setattr(trace_cache, "_store_path", lambda key: tmp_path / f"{key}.onnx")
    first = trace_cache._traced_bytes(real, None, 20, "k")
    trace_cache._CACHE.clear()  # another process
    assert trace_cache._traced_bytes(real, None, 20, "k") == first
    assert calls == [20] and (tmp_path / "k.onnx").read_bytes() == first


def test_a_hugging_face_model_saved_to_two_folders_has_one_key(tmp_path) -> None:
    """The folder a model was loaded from is not part of the key."""
    pytest.importorskip("transformers")
    import hf_tiny

    model = hf_tiny.make("BertModel")
    keys = set()
    for name in ("a", "b"):
        model.save_pretrained(tmp_path / name)
        keys.add(fingerprint(load_source(str(tmp_path / name), schedule="1:0.5", seq_len=24, debug_outputs=True), 20))
    assert len(keys) == 1


def test_the_key_holds_no_address_that_differs_between_processes() -> None:
    """A configuration dataclass holding functions (a family's hooks) is keyed without their
    addresses, which differ between xdist workers: otherwise no worker would share its traces."""
    import dataclasses

    from trace_cache import _plain

    @dataclasses.dataclass
    class Family:
        name: str
        layers: object

    def layers():
        return []

    text = _plain(Family("encoder", layers))
    assert "encoder" in text and "layers" in text and " at 0x" not in text
    assert _plain(Family("encoder", layers)) == text and _plain(Family("vit", layers)) != text
