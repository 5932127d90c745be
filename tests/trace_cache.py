"""One trace per distinct model per test run (issue 10: the suite's time on 2 cores).

Tracing (``torch.export`` + the dynamo ONNX exporter) was more than half of the suite's time:
a full run traced 57 times, the same default vit-tiny model 15 times and encoder-tiny 6
times. ``install()`` wraps :func:`qm_export.export.onnx_export.trace_to_ir` for the test
process, fixtures included, so that a model identical to one already traced gets a fresh copy
of that trace (``export_onnx`` then rewrites, saves, checks and verifies it as usual: only the
tracing is shared). The traces are kept in the run's folder (``tiny_exports.shared_folder``),
which under pytest-xdist the workers share: the first to need a model traces it under a file
lock, the others read it.

"Identical" is a fingerprint of everything the trace reads: the module tree (each module's
type and its plain attributes: configs, schedules, method, training mode), every parameter's
and buffer's bytes, the trace inputs (shapes, dtypes, bytes), the dynamic shapes, the input and
output names and the opset. A test that changes how tracing behaves (patches a merge op, a
kernel) marks itself ``@pytest.mark.fresh_trace`` and always traces. Tracing is deterministic,
so a shared trace is the trace the test would have made; ``QM_TEST_TRACE_CACHE=0`` turns the
cache off.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
import re
from typing import Any

_CACHE: dict[str, bytes] = {}
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_PLAIN = (str, int, float, bool, type(None), enum.Enum)
#: Attributes no forward reads: the tensors (hashed by value below), the tree (walked), hooks,
#: and the folder a Hugging Face model was loaded from (the same weights saved to two test
#: folders trace to the same model).
_SKIP = {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "name_or_path"}
STATE: dict[str, Any] = {"enabled": os.environ.get("QM_TEST_TRACE_CACHE", "1") != "0", "fresh": False,
                         "hits": 0, "misses": 0}


def _plain(value: Any) -> str | None:
    """A stable text for configuration-like values; None for anything else (skipped)."""
    if isinstance(value, _PLAIN):
        return repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # without the addresses of the functions it holds, which differ between processes
        return _ADDRESS.sub("", repr(value))
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
            if key in _SKIP or key.startswith(("_forward", "_backward")):
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


def _store_path(key: str):
    """Where this run's tests share trace ``key`` (under xdist, the workers' common folder)."""
    from tiny_exports import shared_folder

    folder = shared_folder() / "traces"
    folder.mkdir(exist_ok=True)
    return folder / f"{key}.onnx"


def _traced_bytes(real: Any, loaded: Any, opset: int, key: str) -> bytes:
    """The serialized trace of ``key``: from this process, from another worker of the run, or
    traced now (under a file lock, so that two workers never trace the same model)."""
    if key in _CACHE:
        STATE["hits"] += 1
        return _CACHE[key]
    import onnx_ir as ir
    from filelock import FileLock

    path = _store_path(key)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            STATE["hits"] += 1
        else:
            STATE["misses"] += 1
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(ir.to_proto(real(loaded, opset)).SerializeToString())
            tmp.replace(path)
        _CACHE[key] = path.read_bytes()
    return _CACHE[key]


def install() -> None:
    """Wrap :func:`~qm_export.export.onnx_export.trace_to_ir` for the whole test process
    (fixtures of every scope included); a test marked ``fresh_trace`` traces for real
    (``conftest.py`` sets ``STATE["fresh"]`` around it). ``QM_TEST_TRACE_LOG=FILE`` appends one
    line per call (pid, hit or miss, seconds, key, test) to ``FILE``."""
    if not STATE["enabled"]:
        return
    import qm_export.export.onnx_export as onnx_export

    real = onnx_export.trace_to_ir
    if getattr(real, "_qm_trace_cache", False):
        return

    def cached(loaded: Any, opset: int):
        if STATE["fresh"]:
            return real(loaded, opset)
        import time

        import onnx
        import onnx_ir as ir

        start, misses = time.perf_counter(), STATE["misses"]
        key = fingerprint(loaded, opset)
        data = _traced_bytes(real, loaded, opset, key)
        log = os.environ.get("QM_TEST_TRACE_LOG")
        if log:
            kind = "miss" if STATE["misses"] > misses else "hit"
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {kind} {time.perf_counter() - start:.2f} {key[:12]} "
                        f"{os.environ.get('PYTEST_CURRENT_TEST', '?')}\n")
        return ir.from_proto(onnx.ModelProto.FromString(data))

    cached._qm_trace_cache = True  # type: ignore[attr-defined]
    onnx_export.trace_to_ir = cached
