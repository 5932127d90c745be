"""Export to ONNX: qm function bodies, export/parity, provenance. ONNX only: the TensorRT
pre-flight checker lives in :mod:`qm_export.trt.check`."""
