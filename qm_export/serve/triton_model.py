"""The ``model.py`` of a Python-backend model written by ``qm-export serve-repo --python-backend``.

Copied verbatim into ``REPO/<name>/<version>/model.py``; it runs inside Triton's Python
backend stub, so it imports nothing from qm-export: only ``triton_python_backend_utils``
(the stub's), ``numpy`` and ``onnxruntime``. It opens one file: the ONNX model named by the
config's ``onnx_file`` parameter, in its own version folder (a plain file name; anything with
a path separator is refused), and runs it with ONNX Runtime on the CPU (``intra_op_threads``
threads; ``ort_config:KEY`` parameters become session config entries). The qm custom-domain
ops run as the model's local functions.

Requests that arrive together (dynamic batching) and share their non-batch shapes are
concatenated along the batch axis and run as one ONNX Runtime call; their outputs are split
back by each request's batch size.
"""

from __future__ import annotations

import ctypes
import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Triton Python backend stub


# The stub's pybind11 reads numpy's dtype struct with numpy 1's layout: under numpy 2 an array
# handed over as numpy comes through with zero bytes. DLPack carries dtype and shape itself.
def _to_numpy(tensor: Any) -> np.ndarray:
    """A request's input tensor as a numpy array (a copy, via DLPack)."""
    return np.array(np.from_dlpack(tensor), copy=True)


_PyCapsule_GetName = ctypes.pythonapi.PyCapsule_GetName
_PyCapsule_GetName.restype, _PyCapsule_GetName.argtypes = ctypes.c_char_p, [ctypes.py_object]
_PyCapsule_SetName = ctypes.pythonapi.PyCapsule_SetName
_PyCapsule_SetName.restype, _PyCapsule_SetName.argtypes = ctypes.c_int, [ctypes.py_object, ctypes.c_char_p]
_USED = ctypes.c_char_p(b"used_dltensor")  # the DLPack name of a consumed capsule; kept alive here


class _Export:
    """Hands an array to the stub by DLPack and keeps the capsule until the stub took it: the
    stub marks a consumed capsule with a name numpy does not know, so numpy's capsule destructor
    would print an error per response; the capsule gets the standard name instead."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.capsule: Any = None

    def __dlpack__(self, stream: Any = None) -> Any:
        self.capsule = self.array.__dlpack__()
        return self.capsule

    def __dlpack_device__(self) -> Any:
        return self.array.__dlpack_device__()

    def consumed(self) -> None:
        if self.capsule is not None and _PyCapsule_GetName(self.capsule) not in (b"dltensor", b"used_dltensor"):
            _PyCapsule_SetName(self.capsule, _USED)


def _from_numpy(name: str, array: np.ndarray) -> Any:
    """An output tensor from a contiguous numpy array (via DLPack)."""
    export = _Export(array)
    tensor = pb_utils.Tensor.from_dlpack(name, export)
    export.consumed()
    return tensor


class TritonPythonModel:
    """One ONNX Runtime session per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        file_name = params.get("onnx_file", "model.onnx")
        if os.path.basename(file_name) != file_name or file_name in ("", ".", ".."):
            raise pb_utils.TritonModelException(f"onnx_file {file_name!r} must be a plain file name")
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(folder, file_name)
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"model file {path!r} is missing")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        for key, value in params.items():  # serve-repo --ort-config KEY=VALUE
            if key.startswith("ort_config:"):
                options.add_session_config_entry(key.split(":", 1)[1], value)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.output_dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing")
            feeds[name] = _to_numpy(tensor)
        return feeds

    def _response(self, outs: dict[str, np.ndarray]) -> Any:
        tensors = [_from_numpy(n, np.ascontiguousarray(outs[n]).astype(self.output_dtypes[n], copy=False))
                   for n in self.outputs]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for i, request in enumerate(requests):
            try:
                feeds = self._feeds(request)
            except Exception as exc:  # the server checks names, dtypes and shapes; this is a last guard
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            key = tuple((n, a.dtype.str, a.shape[1:] if self.batched else a.shape) for n, a in sorted(feeds.items()))
            groups.setdefault(key if self.batched else (i,), []).append((i, feeds))
        for members in groups.values():
            try:
                if len(members) == 1:
                    i, feeds = members[0]
                    responses[i] = self._response(dict(zip(self.outputs, self.session.run(self.outputs, feeds))))
                    continue
                sizes = [next(iter(f.values())).shape[0] for _, f in members]
                feeds = {n: np.concatenate([f[n] for _, f in members]) for n in self.inputs}
                outs = dict(zip(self.outputs, self.session.run(self.outputs, feeds)))
                start = 0
                for (i, _), size in zip(members, sizes):
                    responses[i] = self._response({n: v[start:start + size] for n, v in outs.items()})
                    start += size
            except Exception as exc:
                for i, _ in members:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"onnxruntime: {exc}"))
        return responses

    def finalize(self) -> None:
        self.session = None
