"""Serving with NVIDIA Triton Inference Server (issue 12): model repositories
(:mod:`.repo`, :mod:`.config`), the bundled server (:mod:`.server`) and load tests (:mod:`.bench`)."""

from .config import ServeOptions, TensorSpec, read_onnx_io, render_config
from .repo import RepoModel, plan_repository, write_repository

__all__ = ["RepoModel", "ServeOptions", "TensorSpec", "plan_repository", "read_onnx_io", "render_config",
           "write_repository"]
