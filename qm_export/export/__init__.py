"""Export to ONNX: qm function bodies, export/parity, and the TensorRT pre-flight checker."""
