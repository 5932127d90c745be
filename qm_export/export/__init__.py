"""Export to ONNX: qm function bodies, export/parity, and the TensorRT pre-flight checker."""

from .trt_check import check_model, check_onnx_file  # noqa: E402
from .trt_findings import CheckReport, Finding  # noqa: E402

__all__ = ["check_model", "check_onnx_file", "CheckReport", "Finding"]
