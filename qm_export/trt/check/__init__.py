"""TensorRT pre-flight (``qm-export check``): the ONNX parser's rules per TensorRT version.

Pure Python over ONNX protobufs; never imports ``tensorrt``. :func:`check_onnx_file` is the
entry point, :class:`CheckReport` of :class:`Finding` s its answer.
"""

from .checker import check_model, check_onnx_file, load_onnx
from .findings import CheckReport, Finding

__all__ = ["CheckReport", "Finding", "check_model", "check_onnx_file", "load_onnx"]
