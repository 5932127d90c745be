"""One trace per distinct model per test process (issue 10: the suite's time on 2 cores).

Tracing (``torch.export`` + the dynamo ONNX exporter) was more than half of the suite's time:
a full run traced 57 times, the same default vit-tiny model 15 times and encoder-tiny 6
times. ``install()`` wraps :func:`qm_export.export.onnx_export.trace_to_ir` so that a model
identical to one already traced in this process gets a fresh copy of that trace (``export_onnx``
then rewrites, saves, checks and verifies it as usual: only the tracing is shared).

"Identical" is a fingerprint of everything the trace reads: the module tree (each module's
type and its plain attributes: configs, schedules, method), every parameter's and buffer's
bytes, the trace inputs (shapes, dtypes, bytes), the dynamic shapes, the input and output names
and the opset. A test that changes how tracing behaves (patches a merge op, a kernel) marks
itself ``@pytest.mark.fresh_trace`` and always traces. Tracing is deterministic, so a shared
trace is the trace the test would have made; ``QM_TEST_TRACE_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
from typing import Any

_CACHE: dict[str, bytes] = {}
_PLAIN = (str, int, float, bool, type(None), enum.Enum)
_SKIP = {"training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"}
STATE = {"enabled": os.environ.get("QM_TEST_TRACE_CACHE", "1") != "0", "hits": 0, "misses": 0}


def _plain(value: Any) -> str | None:
    """A stable text for configuration-like values; None for anything else (skipped)."""
    if isinstance(value, _PLAIN):
        return repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return repr(value)
    if isinstance(value, (tuple, list, frozenset, set)):
        parts = [_plain(v) for v in value]
        return None if any(p is None for p in parts) else f"{type(value).__name__}({sorted(parts) if isinstance(value, (set, frozenset)) else parts})"
    if isinstance(value, dict):
        parts = {str(k): _plain(v) for k, v in value.items()}
        return None if any(p is None for p in parts.values()) else repr(sorted(parts.items()))
    return None


def fingerprint(loaded: Any, opset: int) -> str:
    """A digest of what :func:`trace_to_ir` reads from ``loaded`` (see the module docs)."""
    import torch

    h = hashlib.sha256()

    def add(text: str) -> None:
        h.update(text.encode())
        h.update(b"\0")

    module = loaded.export_module
    for name, sub in module.named_modules():
        add(f"{name}:{type(sub).__module__}.{type(sub).__qualname__}")
        for key, value in sorted(vars(sub).items()):
            if key.startswith("_") and key in _SKIP or key.startswith("_forward") or key.startswith("_backward"):
                continue
            text = _plain(value)
            if text is not None:
                add(f"{key}={text}")
    for name, tensor in list(module.state_dict(keep_vars=False).items()):
        t = tensor.detach().contiguous().cpu()
        add(f"{name}:{t.dtype}:{tuple(t.shape)}")
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    for t in getattr(loaded, "trace_inputs", loaded.example_inputs):
        add(f"in:{t.dtype}:{tuple(t.shape)}")
        h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    add(repr(loaded.dynamic_shapes))
    add(repr((tuple(loaded.input_names), tuple(loaded.output_names), opset)))
    return h.hexdigest()


def install(request: Any, monkeypatch: Any) -> None:
    """Wrap ``trace_to_ir`` for one test (unless it is marked ``fresh_trace``)."""
    if not STATE["enabled"] or request.node.get_closest_marker("fresh_trace"):
        return
    import onnx_ir as ir

    import qm_export.export.onnx_export as onnx_export

    real = onnx_export.trace_to_ir

    def cached(loaded: Any, opset: int):
        key = fingerprint(loaded, opset)
        if key not in _CACHE:
            STATE["misses"] += 1
            _CACHE[key] = ir.to_proto(real(loaded, opset)).SerializeToString()
        else:
            STATE["hits"] += 1
        import onnx

        return ir.from_proto(onnx.ModelProto.FromString(_CACHE[key]))

    monkeypatch.setattr(onnx_export, "trace_to_ir", cached)
